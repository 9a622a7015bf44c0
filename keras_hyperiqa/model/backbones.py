"""Backbones from keras-hub, and the four feature maps HyperIQA taps from them.

keras-hub is imported inside functions only: it imports TensorFlow (seconds).
"""

import re

import keras

from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.batch_norm import use_fused_batch_norm
from keras_hyperiqa.names import BACKBONES, is_swin

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


def build_backbone(name, image_size=224, drop_path=0.0, seed=0):
    """Return ``(backbone, features)`` for a backbone name.

    The feature model takes and returns the layout of
    :func:`compute_data_format` (``HyperIQA`` transposes at its edges).

    ``backbone`` is the keras-hub model (randomly initialised); ``features`` a
    ``keras.Model`` over the same layers returning the four stage outputs,
    channels-last, strides 4, 8, 16, 32.
    """
    check_backbone_name(name)
    if drop_path and not is_swin(name):
        raise UserError(f"drop-path (stochastic depth) is a Swin option; {name} has none")
    if is_swin(name):
        from keras_hyperiqa.model import swin

        backbone = swin.build_swin_backbone(name, image_size=image_size, drop_path=drop_path,
                                            seed=seed)
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


# Layers whose outputs every later ResNet layer depends on alone: the stem's
# pooling and each residual block's output (keras-hub's names).
_RESNET_CUTS = re.compile(r"pool1_pool|stack\d+_block\d+_out")


class BlockChain:
    """Runs a functional feature model as a chain of sub-models.

    Keras 3's functional call keeps every intermediate tensor until the
    whole forward ends; a chain of sub-models (``keras.Model(block_input,
    block_output)`` over the same layers), cut where a single tensor carries
    everything later layers need, frees each block's intermediates when the
    block returns. Same layers, so the same variables, outputs and gradients.

    A plain object, not a Keras layer: the model that holds it keeps saving
    the feature model and the backbone only (``.keras`` files unchanged).

    Args:
        features: the functional feature model (its outputs must be among
            the cut tensors, or it runs in one piece).
        cuts: the tensors of ``features``'s graph to cut at, in order.
    """

    def __init__(self, features, cuts=()):
        outputs = {id(t): i for i, t in enumerate(features.outputs)}
        cuts = list(cuts)
        if not cuts or not all(id(t) in {id(c) for c in cuts} for t in features.outputs):
            self.segments, self.taps = [features], [list(range(len(features.outputs)))]
            self.single = True
            return
        cuts = cuts[:max(i for i, c in enumerate(cuts) if id(c) in outputs) + 1]
        self.single = False
        self.segments, self.taps = [], []
        start = features.inputs
        for i, cut in enumerate(cuts):
            self.segments.append(keras.Model(start, cut, name=f"{features.name}_part{i}"))
            self.taps.append([outputs[id(cut)]] if id(cut) in outputs else [])
            start = cut
        self.n_outputs = len(features.outputs)

    def __call__(self, x, training=False):
        if self.single:
            return self.segments[0](x, training=training)
        out = [None] * self.n_outputs
        for segment, taps in zip(self.segments, self.taps):
            x = segment(x, training=training)
            for k in taps:
                out[k] = x
        return out


def block_chain(backbone, features):
    """The :class:`BlockChain` of a backbone's feature model (a ResNet's blocks;
    other backbones run in one piece)."""
    cuts = [layer.output for layer in backbone.layers if _RESNET_CUTS.fullmatch(layer.name)]
    return BlockChain(features, cuts)
