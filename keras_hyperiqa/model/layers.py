"""HyperIQA's own layers: LDA taps, the hyper head, and the target network.

Names follow the reference network (``lda1``..``lda4``, ``conv1``, ``fc1w``..
``fc5b``) so a reader can map every variable to the original checkpoint. All
tensors are channels-last; where the original flattens or reshapes a
channels-first tensor, we transpose to channels-first first, so the original's
weights load without permutation.
"""

import keras
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
                 data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format
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

    def call(self, x):
        for conv in self.conv1:
            x = conv(x)
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
        }


def target_network(x, params):
    """The target net: ``x <- W[b] @ x[b] + bias[b]`` per sample, sigmoid between layers.

    No variables of its own; gradients flow into the generated ``params``.
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
    return ops.squeeze(x, axis=-1)
