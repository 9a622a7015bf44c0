"""Swin-Transformer backbone for the Swin version of HyperIQA.

The backbone is keras-hub's ``SwinTransformerBackbone``; this module only
builds it for the three timm variants the HyperIQA Swin fork uses and exposes
the four stage outputs the way timm's ``features_only=True`` model returns
them.

Where the stage outputs are taken
---------------------------------
timm 1.0 applies patch merging at the *start* of stages 2..4, so its stage
``i`` output (what ``features_only`` hooks, module ``layers.i``) is the output
of stage ``i``'s blocks. keras-hub applies ``PatchMerging`` at the *end* of
stages 1..3 inside one ``SwinTransformerStage`` layer, so the stage layer's
output is already downsampled and its pre-merge tensor is not a node of the
backbone's functional graph. :func:`swin_feature_model` therefore re-wires the
backbone's own layer objects (shared weights, nothing copied): patch
embedding -> dropout -> for each stage: its ``blocks_*`` layers, tap, then its
``downsample`` layer. The final ``norm`` of the backbone is *not* applied to
any tap: timm's ``features_only`` outputs are un-normed (timm's ``norm`` sits
after the last stage and is dropped by ``features_only``).

Input
-----
The backbone has no rescaling or normalisation layer (keras-hub puts that in
``SwinTransformerImageConverter``, which we do not use): it takes the already
ImageNet-normalised, channels-last image, exactly what timm's model takes
(in NCHW). HyperIQA normalises before calling it.

Exactness
---------
keras-hub reproduces timm 1.0 exactly (same relative position index, same
shifted-window mask of -100, same 2x2 merge order, exact GELU, LayerNorm eps
1e-5) when every stage resolution is a multiple of the window size or at most
the window size; that is checked in :func:`build_swin_backbone`. For other
sizes the two pad differently (keras-hub builds the shift mask on the unpadded
map, timm on the padded one), so they are refused.
"""

import warnings

from keras_hyperiqa.errors import UserError

# keras-hub's SwinTransformerBlock calls ``self.attn(x, mask=attn_mask)``;
# Keras treats a ``mask=`` kwarg as a Keras mask and warns that
# WindowAttention "does not support masking". The mask is still passed to
# ``call`` (it is the shifted-window attention mask), so the warning is noise.
warnings.filterwarnings(
    "ignore",
    message=r"Layer 'attn' \(of type WindowAttention\) was passed an input "
    r"with a mask attached",
    category=UserWarning,
)

SWIN_CONFIGS = {
    "swin_tiny": {
        "timm_name": "swin_tiny_patch4_window7_224",
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "patch_size": 4,
        "image_size": 224,
    },
    "swin_small": {
        "timm_name": "swin_small_patch4_window7_224",
        "embed_dim": 96,
        "depths": (2, 2, 18, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "patch_size": 4,
        "image_size": 224,
    },
    "swin_base": {
        "timm_name": "swin_base_patch4_window7_224",
        "embed_dim": 128,
        "depths": (2, 2, 18, 2),
        "num_heads": (4, 8, 16, 32),
        "window_size": 7,
        "patch_size": 4,
        "image_size": 224,
    },
    # A small Swin for CPU tests and demos (no ImageNet weights): the
    # architecture of swin_tiny (two blocks per stage, so shifted windows
    # run in every stage) at a sixth of its width.
    "swin_micro": {
        "timm_name": None,
        "embed_dim": 16,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 1, 2, 2),
        "window_size": 7,
        "patch_size": 4,
        "image_size": 224,
    },
}


def resolve_swin_name(name):
    """Return the ``SWIN_CONFIGS`` key for ``name`` (short or timm name)."""
    if name in SWIN_CONFIGS:
        return name
    for key, cfg in SWIN_CONFIGS.items():
        if name == cfg["timm_name"]:
            return key
    known = ", ".join(
        [*SWIN_CONFIGS, *(c["timm_name"] for c in SWIN_CONFIGS.values() if c["timm_name"])]
    )
    raise UserError(f"unknown Swin backbone {name!r}; known: {known}")


def _check_window_fit(image_size, patch_size, window_size, num_stages):
    """Refuse input sizes where keras-hub's padding differs from timm's."""
    if image_size % (patch_size * 2 ** (num_stages - 1)):
        raise UserError(
            f"Swin image size {image_size} must be a multiple of "
            f"{patch_size * 2 ** (num_stages - 1)}"
        )
    res = image_size // patch_size
    for i in range(num_stages):
        if res > window_size and res % window_size:
            raise UserError(
                f"Swin image size {image_size}: stage {i + 1} resolution "
                f"{res} is neither <= nor a multiple of window {window_size}; "
                "keras-hub and timm pad such maps differently"
            )
        res //= 2


def _seeded_drop_paths(seed):
    """Build keras-hub Swin blocks with :class:`SeededDropPath` as their DropPath.

    keras-hub's ``DropPath`` draws from the backend's generator (other masks on
    torch than on jax); the blocks look the class up in their module when they
    are built, so :func:`keras_hyperiqa.compat.swin_drop_path_replaced` swaps
    it there for the construction only. Block ``k``
    (in build order) gets seed ``seed + k``.
    """
    from keras_hyperiqa import compat
    from keras_hyperiqa.model.layers import SeededDropPath

    count = [0]

    def make(rate, **kwargs):
        count[0] += 1
        # Named by build order: unique in the model, the same in every instance.
        return SeededDropPath(rate, seed=seed + count[0], name=f"drop_path_{count[0]}", **kwargs)

    return compat.swin_drop_path_replaced(make)


def build_swin_backbone(name="swin_tiny", image_size=None, drop_path=0.0,
                        dtype=None, seed=0):
    """Build a randomly initialised keras-hub ``SwinTransformerBackbone``.

    Args:
        name: ``"swin_tiny"``, ``"swin_small"``, ``"swin_base"`` or the timm
            name (``"swin_tiny_patch4_window7_224"``, ...).
        image_size: square input size; defaults to the config's 224.
        drop_path: stochastic depth rate (linearly increasing over blocks,
            as in timm). 0.0 is timm's ``create_model`` default; keras-hub's
            own default would be 0.1. Drawn by :class:`SeededDropPath`
            (the same masks on torch and jax), seeded from ``seed``.
        dtype: Keras dtype policy, passed through.

    Returns:
        ``keras_hub.models.SwinTransformerBackbone`` taking
        ``(B, image_size, image_size, 3)`` ImageNet-normalised images. Load
        timm weights with
        :func:`keras_hyperiqa.convert.timm_swin.load_timm_swin_weights`.
    """
    cfg = SWIN_CONFIGS[resolve_swin_name(name)]
    image_size = int(image_size or cfg["image_size"])
    _check_window_fit(
        image_size, cfg["patch_size"], cfg["window_size"], len(cfg["depths"])
    )
    import contextlib

    import keras_hub  # lazy: imports TensorFlow

    swap = _seeded_drop_paths(seed) if drop_path > 0 else contextlib.nullcontext()
    with swap:
        return keras_hub.models.SwinTransformerBackbone(
            image_shape=(image_size, image_size, 3),
            embed_dim=cfg["embed_dim"],
            depths=cfg["depths"],
            num_heads=cfg["num_heads"],
            window_size=cfg["window_size"],
            patch_size=cfg["patch_size"],
            mlp_ratio=4.0,
            qkv_bias=True,
            dropout_rate=0.0,
            attention_dropout=0.0,
            drop_path=drop_path,
            patch_norm=True,
            dtype=dtype,
        )


def stage_channels(backbone):
    """Channels of the four stage outputs, e.g. ``(96, 192, 384, 768)``."""
    return tuple(
        int(backbone.embed_dim * 2**i) for i in range(len(backbone.depths))
    )


def stage_resolutions(backbone):
    """``(H, W)`` of each stage output, e.g. ``((56, 56), ..., (7, 7))``."""
    h = backbone.image_shape[0] // backbone.patch_size
    w = backbone.image_shape[1] // backbone.patch_size
    out = []
    for _ in backbone.depths:
        out.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return tuple(out)


def _wrapper_layers():
    """Thin layers that run existing keras-hub sublayers under a new name.

    Needed because keras-hub names the blocks ``blocks_0``, ``blocks_1``...
    and the merges ``downsample`` in *every* stage; a functional model that
    calls them directly is refused ("name is used 4 times"). Each wrapper
    owns only the layers it runs, so the feature model tracks every backbone
    weight exactly once (and not the unused final ``norm``).
    """
    import keras

    class SwinStageBlocks(keras.layers.Layer):
        def __init__(self, blocks, **kwargs):
            super().__init__(**kwargs)
            self.blocks = list(blocks)

        def call(self, x, training=None):
            for block in self.blocks:
                x = block(x, training=training)
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

    class SwinPatchMerge(keras.layers.Layer):
        def __init__(self, merge, resolution, **kwargs):
            super().__init__(**kwargs)
            self.merge = merge
            self.resolution = tuple(resolution)

        def call(self, x):
            h, w = self.resolution
            return self.merge(x, H=h, W=w)

        def compute_output_shape(self, input_shape):
            h, w = self.resolution
            return (input_shape[0], ((h + 1) // 2) * ((w + 1) // 2),
                    2 * input_shape[-1])

    return SwinStageBlocks, SwinPatchMerge


def swin_feature_model(backbone, name="swin_features"):
    """A ``keras.Model`` from images to the four stage outputs.

    The model maps ``(B, H, W, 3)`` (same shape as the backbone's input) to a
    list of four channels-last tensors, ``(B, 56, 56, 96)``,
    ``(B, 28, 28, 192)``, ``(B, 14, 14, 384)``, ``(B, 7, 7, 768)`` for Swin-T
    at 224: each stage's block output before the next patch merging, without
    the backbone's final norm, i.e. timm ``features_only=True`` outputs.
    It reuses the backbone's layers, so weights are shared (loading weights
    into the backbone updates this model, and training this model trains
    the backbone). The backbone's final ``norm`` is not part of it.

    The wrapper layers reference the backbone's layers and are not
    registered for serialization, so this model cannot be rebuilt from its
    own config: don't ``model.save`` it on its own. ``HyperIQA`` saves fine
    (it rebuilds backbone and feature model from its config, and the
    ``.keras`` weights file holds each backbone variable once, under
    ``backbone``; see ``tests/test_swin_model.py``).
    """
    import keras

    if backbone.data_format != "channels_last":
        raise UserError("swin_feature_model needs a channels_last backbone")
    SwinStageBlocks, SwinPatchMerge = _wrapper_layers()
    dtype = backbone.dtype_policy
    inputs = keras.Input(shape=tuple(backbone.image_shape), name="images")
    x = backbone.patch_embedding(inputs)
    x = backbone.get_layer("pos_drop")(x)
    features = []
    resolutions = stage_resolutions(backbone)
    for i, stage in enumerate(backbone.stages):
        h, w = resolutions[i]
        x = SwinStageBlocks(stage.blocks, dtype=dtype,
                            name=f"stage{i + 1}_blocks")(x)
        # Tap here: after stage i's blocks, before its (keras-hub) trailing
        # PatchMerging, which is timm's leading merge of stage i + 1.
        features.append(
            keras.layers.Reshape(
                (h, w, stage.dim), dtype=dtype, name=f"stage{i + 1}_features"
            )(x)
        )
        if stage.downsample is not None:
            x = SwinPatchMerge(stage.downsample, (h, w), dtype=dtype,
                               name=f"stage{i + 1}_merge")(x)
    return keras.Model(inputs, features, name=name)
