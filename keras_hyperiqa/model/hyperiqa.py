"""The HyperIQA model (Su et al., CVPR 2020) as a Keras 3 model."""

import contextlib
import random

import keras
from keras import ops

from keras_hyperiqa.backend import check_backend
from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.backbones import (block_chain, build_backbone, check_backbone_name,
                                             is_swin)
from keras_hyperiqa.model.layers import (
    HyperHead,
    LDATap,
    MultiScaleAttention,
    SeededDropout,
    adaptive_avg_pool,
    target_network,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


@contextlib.contextmanager
def precision_scope(precision="fp32"):
    """Build (or load) models under ``precision``: ``fp32`` or ``bf16``.

    A layer takes Keras's global dtype policy when it is built; the scope
    restores the previous policy afterwards, so a bf16 run leaves nothing
    behind in the process. Under ``bf16`` the backbone and the LDA taps compute
    in bfloat16 (variables float32); the hyper head, the target net and the
    scores are float32 either way (``HyperIQA``).
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@keras.saving.register_keras_serializable("keras_hyperiqa")
class HyperIQA(keras.Model):
    """HyperIQA: a hyper network that generates a per-image quality regressor.

    Input: a batch of ``patch_size`` x ``patch_size`` RGB patches, channels-last,
    float values in [0, 255]; ImageNet mean/std normalisation happens inside.
    Output: one quality score per patch, shape (N,).

    The network (reference section 1): a backbone's four stages feed the local
    distortion aware taps ``lda1``..``lda4`` (concatenated: the target net's
    input vector, ``target_dims[0]`` long); the last stage (or, with
    ``multiscale``, all four pooled to 7x7 and concatenated) feeds the hyper
    head, whose generators produce the target net's weights and biases.

    Variable groups, as the original solver groups them:
    ``backbone_variables`` (backbone + LDA taps) and ``hypernet_variables``
    (head ``conv1`` + generators, and the attention fusion: the Swin fork's
    solver puts everything outside ``swin`` there); together they are exactly
    ``trainable_variables``, each variable in one group.

    Backbone layers the forward never runs are frozen (``trainable=False``):
    for Swin that is keras-hub's final ``norm`` (timm's ``features_only``
    drops it too). It stays in ``weights``, so a timm checkpoint's ``norm``
    still loads and saves, but it is in no optimizer group and gets no
    weight decay. ``frozen_backbone_layers`` names such layers.

    ``.keras`` files: the model is rebuilt from its config and each variable
    is stored once, under ``backbone`` (the feature model only re-uses the
    backbone's layers, so the saver finds its variables already written).

    Args:
        backbone: ``resnet50`` (default), ``resnet18/34/101/152``,
            ``resnet_tiny`` (a small ResNet for CPU demos), or
            ``swin_tiny/small/base``.
        lda_out: width of ``lda1``..``lda3`` (16); ``lda4`` gets the rest of
            ``target_dims[0]``.
        hyper_in: channels of the head's feature map (112).
        target_dims: the target net's layer widths (224, 112, 56, 28, 14, 1).
        head_widths: widths of the first two ``conv1`` convs; default (1024, 512)
            for ResNets and (512, 256) for Swin, as in the original code.
        multiscale: feed all four stages to the head (the Swin fork's option).
        attention: with ``multiscale``, weight the pooled stages by the Swin
            fork's ``MultiScaleAttention`` before concatenating them
            (``fusion_weights`` returns the per-image weights).
        dropout: the Swin fork's dropout rate (it uses 0.3), training only:
            on the head's feature map before the generators and between
            target-network layers 1-2, 2-3 and 3-4. 0 adds no layer.
        drop_path: Swin stochastic depth rate (the fork's 0.2), training only,
            rising linearly over the blocks as in timm.
        seed: seed of the dropout / drop-path masks (drawn from Python's
            ``random``, which ``keras.utils.set_random_seed`` seeds, when
            None; kept in the config). The masks are the same bits on torch
            and jax, so a seeded training step is too.
        patch_size: input patch size (224).
        resize: inference preprocessing carried with the model: ``(H, W)`` to
            resize each image to before cropping, or ``None``.
        short_side: alternatively, resize keeping the aspect so the short side
            is this long (SPAQ's usual 512), or ``None``.
        score_range: ``(low, high)`` of the labels the weights were trained
            on (pyiqa's KonIQ weights: ``(0, 1)``; the original's: KonIQ
            ``MOS_zscore``, ``(0, 100)``), or ``None`` when unknown.
        test_patches, test_crops: the test crops the weights' authors score
            with (``25``, ``"grid"`` or ``"random"``), or ``None``;
            ``predict`` and ``evaluate`` use them unless told otherwise.
        higher_is_better: the direction of the scores, that of the labels the
            model was trained on: ``True`` for MOS (KonIQ, LIVEC...), ``False``
            for DMOS (LIVE, CSIQ), ``None`` when unknown. ``fit`` and
            ``convert`` set it; ``evaluate`` and ``predict`` report by it.
    """

    def __init__(self, backbone="resnet50", lda_out=16, hyper_in=112,
                 target_dims=(224, 112, 56, 28, 14, 1), head_widths=None,
                 multiscale=False, patch_size=224, resize=None, short_side=None,
                 score_range=None, test_patches=None, test_crops=None,
                 attention=False, dropout=0.0, drop_path=0.0, seed=None,
                 higher_is_better=None, **kwargs):
        check_backend()
        super().__init__(**kwargs)
        self.backbone_name = check_backbone_name(backbone)
        self.lda_out = int(lda_out)
        self.hyper_in = int(hyper_in)
        self.target_dims = tuple(int(d) for d in target_dims)
        if head_widths is None:
            head_widths = (512, 256) if is_swin(backbone) else (1024, 512)
        self.head_widths = tuple(int(w) for w in head_widths)
        self.multiscale = bool(multiscale)
        self.attention = bool(attention)
        self.dropout = float(dropout)
        self.drop_path = float(drop_path)
        if seed is None:  # a model without random layers draws nothing from Python's stream
            stochastic = self.attention or self.dropout > 0 or self.drop_path > 0
            seed = random.randrange(1 << 30) if stochastic else 0
        self.seed = int(seed)
        if self.attention and not self.multiscale:
            raise UserError("attention fusion weights the four stages: it needs multiscale")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.drop_path < 1.0:
            raise UserError(f"dropout {self.dropout} and drop-path {self.drop_path} must be in [0, 1)")
        self.patch_size = int(patch_size)
        self.resize = None if resize is None else tuple(int(v) for v in resize)
        self.short_side = None if short_side is None else int(short_side)
        self.score_range = None if score_range is None else tuple(float(v) for v in score_range)
        self.test_patches = None if test_patches is None else int(test_patches)
        self.test_crops = test_crops
        self.higher_is_better = None if higher_is_better is None else bool(higher_is_better)

        self.backbone, self.backbone_features = build_backbone(
            backbone, self.patch_size, drop_path=self.drop_path, seed=self.seed)
        self.frozen_backbone_layers = _freeze_unused(self.backbone, self.backbone_features)
        # The forward runs the feature model block by block (frees each
        # block's intermediates); untracked, so saving is unchanged.
        self._backbone_chain = block_chain(self.backbone, self.backbone_features)
        # The taps and head compute in the backbone's layout (channels-first
        # for ResNets on torch), so the stage maps are never transposed.
        self.data_format = self.backbone.data_format
        shapes = [tuple(t.shape[1:]) for t in self.backbone_features.outputs]
        if self.data_format == "channels_first":
            shapes = [(h, w, c) for c, h, w in shapes]
        self.feature_size = shapes[-1][0]
        lda_units = [self.lda_out] * 3 + [self.target_dims[0] - 3 * self.lda_out]
        reduce = [self.lda_out, 2 * self.lda_out, 4 * self.lda_out, None]
        self.lda = [
            LDATap(in_channels=c, spatial=s, units=u, reduce_channels=r,
                   pool=self.feature_size, data_format=self.data_format, name=f"lda{i + 1}")
            for i, ((s, _, c), u, r) in enumerate(zip(shapes, lda_units, reduce))
        ]
        head_in = sum(s[-1] for s in shapes) if self.multiscale else shapes[-1][-1]
        self.stage_shapes = shapes
        # Seeds below ``self.seed`` + 1000 belong to the backbone's drop paths.
        self.fusion = (MultiScaleAttention([s[-1] for s in shapes], size=self.feature_size,
                                           data_format=self.data_format, seed=self.seed + 1001,
                                           name="multiscale_attention")
                       if self.attention else None)
        self.hyper_head = HyperHead(
            in_channels=head_in, widths=self.head_widths, hyper_in=self.hyper_in,
            target_dims=self.target_dims, feature_size=self.feature_size,
            data_format=self.data_format, dropout=self.dropout, seed=self.seed + 1002,
            name="hyper_head",
            # The generated target-net weights feed a 0-100 score: under a
            # bfloat16 policy their 8-bit mantissas move the scores by a few
            # percent of their spread, so the head always computes in float32.
            dtype="float32",
        )
        self.target_dropout = (SeededDropout(self.dropout, seed=self.seed + 1003, dtype="float32",
                                             name="target_dropout")
                               if self.dropout > 0 else None)
        self._mean = [255.0 * m for m in IMAGENET_MEAN]
        self._std = [255.0 * s for s in IMAGENET_STD]

    def build(self, input_shape=None):
        for tap, shape in zip(self.lda, self.stage_shapes):
            tap.build((None,) + shape)
        if self.fusion is not None:
            self.fusion.build(None)
        self.hyper_head.build(None)
        self.built = True

    # -- variable groups used by the optimizer (reference section 3) --------
    @property
    def backbone_variables(self):
        """Trainable variables of the backbone and the LDA taps (the original's ``res``)."""
        out = list(self.backbone.trainable_variables)
        for tap in self.lda:
            out.extend(tap.trainable_variables)
        return out

    @property
    def hypernet_variables(self):
        """Trainable variables of the head, the generators and the attention fusion ("hypernet")."""
        fusion = [] if self.fusion is None else list(self.fusion.trainable_variables)
        return fusion + list(self.hyper_head.trainable_variables)

    def normalize(self, x):
        # float32 whatever the policy: the backbone casts the result to its own dtype.
        x = ops.cast(x, "float32")
        # Per-channel Python numbers: a constant array would be copied from the
        # host at every call, which on a GPU waits for the device.
        channels = ops.split(x, len(self._mean), axis=-1)
        return ops.concatenate(
            [(c - m) / s for c, m, s in zip(channels, self._mean, self._std)], axis=-1)

    def _stage_maps(self, x, training=False):
        """The four stage outputs in the backbone's own layout."""
        x = self.normalize(x)
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 3, 1, 2))
        return self._backbone_chain(x, training=training)

    def stage_features(self, x, training=False):
        """The four stage outputs (channels-last) for [0, 255] input patches."""
        stages = self._stage_maps(x, training=training)
        if self.data_format == "channels_first":
            return [ops.transpose(f, (0, 2, 3, 1)) for f in stages]
        return stages

    def _head_input(self, stages, training=False):
        """The head's feature map and the attention weights (None without attention)."""
        if self.fusion is not None:
            return self.fusion(stages, training=training)
        if self.multiscale:
            s = self.feature_size
            axis = -1 if self.data_format == "channels_last" else 1
            return ops.concatenate(
                [adaptive_avg_pool(f, s, self.data_format) for f in stages], axis=axis
            ), None
        return stages[-1], None

    def call(self, x, training=False):
        stages = self._stage_maps(x, training=training)
        target_in = ops.concatenate([tap(f) for tap, f in zip(self.lda, stages)], axis=-1)
        head_in, _ = self._head_input(stages, training=training)
        params = self.hyper_head(head_in, training=training)
        return target_network(target_in, params, dropout=self.target_dropout, training=training)

    def fusion_weights(self, x):
        """The attention fusion's per-image stage weights, (N, 4), for [0, 255] patches.

        The same inference forward as ``call`` (each row sums to 1; column i
        weighs stage i + 1). Only for models built with ``attention=True``.
        """
        if self.fusion is None:
            raise UserError("this model has no attention fusion (built without attention=True)")
        _, weights = self._head_input(self._stage_maps(x, training=False), training=False)
        return weights

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=self.backbone_name, lda_out=self.lda_out, hyper_in=self.hyper_in,
            target_dims=list(self.target_dims), head_widths=list(self.head_widths),
            multiscale=self.multiscale, attention=self.attention, dropout=self.dropout,
            drop_path=self.drop_path, seed=self.seed, patch_size=self.patch_size,
            resize=None if self.resize is None else list(self.resize),
            short_side=self.short_side,
            score_range=None if self.score_range is None else list(self.score_range),
            test_patches=self.test_patches, test_crops=self.test_crops,
            higher_is_better=self.higher_is_better,
        )
        config.pop("dtype", None)
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True):
        """Load a HyperIQA keras-hub preset: a local folder or ``hf://user/name``."""
        from keras_hyperiqa.presets import load_preset

        return load_preset(preset, load_weights=load_weights)

    def save_to_preset(self, preset_dir):
        """Write this model as a keras-hub preset folder (keras-hub's own saver)."""
        from keras_hyperiqa.presets import save_preset

        return save_preset(self, preset_dir)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # The dtype policy in force when the model was saved (mixed_bfloat16
        # after a bf16 run) is no property of the model: it is built under the
        # loader's policy (float32 unless loaded inside precision_scope("bf16")).
        config = {k: v for k, v in config.items() if k != "dtype"}
        return cls(**config)

    @property
    def preprocessing(self):
        """How images are prepared for this model at inference: resize and patch size."""
        return {"resize": self.resize, "short_side": self.short_side,
                "patch_size": self.patch_size}


def _freeze_unused(backbone, features):
    """Set ``trainable=False`` on backbone layers none of whose weights ``features`` uses.

    Returns their names. A layer only partly used would leave an unused
    trainable variable in the backbone group; that is refused.
    """
    used = {id(v) for v in features.weights}
    frozen = []
    for layer in backbone.layers:
        ids = [id(v) for v in layer.weights]
        if not ids or all(i in used for i in ids):
            continue
        if any(i in used for i in ids):
            raise ValueError(f"backbone layer {layer.name!r} is only partly used by the features")
        layer.trainable = False
        frozen.append(layer.name)
    return tuple(frozen)
