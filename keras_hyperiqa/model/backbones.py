"""Backbones from keras-hub, and the four feature maps HyperIQA taps from them.

keras-hub is imported inside functions only: it imports TensorFlow (seconds).
"""

import keras

from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.batch_norm import use_fused_batch_norm

# keras-hub ResNetBackbone arguments for torchvision's ResNets ("v1.5": stride
# on the 3x3 conv, which is what keras-hub's bottleneck block does).
_RESNET_BLOCKS = {
    "resnet18": ("basic_block", [2, 2, 2, 2]),
    "resnet34": ("basic_block", [3, 4, 6, 3]),
    "resnet50": ("bottleneck_block", [3, 4, 6, 3]),
    "resnet101": ("bottleneck_block", [3, 4, 23, 3]),
    "resnet152": ("bottleneck_block", [3, 8, 36, 3]),
}

# A small ResNet for CPU demos and tests: one basic block per stage, 64-wide
# throughout (keras-hub requires 64 filters in the first stage).
_RESNET_TINY = dict(
    stackwise_num_filters=[64, 64, 64, 64],
    stackwise_num_blocks=[1, 1, 1, 1],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
)

SWIN_NAMES = ("swin_tiny", "swin_small", "swin_base")
BACKBONES = tuple(_RESNET_BLOCKS) + ("resnet_tiny",) + SWIN_NAMES


def resnet_config(name):
    """keras-hub ``ResNetBackbone`` kwargs for a ResNet name."""
    if name == "resnet_tiny":
        return dict(_RESNET_TINY)
    block_type, blocks = _RESNET_BLOCKS[name]
    return dict(
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=blocks,
        stackwise_num_strides=[1, 2, 2, 2],
        block_type=block_type,
        use_pre_activation=False,
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
    )


def check_backbone_name(name):
    if name not in BACKBONES:
        raise UserError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        )
    return name


def is_swin(name):
    return name in SWIN_NAMES


def compute_data_format(name):
    """The layout a backbone computes in on this Keras backend.

    Keras's torch convolutions and batch norms transpose channels-last
    tensors to channels-first and back around every layer; a ResNet built
    channels-first on torch skips that (the input and the four stage outputs
    are transposed once instead). Kernel shapes are the same in both layouts,
    so weights, conversion and ``.keras`` files do not depend on it. Swin and
    the jax backend (XLA picks its own layouts) stay channels-last.
    """
    if keras.backend.backend() == "torch" and not is_swin(name):
        return "channels_first"
    return "channels_last"


def build_backbone(name, image_size=224):
    """Return ``(backbone, features)`` for a backbone name.

    The feature model takes and returns the layout of
    :func:`compute_data_format` (``HyperIQA`` transposes at its edges).

    ``backbone`` is the keras-hub model (randomly initialised); ``features`` a
    ``keras.Model`` over the same layers returning the four stage outputs,
    channels-last, strides 4, 8, 16, 32.
    """
    check_backbone_name(name)
    if is_swin(name):
        from keras_hyperiqa.model import swin

        backbone = swin.build_swin_backbone(name, image_size=image_size)
        return backbone, swin.swin_feature_model(backbone)

    from keras_hub.models import ResNetBackbone

    data_format = compute_data_format(name)
    shape = (image_size, image_size, 3) if data_format == "channels_last" else (3, image_size, image_size)
    backbone = ResNetBackbone(
        **resnet_config(name), image_shape=shape, data_format=data_format, name="backbone",
    )
    use_fused_batch_norm(backbone)
    features = keras.Model(
        backbone.inputs,
        [backbone.pyramid_outputs[f"P{i}"] for i in range(2, 6)],
        name="backbone_features",
    )
    return backbone, features
