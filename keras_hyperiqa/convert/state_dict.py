"""Reading foreign weight files, and porting their tensors into Keras variables.

``WeightTable`` has the ``port_weight(variable, key, hook_fn)`` interface of
keras-hub's ``SafetensorLoader``, so keras-hub's own timm converters
(``keras_hub.src.utils.timm.convert_resnet.convert_weights``) run on a plain
state dict. Unlike keras-hub's loader it never stops at the first problem: it
records every missing key and wrong shape, and ``check()`` reports them all, so
nothing is half-converted silently.
"""

import os
import pickle
import zipfile

import numpy as np

from keras_hyperiqa.errors import UserError, first_line

# pyiqa stores its weights under ``params``.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "params")


def read_state_dict(path):
    """Load a weight file into ``{key: numpy array}``.

    Accepts a ``torch.save``d state dict (read with ``weights_only=True``, so no
    code in the file runs), a dict wrapping one under ``state_dict`` / ``model``
    / ``params`` (pyiqa), or a ``.safetensors`` file. ``num_batches_tracked`` entries are dropped:
    they carry no weights.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({_reason(err)})") from None
    else:
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises many types for a file that is not its own
            raise UserError(f"{path}: {_not_a_checkpoint(path, err)}") from None
        for key in _WRAPPER_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
            raise UserError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
        tensors = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                   for k, v in obj.items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    if not tensors:
        raise UserError(f"{path}: the file holds no tensors")
    return tensors


def _reason(err):
    return first_line(err)


def _not_a_checkpoint(path, err):
    """What a file that ``torch.load(weights_only=True)`` refused is, in words.

    Never torch's own advice to retry with ``weights_only=False``: that runs
    code from the file, and a state dict never needs it.
    """
    expected = "a state dict saved by torch.save, or a .safetensors file"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (OSError, zipfile.BadZipFile):
            names = []
        if "config.json" in names and any(n.endswith(".h5") for n in names):
            return "a .keras model, not a checkpoint to convert (use it as it is)"
        if not any(n.endswith("data.pkl") for n in names):
            return f"a zip archive, not a checkpoint (expected {expected})"
    try:
        from PIL import Image

        with Image.open(path) as im:
            return f"a {im.format} image, not a checkpoint (expected {expected})"
    except Exception:
        pass
    with open(path, "rb") as f:
        head = f.read(4)
    # A torch file is a zip holding data.pkl, or (legacy) a pickle from its
    # protocol byte on; other bytes that the unpickler refuses are no torch file.
    torch_file = head[:1] == b"\x80" or zipfile.is_zipfile(path)
    if (torch_file and isinstance(err, pickle.UnpicklingError)
            and "weights only" in str(err).lower()):
        return ("a torch file holding Python objects besides tensors, not a state dict "
                "(not loaded: loading it would run code from the file)")
    if head == b"PK\x03\x04":
        return "not a readable torch checkpoint (a truncated or damaged zip file)"
    return f"not a readable torch checkpoint (expected {expected})"


class WeightTable:
    """Ports tensors of a state dict into Keras variables, recording problems.

    Args:
        tensors: ``{key: array}``.
        prefix: prepended to every key asked for (e.g. ``"res."``).
        source: the file name, for messages.
    """

    def __init__(self, tensors, prefix="", source="state dict"):
        self.tensors = tensors
        self.prefix = prefix
        self.source = source
        self.used = set()
        self.missing = []
        self.mismatched = []

    def get_tensor(self, key):
        return self.tensors[self.prefix + key]

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        key = self.prefix + hf_weight_key
        if key not in self.tensors:
            self.missing.append(key)
            return
        self.used.add(key)
        value = self.tensors[key]
        if hook_fn is not None:
            try:
                value = hook_fn(value, list(keras_variable.shape))
            except ValueError:
                self.mismatched.append(f"{key} {list(self.tensors[key].shape)}")
                return
        if tuple(value.shape) != tuple(keras_variable.shape):
            self.mismatched.append(
                f"{key} {list(self.tensors[key].shape)} (expected a tensor for "
                f"{list(keras_variable.shape)})"
            )
            return
        keras_variable.assign(np.asarray(value, dtype="float32"))

    def unused(self, ignore=()):
        """Keys never ported, except those starting with one of ``ignore``."""
        return sorted(
            k for k in self.tensors
            if k not in self.used and not (ignore and k.startswith(tuple(ignore)))
        )

    def check(self, ignore_unused=()):
        """Raise one ``UserError`` naming every missing, mis-shaped and extra key.

        ``ignore_unused``: key prefixes that may legitimately stay unused (a
        classifier head, say).
        """
        parts = []
        if self.missing:
            parts.append(f"missing keys: {', '.join(self.missing)}")
        if self.mismatched:
            parts.append(f"wrong shapes: {', '.join(self.mismatched)}")
        extra = self.unused(ignore_unused)
        if extra:
            parts.append(f"unexpected keys: {', '.join(extra)}")
        if parts:
            raise UserError(f"{self.source}: does not match the model; " + "; ".join(parts))
