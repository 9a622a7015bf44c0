"""The Swin HyperIQA fork's checkpoints (SMART-IQA, cny123222/Perceptual-IQA-CS3324) to Keras.

Its solvers save ``HyperNet.state_dict()``: timm's ``features_only`` Swin under
``swin.backbone.`` (``layers_{i}`` names), the LDA taps ``swin.lda{1..4}_*``,
the attention fusion ``multiscale_attention.attention_net.{0,3}`` (only with
``use_multiscale`` and ``use_attention``), and the head ``conv1.{0,2,4}``,
``fc{1..4}w_conv``, ``fc{1..5}b_fc``, ``fc5w_fc`` as in the original.

Everything the model needs is read from the keys and shapes: the Swin size
(embed width, blocks per stage, heads), multi-scale (``conv1``'s input width
is the sum of the stage widths) and attention (its keys are present). Every
key must be used and every variable filled (the backbone's final ``norm``,
which ``features_only`` drops and the model never runs, excepted); otherwise
one ``UserError`` lists what did not match.
"""

import os
import re

from keras_hyperiqa.convert.original import (
    KONIQ_RESIZE,
    conversion_table,
    dense_kernel,
)
from keras_hyperiqa.convert.state_dict import WeightTable, read_state_dict
from keras_hyperiqa.errors import UserError

BACKBONE_PREFIX = "swin.backbone."
ATTENTION_PREFIX = "multiscale_attention.attention_net."
# The fork's training defaults (its solver's drop_path_rate and dropout_rate):
# carried into the converted model so that fine-tuning it regularises as the
# fork did; they change nothing at inference.
FORK_DROPOUT = 0.3
FORK_DROP_PATH = 0.2


def is_smart_iqa(tensors):
    """Whether a state dict is the Swin fork's ``HyperNet``."""
    return any(k.startswith(BACKBONE_PREFIX) for k in tensors)


def _shape(tensors, key, source):
    if key not in tensors:
        raise UserError(f"{source}: not a Swin HyperIQA (SMART-IQA) checkpoint: no key {key}")
    return tuple(tensors[key].shape)


def detect_architecture(tensors, source="state dict"):
    """The ``HyperIQA`` arguments a fork state dict was trained with."""
    from keras_hyperiqa.model.swin import SWIN_CONFIGS

    p = BACKBONE_PREFIX
    embed = _shape(tensors, p + "patch_embed.proj.weight", source)[0]
    depths, heads = [], []
    for i in range(4):
        blocks = {int(m.group(1)) for k in tensors
                  for m in [re.match(rf"{re.escape(p)}layers_{i}\.blocks\.(\d+)\.", k)] if m}
        depths.append(len(blocks))
        table = p + f"layers_{i}.blocks.0.attn.relative_position_bias_table"
        heads.append(_shape(tensors, table, source)[1])
    found = (embed, tuple(depths), tuple(heads))
    names = [name for name, cfg in SWIN_CONFIGS.items()
             if (cfg["embed_dim"], tuple(cfg["depths"]), tuple(cfg["num_heads"])) == found]
    if not names:
        raise UserError(
            f"{source}: its Swin (embed {embed}, depths {tuple(depths)}, heads {tuple(heads)}) "
            f"is none of {', '.join(SWIN_CONFIGS)}")
    channels = [embed * 2 ** i for i in range(4)]
    head_in = _shape(tensors, "conv1.0.weight", source)[1]
    if head_in == sum(channels):
        multiscale = True
    elif head_in == channels[-1]:
        multiscale = False
    else:
        raise UserError(
            f"{source}: conv1 takes {head_in} channels; the stages give {channels[-1]} "
            f"(last) or {sum(channels)} (all four)")
    attention = any(k.startswith(ATTENTION_PREFIX) for k in tensors)
    if attention and not multiscale:
        raise UserError(f"{source}: attention fusion keys in a single-scale model")
    lda_out = _shape(tensors, "swin.lda1_fc.weight", source)[0]
    lda4 = _shape(tensors, "swin.lda4_fc.weight", source)[0]
    target_dims = [3 * lda_out + lda4]
    for k in range(1, 5):
        target_dims.append(_shape(tensors, f"fc{k}b_fc.weight", source)[0])
    target_dims.append(_shape(tensors, "fc5b_fc.weight", source)[0])
    return dict(
        backbone=names[0], multiscale=multiscale, attention=attention, lda_out=lda_out,
        hyper_in=_shape(tensors, "conv1.4.weight", source)[0],
        head_widths=(_shape(tensors, "conv1.0.weight", source)[0],
                     _shape(tensors, "conv1.2.weight", source)[0]),
        target_dims=tuple(target_dims),
    )


def smart_iqa_table(model):
    """(keras variable, fork key, transform) for everything outside the Swin."""
    rows = [(v, "swin." + k[len("res."):] if k.startswith("res.") else k, t)
            for v, k, t in conversion_table(model)]
    if model.fusion is not None:
        for layer, index in ((model.fusion.fc1, 0), (model.fusion.fc2, 3)):
            rows.append((layer.kernel, f"{ATTENTION_PREFIX}{index}.weight", dense_kernel))
            rows.append((layer.bias, f"{ATTENTION_PREFIX}{index}.bias", None))
    return rows


def load_smart_iqa(src, resize=KONIQ_RESIZE, tensors=None, dropout=FORK_DROPOUT,
                   drop_path=FORK_DROP_PATH, higher_is_better=True):
    """Build a ``HyperIQA`` holding a fork checkpoint's weights (see module docstring)."""
    from keras_hyperiqa.convert.timm_swin import load_timm_swin_weights
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    source = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "state dict"
    if tensors is None:
        tensors = read_state_dict(src) if isinstance(src, (str, os.PathLike)) else dict(src)
    arch = detect_architecture(tensors, source)
    model = HyperIQA(**arch, resize=resize, dropout=dropout, drop_path=drop_path,
                     higher_is_better=higher_is_better)
    model.build((None, model.patch_size, model.patch_size, 3))
    table = WeightTable(tensors, source=source)
    for variable, key, transform in smart_iqa_table(model):
        table.port_weight(variable, key, transform)
    backbone = {k: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    problems = []
    try:
        load_timm_swin_weights(model.backbone, backbone, prefix=BACKBONE_PREFIX)
    except UserError as err:
        problems.append(str(err))
    try:
        table.check(ignore_unused=(BACKBONE_PREFIX,))
    except UserError as err:
        problems.append(str(err))
    if problems:
        raise UserError(f"{source}: does not match a {arch['backbone']} SMART-IQA model: "
                        + "; ".join(problems))
    return model
