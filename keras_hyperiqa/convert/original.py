"""The original HyperIQA checkpoint (``koniq_pretrained.pkl``) to Keras.

The original is a ``torch.save``d state dict of ``models.HyperNet`` (reference
section 1): the torchvision ResNet-50 and the LDA taps under ``res.``, the head
convs under ``conv1.{0,2,4}``, and the generators ``fc{1..4}w_conv``,
``fc{1..4}b_fc``, ``fc5w_fc``, ``fc5b_fc``. The conversion table below is every
one of those keys: (our variable, their key, transform).

pyiqa's HyperIQA (``pyiqa/archs/hypernet_arch.py``, class ``HyperNet``) holds
the same tensors under other module names, in a dict ``{"params": ...}``:
:func:`pyiqa_to_original` renames them (no reshaping), and
:func:`load_checkpoint` tells the formats apart by their keys (a Swin fork
checkpoint, ``swin.backbone.*``, goes to :mod:`keras_hyperiqa.convert.smart_iqa`).
"""

import os
import re

import numpy as np

from keras_hyperiqa.atomic import atomic_path
from keras_hyperiqa.convert.state_dict import WeightTable, read_state_dict
from keras_hyperiqa.errors import UserError

# The released checkpoint was trained on KonIQ-10k images resized with
# torchvision Resize((512, 384)): height 512, width 384.
KONIQ_RESIZE = (512, 384)

# What each format's weights were trained on and how they are tested: the
# original on KonIQ MOS_zscore (about 0-100), tested on 25 random crops of the
# resized image (here the deterministic 5x5 grid); pyiqa's retrain on MOS
# normalised to [0, 1], tested on 25 evenly spaced crops of the full image.
FORMATS = {
    "original": dict(resize=KONIQ_RESIZE, score_range=(0.0, 100.0), test_patches=25,
                     test_crops="grid"),
    "pyiqa": dict(resize=None, score_range=(0.0, 1.0), test_patches=25, test_crops="grid"),
}

# pyiqa module names -> the original's (reference section 7).
_PYIQA_RENAMES = (
    (r"base_model\.(.+)", r"res.\1"),
    (r"lda_modules\.([0-2])\.0\.weight", lambda m: f"res.lda{int(m[1]) + 1}_pool.0.weight"),
    (r"lda_modules\.([0-2])\.3\.(weight|bias)", lambda m: f"res.lda{int(m[1]) + 1}_fc.{m[2]}"),
    (r"lda_modules\.3\.2\.(weight|bias)", r"res.lda4_fc.\1"),
    (r"fc_w_modules\.([0-3])\.(weight|bias)", lambda m: f"fc{int(m[1]) + 1}w_conv.{m[2]}"),
    (r"fc_w_modules\.4\.2\.(weight|bias)", r"fc5w_fc.\1"),
    (r"fc_b_modules\.([0-4])\.2\.(weight|bias)", lambda m: f"fc{int(m[1]) + 1}b_fc.{m[2]}"),
    (r"(conv1\.[024]\.(?:weight|bias))", r"\1"),
)


def pyiqa_to_original(tensors):
    """pyiqa ``HyperNet`` keys renamed to the original's; unknown keys are kept.

    Kept keys are then reported as unexpected by the conversion.
    """
    out = {}
    for key, value in tensors.items():
        new = key
        for pattern, repl in _PYIQA_RENAMES:
            if re.fullmatch(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        out[new] = value
    return out


def detect_format(tensors, source):
    """``"original"``, ``"pyiqa"`` or ``"smart_iqa"`` from the keys; otherwise a ``UserError`` listing them."""
    keys = list(tensors)
    if any(k.startswith("swin.backbone.") for k in keys):
        return "smart_iqa"
    if any(k.startswith("res.") for k in keys):
        return "original"
    if any(k.startswith(("base_model.", "lda_modules.", "fc_w_modules.")) for k in keys):
        return "pyiqa"
    shown = ", ".join(keys[:12]) + (f" ... ({len(keys)} keys)" if len(keys) > 12 else "")
    raise UserError(
        f"{source}: not a HyperIQA checkpoint (none of the original's 'res.*', pyiqa's "
        f"'base_model.*'/'lda_modules.*' or SMART-IQA's 'swin.backbone.*' keys); "
        f"unexpected keys: {shown}"
    )


def conv_kernel(w, _shape=None):
    """torch conv (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    if w.ndim != 4:
        raise ValueError("not a conv kernel")
    return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w, _shape=None):
    """torch Linear (out, in) -> Keras Dense (in, out).

    The LDA Linears take a channels-first flatten; our taps transpose to
    channels-first before flattening, so no row permutation is needed here.
    """
    if w.ndim != 2:
        raise ValueError("not a linear weight")
    return np.transpose(w)


def conversion_table(model):
    """(keras variable, original key, transform) for everything outside the ResNet."""
    rows = []
    for i, tap in enumerate(model.lda, 1):
        if tap.reduce is not None:
            rows.append((tap.reduce.kernel, f"res.lda{i}_pool.0.weight", conv_kernel))
        rows.append((tap.fc.kernel, f"res.lda{i}_fc.weight", dense_kernel))
        rows.append((tap.fc.bias, f"res.lda{i}_fc.bias", None))
    head = model.hyper_head
    for i, conv in enumerate(head.conv1):
        rows.append((conv.kernel, f"conv1.{2 * i}.weight", conv_kernel))
        rows.append((conv.bias, f"conv1.{2 * i}.bias", None))
    n = len(head.weight_generators)
    for k, (wgen, bgen) in enumerate(zip(head.weight_generators, head.bias_generators), 1):
        wkey = f"fc{k}w_conv" if k < n else f"fc{k}w_fc"
        rows.append((wgen.kernel, f"{wkey}.weight", conv_kernel if k < n else dense_kernel))
        rows.append((wgen.bias, f"{wkey}.bias", None))
        rows.append((bgen.kernel, f"fc{k}b_fc.weight", dense_kernel))
        rows.append((bgen.bias, f"fc{k}b_fc.bias", None))
    return rows


_DEFAULT = object()


def load_checkpoint(src, resize=_DEFAULT, higher_is_better=True):
    """A ``HyperIQA`` from an original, a pyiqa or a SMART-IQA (Swin fork) checkpoint.

    The format is detected from the keys. The model records the format's
    score range and test crops, and its resize (the original: KonIQ's
    512x384; pyiqa: none) unless ``resize`` is given (``None`` or ``(H, W)``).
    Every key of the file must be used and every variable filled; otherwise a
    ``UserError`` lists the missing, mis-shaped and unexpected keys.
    ``higher_is_better``: the direction of the labels it was trained on (the
    released checkpoints: KonIQ MOS, higher is better; False for LIVE/CSIQ DMOS).
    """
    tensors = read_state_dict(src)
    source = os.fspath(src)
    fmt = detect_format(tensors, source)
    if fmt == "smart_iqa":
        from keras_hyperiqa.convert.smart_iqa import load_smart_iqa

        kwargs = {} if resize is _DEFAULT else {"resize": resize}
        return load_smart_iqa(src, tensors=tensors, higher_is_better=higher_is_better, **kwargs)
    if fmt == "pyiqa":
        tensors = pyiqa_to_original(tensors)
    return _build(tensors, source, fmt, resize, higher_is_better)


def load_original_checkpoint(src, resize=KONIQ_RESIZE, higher_is_better=True):
    """Build a ``HyperIQA`` (ResNet-50) holding the original checkpoint's weights.

    Every key of the file must be used and every variable filled; otherwise a
    ``UserError`` lists the missing, mis-shaped and unexpected keys.
    ``higher_is_better``: the direction of the labels it was trained on (the
    released checkpoint: KonIQ MOS, higher is better; False for LIVE/CSIQ DMOS).
    """
    tensors = read_state_dict(src)
    source = os.fspath(src)
    if not any(k.startswith("res.") for k in tensors):
        raise UserError(
            f"{source}: not an original HyperIQA checkpoint (no 'res.' keys; "
            f"first keys: {', '.join(list(tensors)[:3])})"
        )
    return _build(tensors, source, "original", resize, higher_is_better)


def _build(tensors, source, fmt, resize=_DEFAULT, higher_is_better=True):
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    info = dict(FORMATS[fmt])
    if resize is not _DEFAULT:
        info["resize"] = resize
    model = HyperIQA(backbone="resnet50", higher_is_better=higher_is_better, **info)
    model.build((None, 224, 224, 3))
    table = WeightTable(tensors, source=source)
    table.prefix = "res."
    from keras_hyperiqa.compat import timm_resnet_convert_weights

    timm_resnet_convert_weights(model.backbone, table, {"architecture": "resnet50"})
    table.prefix = ""
    for variable, key, transform in conversion_table(model):
        table.port_weight(variable, key, transform)
    table.check()
    return model


def convert_original_checkpoint(src, dst, resize=_DEFAULT, higher_is_better=True):
    """Convert an original, pyiqa or SMART-IQA checkpoint to a ``.keras`` file, written atomically.

    Nothing is written to ``dst`` unless the whole conversion succeeds.
    ``resize``, ``higher_is_better``: as in :func:`load_checkpoint`.
    """
    dst = os.fspath(dst)
    if not dst.endswith(".keras"):
        raise UserError(f"{dst}: the output file name must end in .keras")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise UserError(f"{dst}: folder {folder} does not exist")
    model = load_checkpoint(src, resize=resize, higher_is_better=higher_is_better)
    save_model_atomic(model, dst)
    return model


def save_model_atomic(model, dst):
    """``model.save(dst)`` through a temporary file in the same folder, then rename."""
    with atomic_path(dst) as tmp:
        model.save(tmp)
