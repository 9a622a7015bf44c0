"""ImageNet weights for the backbone: local files first, keras-hub presets online.

Sources, in the order they are recognised:
- a directory in timm's format (``config.json`` + ``model.safetensors``): loaded
  with keras-hub's own timm preset loader;
- a weight file (torchvision/timm state dict ``.pth``/``.pt``/``.bin``, or
  ``.safetensors``): ported with keras-hub's timm converter through our
  ``WeightTable`` (ResNets) or our timm Swin converter;
- anything else is taken as a keras-hub preset name (``resnet_50_imagenet``,
  ``hf://timm/resnet50.tv_in1k``), which needs network access.
"""

import functools
import os

import numpy as np

from keras_hyperiqa.convert.state_dict import WeightTable, read_state_dict
from keras_hyperiqa.errors import UserError, first_line
from keras_hyperiqa.names import is_swin

# torchvision / timm ResNet keys that carry no backbone weights.
_RESNET_HEAD_PREFIXES = ("fc.",)

# The ImageNet weights ``fit --dataset`` starts from unless told otherwise,
# loaded by keras-hub (downloaded when online, then cached). ResNets:
# torchvision's ImageNet-1k weights, the ones the original code loads, in
# timm's copy on the Hugging Face hub. Swin: keras-hub's own presets of the
# timm models the Swin fork uses. resnet_tiny has none.
IMAGENET_WEIGHTS = {
    "resnet18": "hf://timm/resnet18.tv_in1k",
    "resnet34": "hf://timm/resnet34.tv_in1k",
    "resnet50": "hf://timm/resnet50.tv_in1k",
    "resnet101": "hf://timm/resnet101.tv_in1k",
    "resnet152": "hf://timm/resnet152.tv_in1k",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
    "swin_base": "swin_base_patch4_window7_224",
}

_OFFLINE_HINT = ("pass --backbone-weights PATH (a timm/torchvision state dict or a timm folder), "
                 "or --backbone-weights none to train from scratch")


def imagenet_weights(backbone_name):
    """The default ImageNet weights source of a backbone (``UserError`` when it has none)."""
    if backbone_name not in IMAGENET_WEIGHTS:
        raise UserError(f"{backbone_name} has no ImageNet weights: {_OFFLINE_HINT}")
    return IMAGENET_WEIGHTS[backbone_name]


def check_backbone_weights(source):
    """Fail now, with a one-line error, when ``source`` cannot be loaded later.

    Local paths must exist; a keras-hub preset is loaded (downloaded when
    online) and kept for :func:`load_backbone_weights`.
    """
    source = os.fspath(source)
    if source.lower() == "none" or os.path.exists(source):
        return
    if _looks_like_path(source):
        raise UserError(f"{source}: no such file")
    _preset_weights(source)


def _looks_like_path(source):
    """A missing file, rather than a keras-hub preset (``name`` or ``scheme://...``)."""
    if "://" in source:
        return False
    return os.sep in source or source.endswith((".pth", ".pt", ".bin", ".safetensors"))


def _backbone_of(model):
    return getattr(model, "backbone", model)


def load_backbone_weights(model, source, backbone_name=None):
    """Load ImageNet weights into ``model.backbone`` (or into a bare backbone).

    Args:
        model: a ``HyperIQA`` model or a keras-hub backbone.
        source: a path or a keras-hub preset name (see module docstring).
        backbone_name: the architecture name (``resnet50``, ``swin_tiny``...);
            read from ``model.backbone_name`` when omitted.
    Returns the backbone.
    """
    backbone = _backbone_of(model)
    name = backbone_name or getattr(model, "backbone_name", None)
    if name is None:
        raise ValueError("backbone_name is required for a bare backbone")
    source = os.fspath(source)
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise UserError(f"{source}: a weights folder needs a config.json (timm format)")
        if is_swin(name):
            from keras_hyperiqa.convert.timm_swin import load_timm_swin_weights

            load_timm_swin_weights(backbone, source)
            return backbone
        return _copy_from_preset(backbone, source)
    if os.path.isfile(source):
        if is_swin(name):
            from keras_hyperiqa.convert.timm_swin import load_timm_swin_weights

            # Reads the file itself (.pth/.pt/.bin/.safetensors) and names
            # ``source`` in its errors.
            load_timm_swin_weights(backbone, source)
            return backbone
        tensors = read_state_dict(source)
        port_resnet(backbone, WeightTable(tensors, source=source), name)
        return backbone
    if _looks_like_path(source):
        raise UserError(f"{source}: no such file")
    return _copy_from_preset(backbone, source)


def port_resnet(backbone, table, name):
    """Port a torchvision-named ResNet into a keras-hub ``ResNetBackbone``.

    keras-hub's timm converter does the work (its layer names and kernel
    transposes); ``table`` collects every problem, raised together.
    """
    from keras_hyperiqa.compat import timm_resnet_convert_weights

    if name == "resnet_tiny":
        raise UserError("resnet_tiny has no ImageNet weights; use --backbone-weights none")
    timm_resnet_convert_weights(backbone, table, {"architecture": name})
    table.check(ignore_unused=_RESNET_HEAD_PREFIXES)


@functools.lru_cache(maxsize=2)
def _preset_weights(preset):
    """(class name, weight arrays) of a keras-hub preset's backbone, loaded once per process."""
    import keras_hub

    try:
        loaded = keras_hub.models.Backbone.from_preset(preset)
    except (ValueError, OSError, ImportError) as err:
        raise UserError(f"{preset}: cannot load backbone weights ({first_line(err)}); offline? "
                        f"{_OFFLINE_HINT}") from None
    arrays = tuple(np.asarray(w.numpy() if hasattr(w, "numpy") else w) for w in loaded.weights)
    return type(loaded).__name__, arrays


def _copy_from_preset(backbone, preset):
    # A local folder is read afresh (its files may change); a download is kept.
    load = _preset_weights.__wrapped__ if os.path.isdir(preset) else _preset_weights
    name, theirs = load(preset)
    ours = backbone.weights
    shapes_ours = [tuple(w.shape) for w in ours]
    shapes_theirs = [tuple(w.shape) for w in theirs]
    if shapes_ours != shapes_theirs:
        raise UserError(
            f"{preset}: its backbone ({name}, {len(theirs)} weights) "
            f"does not match this model's backbone ({len(ours)} weights)"
        )
    for dst, src in zip(ours, theirs):
        dst.assign(src)
    return backbone
