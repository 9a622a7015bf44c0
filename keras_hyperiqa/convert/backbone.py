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

import os

import numpy as np

from keras_hyperiqa.convert.state_dict import WeightTable, read_state_dict
from keras_hyperiqa.errors import UserError, first_line
from keras_hyperiqa.model.backbones import is_swin

# torchvision / timm ResNet keys that carry no backbone weights.
_RESNET_HEAD_PREFIXES = ("fc.",)


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
    if os.sep in source or source.endswith((".pth", ".pt", ".bin", ".safetensors")):
        raise UserError(f"{source}: no such file")
    return _copy_from_preset(backbone, source)


def port_resnet(backbone, table, name):
    """Port a torchvision-named ResNet into a keras-hub ``ResNetBackbone``.

    keras-hub's timm converter does the work (its layer names and kernel
    transposes); ``table`` collects every problem, raised together.
    """
    from keras_hub.src.utils.timm import convert_resnet

    if name == "resnet_tiny":
        raise UserError("resnet_tiny has no ImageNet weights; use --backbone-weights none")
    convert_resnet.convert_weights(backbone, table, {"architecture": name})
    table.check(ignore_unused=_RESNET_HEAD_PREFIXES)


def _copy_from_preset(backbone, preset):
    import keras_hub

    try:
        loaded = keras_hub.models.Backbone.from_preset(preset)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(f"{preset}: cannot load backbone weights ({first_line(err)})") from None
    ours, theirs = backbone.weights, loaded.weights
    shapes_ours = [tuple(w.shape) for w in ours]
    shapes_theirs = [tuple(w.shape) for w in theirs]
    if shapes_ours != shapes_theirs:
        raise UserError(
            f"{preset}: its backbone ({type(loaded).__name__}, {len(theirs)} weights) "
            f"does not match this model's backbone ({len(ours)} weights)"
        )
    for dst, src in zip(ours, theirs):
        dst.assign(np.asarray(src.numpy() if hasattr(src, "numpy") else src))
    return backbone
