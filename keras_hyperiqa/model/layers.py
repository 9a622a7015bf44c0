"""HyperIQA's own layers: LDA taps, the hyper head, and the target network.

Names follow the reference network (``lda1``..``lda4``, ``conv1``, ``fc1w``..
``fc5b``) so a reader can map every variable to the original checkpoint.
Tensors are in each layer's ``data_format``: channels-first for a ResNet
backbone on torch, channels-last otherwise
(:func:`keras_hyperiqa.model.backbones.compute_data_format`). Where the
original flattens or reshapes a channels-first tensor, a channels-last one is
transposed to channels-first first, so the original's weights load without
permutation.
"""

import random

import keras
import numpy as np
from keras import layers, ops

from keras_hyperiqa.model.initializers import (
    kaiming_normal,
    torch_default_bias,
    torch_default_kernel,
)


def channels_first_flatten(x, data_format="channels_last"):
    """Flatten in the original's (C, H, W) order: index c*H*W + h*W + w."""
    if data_format == "channels_last":
        x = ops.transpose(x, (0, 3, 1, 2))
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _spatial_axes(data_format):
    return (1, 2) if data_format == "channels_last" else (2, 3)


def _pool_matrix(size_in, size_out):
    """(out, in) averaging weights of adaptive average pooling along one axis.

    Bin ``i`` covers ``floor(i * in / out)`` to ``ceil((i + 1) * in / out)``
    (exclusive), torch's ``adaptive_avg_pool2d`` bins: equal-width windows
    when ``in`` divides by ``out``, overlapping or uneven ones otherwise.
    """
    m = np.zeros((size_out, size_in), dtype="float32")
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x, size, data_format="channels_last"):
    """Adaptive average pooling of a 4-D map to ``size`` x ``size``, any input size.

    Written as two small matrix products over the spatial axes, so uneven
    sizes get torch's bins rather than a silently truncated window.
    """
    h_axis, w_axis = _spatial_axes(data_format)
    h, w = x.shape[h_axis], x.shape[w_axis]
    if h == size and w == size:
        return x
    ph = ops.convert_to_tensor(_pool_matrix(h, size), dtype=x.dtype)
    pw = ops.convert_to_tensor(_pool_matrix(w, size), dtype=x.dtype)
    if data_format == "channels_last":
        return ops.einsum("ih,jw,bhwc->bijc", ph, pw, x)
    return ops.einsum("ih,jw,bchw->bcij", ph, pw, x)


def _int32(value):
    """A 32-bit pattern as a signed int32 constant (multipliers above 2**31)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _logical_shift(h, bits):
    """``h >>> bits`` on int32 (the arithmetic shift with the sign bits masked off)."""
    return ops.bitwise_and(ops.right_shift(h, bits), (1 << (32 - bits)) - 1)


def _mix(h):
    """murmur3's 32-bit finaliser: every input bit flips about half the output bits."""
    h = ops.bitwise_xor(h, _logical_shift(h, 16))
    h = h * ops.convert_to_tensor(_int32(0x85EBCA6B), dtype="int32")
    h = ops.bitwise_xor(h, _logical_shift(h, 13))
    h = h * ops.convert_to_tensor(_int32(0xC2B2AE35), dtype="int32")
    return ops.bitwise_xor(h, _logical_shift(h, 16))


def counter_uniform(shape, seed, counter):
    """Uniform [0, 1) float32 draws that are the same bits on every backend.

    A counter-based generator (element index, layer seed and draw counter
    hashed with murmur3's finaliser in wrapping int32 arithmetic), so a seeded
    training step draws the same dropout masks on torch and jax, where each
    backend's own generator would draw different ones.
    """
    n = 1
    for d in shape:
        n *= int(d)
    key = _mix(ops.cast(counter, "int32") * _int32(0x9E3779B1) + _int32(seed))
    h = _mix(ops.arange(n, dtype="int32") * _int32(0x27D4EB2F) + key)
    u = ops.cast(_logical_shift(h, 8), "float32") * (1.0 / (1 << 24))
    return ops.reshape(u, shape)


class _CountedDraws(layers.Layer):
    """A random layer whose draws come from :func:`counter_uniform`.

    ``seed`` defaults to one drawn from Python's ``random`` (which
    ``keras.utils.set_random_seed`` seeds), so a seeded model gets the same
    seeds on every backend; it is stored in the config. ``draws`` counts the
    training calls (saved with the model, so a resumed run goes on with
    fresh masks).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = int(random.randrange(1 << 31) if seed is None else seed)
        self.draws = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                     trainable=False, name="draws")

    def _keep_mask(self, shape, dtype):
        u = counter_uniform(shape, self.seed, self.draws)
        self.draws.assign(self.draws + 1)
        return ops.cast(u >= self.rate, dtype) / (1.0 - self.rate)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable("keras_hyperiqa")
class SeededDropout(_CountedDraws):
    """Dropout (inverted, as ``keras.layers.Dropout``) with backend-independent masks."""

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        return x * self._keep_mask(tuple(x.shape), x.dtype)


@keras.saving.register_keras_serializable("keras_hyperiqa")
class SeededDropPath(_CountedDraws):
    """Stochastic depth (timm's ``DropPath``: one keep/drop per sample, kept
    paths scaled by ``1 / (1 - rate)``) with backend-independent draws."""

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        shape = (x.shape[0],) + (1,) * (len(x.shape) - 1)
        return x * self._keep_mask(shape, x.dtype)


def _map_shape(size, channels, data_format):
    if data_format == "channels_last":
        return (None, size, size, channels)
    return (None, channels, size, size)


@keras.saving.register_keras_serializable("keras_hyperiqa")
class LDATap(layers.Layer):
    """Local distortion aware tap: [1x1 reduce conv] -> avg-pool -> flatten -> Linear.

    ``lda1``..``lda3`` reduce the stage's channels with a bias-free 1x1 conv
    (``reduce_channels``); ``lda4`` pools the last stage directly
    (``reduce_channels=None``). Pooling is ``pool`` x ``pool`` with stride ``pool``
    (7 in the reference: 56x56 -> 8x8, ..., 7x7 -> 1x1). ``data_format`` is
    the layout of the stage map it taps (``HyperIQA`` matches its backbone's;
    the weights are the same in both layouts).
    """

    def __init__(self, in_channels, spatial, units, reduce_channels=None, pool=7,
                 data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format
        self.in_channels = int(in_channels)
        self.spatial = int(spatial)
        self.units = int(units)
        self.reduce_channels = None if reduce_channels is None else int(reduce_channels)
        self.pool_size = int(pool)
        channels = self.in_channels
        if self.reduce_channels is not None:
            self.reduce = layers.Conv2D(
                self.reduce_channels, 1, use_bias=False, data_format=data_format,
                kernel_initializer=kaiming_normal(), name="reduce", dtype=self.dtype_policy,
            )
            channels = self.reduce_channels
        else:
            self.reduce = None
        self.pool = layers.AveragePooling2D(self.pool_size, self.pool_size, data_format=data_format,
                                            name="pool", dtype=self.dtype_policy)
        pooled = self.spatial // self.pool_size
        fan_in = channels * pooled * pooled
        self.fc = layers.Dense(
            self.units, kernel_initializer=kaiming_normal(),
            bias_initializer=torch_default_bias(fan_in), name="fc", dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        channels = self.in_channels
        if self.reduce is not None:
            self.reduce.build(_map_shape(self.spatial, channels, self.data_format))
            channels = self.reduce_channels
        pooled = self.spatial // self.pool_size
        self.fc.build((None, channels * pooled * pooled))

    def call(self, x):
        if self.reduce is not None:
            x = self.reduce(x)
        return self.fc(channels_first_flatten(self.pool(x), self.data_format))

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels, "spatial": self.spatial,
            "units": self.units, "reduce_channels": self.reduce_channels,
            "pool": self.pool_size, "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable("keras_hyperiqa")
class HyperHead(layers.Layer):
    """The hyper network: ``conv1`` stack, then the ten weight/bias generators.

    Input: the head's feature map (B, S, S, C). ``conv1`` is three 1x1 convs with
    ReLU ending in ``hyper_in`` channels; ``fc1w``..``fc4w`` are 3x3 convs on that
    map, ``fc1b``..``fc4b``, ``fc5w``, ``fc5b`` Dense layers on its global mean.
    Returns the target network's per-sample parameters: a list of
    ``(weight (B, out, in), bias (B, out))``, one pair per target layer.
    """

    def __init__(self, in_channels, widths=(1024, 512), hyper_in=112,
                 target_dims=(224, 112, 56, 28, 14, 1), feature_size=7,
                 data_format="channels_last", dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format
        self.dropout_rate = float(dropout)
        self.seed = seed
        # The Swin fork's Dropout on the feature map the generators read
        # (training only); no layer at rate 0, so older models are unchanged.
        self.dropout = (SeededDropout(self.dropout_rate, seed=seed, name=f"{self.name}_dropout")
                        if self.dropout_rate > 0 else None)
        self.in_channels = int(in_channels)
        self.widths = tuple(int(w) for w in widths)
        self.hyper_in = int(hyper_in)
        self.target_dims = tuple(int(d) for d in target_dims)
        self.feature_size = int(feature_size)
        cells = self.feature_size * self.feature_size

        self.conv1 = []
        fan_in = self.in_channels
        for i, width in enumerate(self.widths + (self.hyper_in,)):
            self.conv1.append(layers.Conv2D(
                width, 1, activation="relu", data_format=data_format,
                kernel_initializer=torch_default_kernel(),
                bias_initializer=torch_default_bias(fan_in), name=f"conv1_{2 * i}",
                dtype=self.dtype_policy,
            ))
            fan_in = width

        # Layers 1..n-1 get their weights from 3x3 convs (out*in / S^2 channels,
        # reshaped), the last one from a Dense on the pooled feature.
        self.weight_generators, self.bias_generators = [], []
        dims = self.target_dims
        for k in range(1, len(dims)):
            fan_out, fan_in_t = dims[k], dims[k - 1]
            if k < len(dims) - 1:
                if (fan_out * fan_in_t) % cells:
                    raise ValueError(
                        f"target layer {k} ({fan_in_t}->{fan_out}) does not fit a "
                        f"{self.feature_size}x{self.feature_size} generator map"
                    )
                gen = layers.Conv2D(
                    fan_out * fan_in_t // cells, 3, padding="same", data_format=data_format,
                    kernel_initializer=kaiming_normal(),
                    bias_initializer=torch_default_bias(self.hyper_in * 9),
                    name=f"fc{k}w", dtype=self.dtype_policy,
                )
            else:
                gen = layers.Dense(
                    fan_out * fan_in_t, kernel_initializer=kaiming_normal(),
                    bias_initializer=torch_default_bias(self.hyper_in), name=f"fc{k}w",
                    dtype=self.dtype_policy,
                )
            self.weight_generators.append(gen)
            self.bias_generators.append(layers.Dense(
                fan_out, kernel_initializer=kaiming_normal(),
                bias_initializer=torch_default_bias(self.hyper_in), name=f"fc{k}b",
                dtype=self.dtype_policy,
            ))

    def build(self, input_shape):
        s = self.feature_size
        shape = _map_shape(s, self.in_channels, self.data_format)
        for conv in self.conv1:
            conv.build(shape)
            shape = _map_shape(s, conv.filters, self.data_format)
        for gen in self.weight_generators:
            gen.build(shape if isinstance(gen, layers.Conv2D) else (None, self.hyper_in))
        for gen in self.bias_generators:
            gen.build((None, self.hyper_in))

    def call(self, x, training=None):
        for conv in self.conv1:
            x = conv(x)
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        pooled = ops.mean(x, axis=_spatial_axes(self.data_format))
        params = []
        dims = self.target_dims
        for k, (wgen, bgen) in enumerate(zip(self.weight_generators, self.bias_generators), 1):
            if isinstance(wgen, layers.Conv2D):
                w = wgen(x)
                if self.data_format == "channels_last":  # the original's view is channels-first
                    w = ops.transpose(w, (0, 3, 1, 2))
            else:
                w = wgen(pooled)
            w = ops.reshape(w, (-1, dims[k], dims[k - 1]))
            params.append((w, bgen(pooled)))
        return params

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels, "widths": list(self.widths),
            "hyper_in": self.hyper_in, "target_dims": list(self.target_dims),
            "feature_size": self.feature_size, "data_format": self.data_format,
            "dropout": self.dropout_rate, "seed": self.seed,
        }


def target_network(x, params, dropout=None, training=None):
    """The target net: ``x <- W[b] @ x[b] + bias[b]`` per sample, sigmoid between layers.

    No variables of its own; gradients flow into the generated ``params``.
    ``dropout`` (a ``Dropout`` layer or None): the Swin fork's dropout after
    every sigmoid but the last (between layers 1-2, 2-3 and 3-4 of five).
    Returns the last layer's output with its singleton axis dropped: (B,).

    Always float32, whatever the inputs' dtype: a 0-100 score in bfloat16
    moves in steps of 0.25-0.5, which the L1 loss and the correlations would
    see as ties.
    """
    x = ops.cast(x, "float32")
    last = len(params) - 1
    for k, (w, b) in enumerate(params):
        w, b = ops.cast(w, "float32"), ops.cast(b, "float32")
        x = ops.einsum("boi,bi->bo", w, x) + b
        if k < last:
            x = ops.sigmoid(x)
            if dropout is not None and k < last - 1:
                x = dropout(x, training=training)
    return ops.squeeze(x, axis=-1)


@keras.saving.register_keras_serializable("keras_hyperiqa")
class MultiScaleAttention(layers.Layer):
    """The Swin fork's attention-based multi-scale fusion (``MultiScaleAttention``).

    The stage maps are adaptive-average-pooled to ``size`` x ``size``; the
    last stage, globally pooled, feeds ``fc1`` (ReLU) -> Dropout(0.5) ->
    ``fc2`` -> softmax: one weight per stage and image. Each pooled map is
    scaled by its weight and the maps are concatenated on the channel axis.
    ``call`` returns ``(fused map, weights (B, stages))``.
    """

    def __init__(self, in_channels, size=7, hidden=256, dropout=0.5,
                 data_format="channels_last", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.size = int(size)
        self.hidden = int(hidden)
        self.dropout_rate = float(dropout)
        self.data_format = data_format
        # The fork's init: N(0, 0.01) weights, zero biases (near-uniform weights at start).
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.fc1 = layers.Dense(self.hidden, activation="relu", kernel_initializer=init,
                                bias_initializer="zeros", name="fc1")
        self.seed = seed
        self.dropout = SeededDropout(self.dropout_rate, seed=seed, name=f"{self.name}_dropout")
        self.fc2 = layers.Dense(len(self.in_channels), kernel_initializer=init,
                                bias_initializer="zeros", name="fc2")

    def build(self, input_shape=None):
        self.fc1.build((None, self.in_channels[-1]))
        self.fc2.build((None, self.hidden))

    def call(self, stages, training=None):
        axes = _spatial_axes(self.data_format)
        pooled = [adaptive_avg_pool(f, self.size, self.data_format) for f in stages]
        g = ops.mean(stages[-1], axis=axes)
        weights = ops.softmax(self.fc2(self.dropout(self.fc1(g), training=training)), axis=-1)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        scaled = [p * ops.reshape(weights[:, i], (-1, 1, 1, 1)) for i, p in enumerate(pooled)]
        return ops.concatenate(scaled, axis=channel_axis), weights

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": list(self.in_channels), "size": self.size, "hidden": self.hidden,
            "dropout": self.dropout_rate, "data_format": self.data_format, "seed": self.seed,
        }
