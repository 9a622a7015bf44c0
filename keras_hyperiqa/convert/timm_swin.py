"""Load timm Swin-Transformer weights into keras-hub's SwinTransformerBackbone.

Accepted sources: a state dict (``{name: torch.Tensor | np.ndarray}``), a
``torch.save``d file (read with ``weights_only=True``), a ``.safetensors``
file, or a timm/Hugging Face folder holding ``config.json`` and
``model.safetensors`` or ``pytorch_model.bin``. A dict wrapped as
``{"model": sd}`` or ``{"state_dict": sd}`` is unwrapped, as timm does.

Key layouts understood (each by its own small function below):

* timm >= 0.9 (``layers.{i}.downsample`` at the start of stage ``i``),
* timm ``features_only`` state dicts (``layers_{i}.``),
* the original Microsoft / timm < 0.9 layout (``layers.{i}.downsample`` at the
  end of stage ``i``, ``head.weight``), renamed the way timm's own
  ``checkpoint_filter_fn`` does.

Ignored keys (legitimately unused by the backbone):

* ``head.*`` / ``head.fc.*``: the ImageNet classifier;
* ``*.attn_mask``: a fixed buffer (keras-hub rebuilds the same mask);
* ``*.relative_position_index``: a fixed buffer; when present it is *checked*
  against keras-hub's index (they agree for square windows) rather than used.

The final ``norm.weight`` / ``norm.bias`` are loaded into the backbone's final
``norm`` when present and left at their initial values when absent (a
``features_only`` state dict has none); HyperIQA's stage taps never use them.

Everything is validated before any variable is assigned: a source with missing,
unexpected or mis-shaped keys raises :class:`keras_hyperiqa.errors.UserError`
listing them and leaves the backbone untouched.
"""

import json
import os
import re

import numpy as np

from keras_hyperiqa.convert.state_dict import read_state_dict as read_weight_file
from keras_hyperiqa.errors import UserError

_IGNORED_PATTERNS = (
    re.compile(r"^head\."),
    re.compile(r"\.attn_mask$"),
    re.compile(r"\.relative_position_index$"),
)
_OPTIONAL_KEYS = ("norm.weight", "norm.bias")


# --------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------


def _to_numpy(value):
    """torch tensor (any float dtype, incl. bf16) or array -> numpy."""
    if hasattr(value, "detach"):
        import torch

        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        return value.numpy()
    return np.asarray(value)


def _read_file(path):
    """A weight file (torch or safetensors), read by the project's one reader."""
    return read_weight_file(path)


def _read_folder(path):
    """timm / HF hub folder: config.json + model.safetensors|pytorch_model.bin."""
    config_path = os.path.join(path, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
        arch = config.get("architecture", "")
        if arch and not str(arch).startswith("swin"):
            raise UserError(f"{config_path}: architecture {arch!r} is not Swin")
    for fname in ("model.safetensors", "pytorch_model.bin"):
        fpath = os.path.join(path, fname)
        if os.path.exists(fpath):
            return _read_file(fpath)
    raise UserError(
        f"{path}: no model.safetensors or pytorch_model.bin in the folder"
    )


def read_state_dict(state_dict_or_path):
    """Return ``{key: np.ndarray}`` from any accepted source."""
    src = state_dict_or_path
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if os.path.isdir(path):
            src = _read_folder(path)
        elif os.path.isfile(path):
            src = _read_file(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not isinstance(src, dict):
        raise UserError(
            f"expected a state dict, got {type(src).__name__} from the source"
        )
    for wrapper in ("model", "state_dict"):
        if isinstance(src.get(wrapper), dict):
            src = src[wrapper]
    return {str(k): _to_numpy(v) for k, v in src.items()}


# --------------------------------------------------------------------------
# Key-layout quirks
# --------------------------------------------------------------------------


def _rename_features_only_keys(sd):
    """timm ``features_only`` models flatten ``layers.i`` into ``layers_i``."""
    return {re.sub(r"^layers_(\d+)\.", r"layers.\1.", k): v
            for k, v in sd.items()}


def _rename_pre_timm_0_9_keys(sd):
    """Original Swin / timm < 0.9: merge at the end of stage i -> stage i+1.

    Those checkpoints have ``layers.0.downsample`` (stage 0 merges at its
    end); timm 1.0 names the same module ``layers.1.downsample``. The 2x2
    concatenation order is the same in both (timm's checkpoint_filter_fn
    renames without permuting), so only names change.
    """
    if "layers.0.downsample.reduction.weight" not in sd:
        return sd
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample",
                   lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
        if k.startswith("head.") and not k.startswith("head.fc."):
            k = "head.fc." + k[len("head."):]
        out[k] = v
    return out


def _timm_downsample_prefix(keras_stage_index):
    """keras-hub ``stage_i.downsample`` (end of stage i) is timm's
    ``layers.{i+1}.downsample`` (start of stage i + 1)."""
    return f"layers.{keras_stage_index + 1}.downsample"


# --------------------------------------------------------------------------
# Weight transforms
# --------------------------------------------------------------------------


def _identity(x):
    return x


def _conv_oihw_to_hwio(x):
    """torch Conv2d (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)."""
    return np.transpose(x, (2, 3, 1, 0))


def _linear_to_dense(x):
    """torch Linear (out, in) -> Keras Dense kernel (in, out).

    Also right for ``attn.qkv``: both reshape the 3C output as
    (3, heads, head_dim), so the fused q/k/v layout needs no reordering.
    """
    return np.transpose(x)


def _check_relative_position_index(backbone, sd):
    """Compare any stored ``relative_position_index`` with keras-hub's.

    The bias table is copied as is, which is only right if both index it the
    same way; timm 1.0 no longer saves the buffer, older checkpoints do.
    """
    problems = []
    for si, stage in enumerate(backbone.stages):
        for bi, block in enumerate(stage.blocks):
            key = f"layers.{si}.blocks.{bi}.attn.relative_position_index"
            if key in sd:
                ours = _to_numpy(block.attn.relative_position_index)
                theirs = sd[key]
                if theirs.shape != ours.shape or not np.array_equal(
                    theirs.astype(np.int64), ours.astype(np.int64)
                ):
                    problems.append(key)
    return problems


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


def swin_weight_table(backbone):
    """``[(keras_variable, timm_key, transform)]`` for every backbone weight.

    The final ``norm`` is included; it is optional in the source.
    """
    table = []

    def ln(layer, key):
        table.append((layer.gamma, f"{key}.weight", _identity))
        table.append((layer.beta, f"{key}.bias", _identity))

    def dense(layer, key):
        table.append((layer.kernel, f"{key}.weight", _linear_to_dense))
        if layer.bias is not None:
            table.append((layer.bias, f"{key}.bias", _identity))

    pe = backbone.patch_embedding
    table.append((pe.proj.kernel, "patch_embed.proj.weight", _conv_oihw_to_hwio))
    table.append((pe.proj.bias, "patch_embed.proj.bias", _identity))
    if pe.norm is not None:
        ln(pe.norm, "patch_embed.norm")

    for si, stage in enumerate(backbone.stages):
        for bi, block in enumerate(stage.blocks):
            p = f"layers.{si}.blocks.{bi}"
            ln(block.norm1, f"{p}.norm1")
            dense(block.attn.qkv, f"{p}.attn.qkv")
            dense(block.attn.proj, f"{p}.attn.proj")
            table.append((
                block.attn.relative_position_bias_table,
                f"{p}.attn.relative_position_bias_table",
                _identity,
            ))
            ln(block.norm2, f"{p}.norm2")
            dense(block.mlp.fc1, f"{p}.mlp.fc1")
            dense(block.mlp.fc2, f"{p}.mlp.fc2")
        if stage.downsample is not None:
            p = _timm_downsample_prefix(si)
            # Same 2x2 order in both: keras-hub concatenates
            # x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2];
            # timm's reshape(B,H/2,2,W/2,2,C).permute(0,1,3,4,2,5) flattens
            # (w_offset, h_offset, C) -> the same (0,0),(1,0),(0,1),(1,1).
            ln(stage.downsample.norm, f"{p}.norm")
            dense(stage.downsample.reduction, f"{p}.reduction")

    ln(backbone.norm, "norm")
    return table


def _fmt(keys, limit=20):
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_timm_swin_weights(backbone, state_dict_or_path, prefix=""):
    """Load timm Swin weights into a keras-hub ``SwinTransformerBackbone``.

    Args:
        backbone: from :func:`keras_hyperiqa.model.swin.build_swin_backbone`
            (or any keras-hub ``SwinTransformerBackbone``).
        state_dict_or_path: state dict, ``.pth``/``.pt``/``.bin`` file,
            ``.safetensors`` file, or timm folder (see module docstring).
        prefix: if given, only keys starting with it are used, with it
            stripped (e.g. ``"backbone."`` for a Swin inside a larger model).

    Returns:
        The list of source keys that were ignored (head, buffers).

    Raises:
        UserError: naming missing, unexpected or mis-shaped keys, or an
        unreadable source. Nothing is assigned in that case.
    """
    where = (state_dict_or_path if isinstance(state_dict_or_path,
                                              (str, os.PathLike))
             else "state dict")
    sd = read_state_dict(state_dict_or_path)
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    sd = _rename_features_only_keys(sd)
    sd = _rename_pre_timm_0_9_keys(sd)

    table = swin_weight_table(backbone)
    used = {key for _, key, _ in table}
    ignored = sorted(
        k for k in sd if k not in used
        and any(p.search(k) for p in _IGNORED_PATTERNS)
    )
    unexpected = sorted(k for k in sd if k not in used and k not in ignored)
    missing = sorted(
        key for _, key, _ in table if key not in sd and key not in _OPTIONAL_KEYS
    )
    bad_index = _check_relative_position_index(backbone, sd)

    assignments = []
    mis_shaped = []
    for variable, key, transform in table:
        if key not in sd:
            continue
        value = transform(sd[key])
        if tuple(value.shape) != tuple(variable.shape):
            mis_shaped.append(
                f"{key} {tuple(sd[key].shape)} (needs "
                f"{tuple(variable.shape)} after transform, got "
                f"{tuple(value.shape)})"
            )
            continue
        assignments.append((variable, value))

    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    if mis_shaped:
        problems.append(f"mis-shaped keys: {_fmt(mis_shaped)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    if bad_index:
        problems.append(
            "relative_position_index differs from keras-hub's: "
            f"{_fmt(bad_index)}"
        )
    if problems:
        raise UserError(
            f"{where}: not a timm Swin checkpoint matching this backbone "
            f"(embed_dim={backbone.embed_dim}, depths={tuple(backbone.depths)}"
            f"): " + "; ".join(problems)
        )

    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return ignored
