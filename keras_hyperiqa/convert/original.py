"""The original HyperIQA checkpoint (``koniq_pretrained.pkl``) to Keras.

The original is a ``torch.save``d state dict of ``models.HyperNet`` (reference
section 1): the torchvision ResNet-50 and the LDA taps under ``res.``, the head
convs under ``conv1.{0,2,4}``, and the generators ``fc{1..4}w_conv``,
``fc{1..4}b_fc``, ``fc5w_fc``, ``fc5b_fc``. The conversion table below is every
one of those keys: (our variable, their key, transform).
"""

import os
import tempfile

import numpy as np

from keras_hyperiqa.convert.state_dict import WeightTable, read_state_dict
from keras_hyperiqa.errors import UserError

# The released checkpoint was trained on KonIQ-10k images resized with
# torchvision Resize((512, 384)): height 512, width 384.
KONIQ_RESIZE = (512, 384)


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


def load_original_checkpoint(src, resize=KONIQ_RESIZE, higher_is_better=True):
    """Build a ``HyperIQA`` (ResNet-50) holding the original checkpoint's weights.

    Every key of the file must be used and every variable filled; otherwise a
    ``UserError`` lists the missing, mis-shaped and unexpected keys.
    ``higher_is_better``: the direction of the labels it was trained on (the
    released checkpoint: KonIQ MOS, higher is better; False for LIVE/CSIQ DMOS).
    """
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    tensors = read_state_dict(src)
    source = os.fspath(src)
    if not any(k.startswith("res.") for k in tensors):
        raise UserError(
            f"{source}: not an original HyperIQA checkpoint (no 'res.' keys; "
            f"first keys: {', '.join(list(tensors)[:3])})"
        )
    model = HyperIQA(backbone="resnet50", resize=resize, higher_is_better=higher_is_better)
    model.build((None, 224, 224, 3))
    table = WeightTable(tensors, source=source)
    table.prefix = "res."
    from keras_hub.src.utils.timm import convert_resnet

    convert_resnet.convert_weights(model.backbone, table, {"architecture": "resnet50"})
    table.prefix = ""
    for variable, key, transform in conversion_table(model):
        table.port_weight(variable, key, transform)
    table.check()
    return model


def convert_original_checkpoint(src, dst, resize=KONIQ_RESIZE, higher_is_better=True):
    """Convert an original checkpoint to a ``.keras`` file, written atomically.

    Nothing is written to ``dst`` unless the whole conversion succeeds.
    """
    dst = os.fspath(dst)
    if not dst.endswith(".keras"):
        raise UserError(f"{dst}: the output file name must end in .keras")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise UserError(f"{dst}: folder {folder} does not exist")
    model = load_original_checkpoint(src, resize=resize, higher_is_better=higher_is_better)
    save_model_atomic(model, dst)
    return model


def save_model_atomic(model, dst):
    """``model.save(dst)`` through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
