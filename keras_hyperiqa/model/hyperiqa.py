"""The HyperIQA model (Su et al., CVPR 2020) as a Keras 3 model."""

import keras
from keras import ops

from keras_hyperiqa.backend import check_backend
from keras_hyperiqa.model.backbones import build_backbone, check_backbone_name, is_swin
from keras_hyperiqa.model.layers import HyperHead, LDATap, target_network

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    (head ``conv1`` + generators); together they are exactly
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
        patch_size: input patch size (224).
        resize: inference preprocessing carried with the model: ``(H, W)`` to
            resize each image to before cropping, or ``None``.
        short_side: alternatively, resize keeping the aspect so the short side
            is this long (SPAQ's usual 512), or ``None``.
    """

    def __init__(self, backbone="resnet50", lda_out=16, hyper_in=112,
                 target_dims=(224, 112, 56, 28, 14, 1), head_widths=None,
                 multiscale=False, patch_size=224, resize=None, short_side=None,
                 **kwargs):
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
        self.patch_size = int(patch_size)
        self.resize = None if resize is None else tuple(int(v) for v in resize)
        self.short_side = None if short_side is None else int(short_side)

        self.backbone, self.backbone_features = build_backbone(backbone, self.patch_size)
        self.frozen_backbone_layers = _freeze_unused(self.backbone, self.backbone_features)
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
        self.hyper_head = HyperHead(
            in_channels=head_in, widths=self.head_widths, hyper_in=self.hyper_in,
            target_dims=self.target_dims, feature_size=self.feature_size,
            data_format=self.data_format, name="hyper_head",
        )
        self._mean = [255.0 * m for m in IMAGENET_MEAN]
        self._std = [255.0 * s for s in IMAGENET_STD]

    def build(self, input_shape=None):
        for tap, shape in zip(self.lda, self.stage_shapes):
            tap.build((None,) + shape)
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
        """Trainable variables of the head and the generators ("hypernet")."""
        return list(self.hyper_head.trainable_variables)

    def normalize(self, x):
        x = ops.cast(x, self.compute_dtype)
        return (x - ops.array(self._mean, dtype=x.dtype)) / ops.array(self._std, dtype=x.dtype)

    def _stage_maps(self, x, training=False):
        """The four stage outputs in the backbone's own layout."""
        x = self.normalize(x)
        if self.data_format == "channels_first":
            x = ops.transpose(x, (0, 3, 1, 2))
        return self.backbone_features(x, training=training)

    def stage_features(self, x, training=False):
        """The four stage outputs (channels-last) for [0, 255] input patches."""
        stages = self._stage_maps(x, training=training)
        if self.data_format == "channels_first":
            return [ops.transpose(f, (0, 2, 3, 1)) for f in stages]
        return stages

    def call(self, x, training=False):
        stages = self._stage_maps(x, training=training)
        target_in = ops.concatenate([tap(f) for tap, f in zip(self.lda, stages)], axis=-1)
        if self.multiscale:
            s = self.feature_size
            axis = -1 if self.data_format == "channels_last" else 1
            head_in = ops.concatenate(
                [_avg_pool_to(f, s, self.data_format) for f in stages], axis=axis
            )
        else:
            head_in = stages[-1]
        params = self.hyper_head(head_in)
        return target_network(target_in, params)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=self.backbone_name, lda_out=self.lda_out, hyper_in=self.hyper_in,
            target_dims=list(self.target_dims), head_widths=list(self.head_widths),
            multiscale=self.multiscale, patch_size=self.patch_size,
            resize=None if self.resize is None else list(self.resize),
            short_side=self.short_side,
        )
        return config

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


def _avg_pool_to(x, size, data_format="channels_last"):
    """Adaptive average pooling to ``size`` x ``size`` when the map divides evenly."""
    h = x.shape[1] if data_format == "channels_last" else x.shape[2]
    if h == size:
        return x
    k = h // size
    return ops.average_pool(x, k, k, "valid", data_format=data_format)
