"""Batch normalisation with a hand-written training-mode gradient.

Keras's ``BatchNormalization`` trains through automatic differentiation of its
elementwise formula (moments as E[x^2] - E[x]^2, then subtract, multiply,
add): on the torch backend that is about a dozen full passes over each
activation per step, 3-4x the time of a fused batch norm, and a ResNet-50
step spends a third of its time there. This subclass keeps the layer's
variables, config, moving-statistics update and inference path, and replaces
only the training-mode normalisation by one ``keras.ops.custom_gradient``
function whose backward pass is the closed form (Ioffe & Szegedy 2015):

    xhat = (x - mean) * rstd,       y = gamma * xhat + beta
    dgamma = sum(g * xhat),         dbeta = sum(g)
    dx = gamma * rstd / n * (n * g - dbeta - xhat * dgamma)

computed in four full passes with per-channel coefficients
(``dx = a * g - (k * x - c)``). Batch statistics (``ops.moments``, as
Keras's layer computes them) are taken outside the differentiated function:
the closed form already carries their gradient. Same maths as Keras's layer, so
weights and checkpoints are interchangeable; ``keras.ops`` only.
"""

import keras
from keras import ops


def _batch_norm_train(x, gamma, beta, mean, variance, axes, epsilon):
    """``gamma * (x - mean) / sqrt(variance + epsilon) + beta`` with the closed-form gradient.

    ``mean`` and ``variance`` are the (gradient-stopped) batch statistics over
    ``axes``, kept dimensions; ``gamma`` and ``beta`` are per channel.
    """
    stat_shape = tuple(mean.shape)
    channels = tuple(gamma.shape)
    n = 1
    for a in axes:
        n *= int(x.shape[a])

    @ops.custom_gradient
    def normalize(x, gamma, beta, mean, variance):
        rstd = ops.rsqrt(variance + epsilon)
        scale = ops.reshape(gamma, stat_shape) * rstd
        y = x * scale + (ops.reshape(beta, stat_shape) - mean * scale)

        def grad(*args, upstream=None):
            if upstream is None:  # jax and tensorflow pass it positionally
                (upstream,) = args
            g = ops.cast(upstream, x.dtype)
            sum_g = ops.sum(g, axis=axes, keepdims=True)
            sum_gx = ops.sum(g * x, axis=axes, keepdims=True)
            sum_gxhat = rstd * (sum_gx - mean * sum_g)
            k = scale * rstd * sum_gxhat / n
            c = scale * (mean * rstd * sum_gxhat - sum_g) / n
            dx = g * scale - (x * k - c)
            return (dx, ops.reshape(sum_gxhat, channels), ops.reshape(sum_g, channels),
                    ops.zeros_like(mean), ops.zeros_like(variance))

        return y, grad

    return normalize(x, gamma, beta, mean, variance)


@keras.saving.register_keras_serializable(package="keras_hyperiqa")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step uses a closed-form gradient.

    Identical variables, config, moving-average update (biased batch
    variance, ``momentum`` as in Keras) and inference. Masks, renorm and
    layers without ``scale``/``center`` fall back to Keras's own ``call``.
    """

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or mask is not None or self.renorm
                or not (self.scale and self.center)):
            return super().call(inputs, training=training, mask=mask)
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        axis = self.axis % len(x.shape)
        axes = tuple(i for i in range(len(x.shape)) if i != axis)
        # The batch statistics Keras's layer uses (ops.moments: E[x^2] - E[x]^2
        # on torch, jnp.var on jax), clamped against round-off.
        mean, variance = ops.moments(ops.stop_gradient(x), axes, keepdims=True)
        # relu = max(v, 0) without a Python scalar, which a keras op on torch
        # turns into a host-to-device copy that waits for the device on CUDA
        variance = ops.relu(variance)

        momentum = self.momentum
        moving_mean = ops.cast(self.moving_mean, compute_dtype)
        moving_variance = ops.cast(self.moving_variance, compute_dtype)
        channels = tuple(self.moving_mean.shape)
        self.moving_mean.assign(
            moving_mean * momentum + ops.reshape(mean, channels) * (1.0 - momentum))
        self.moving_variance.assign(
            moving_variance * momentum + ops.reshape(variance, channels) * (1.0 - momentum))

        outputs = _batch_norm_train(
            x, ops.cast(self.gamma, compute_dtype), ops.cast(self.beta, compute_dtype),
            mean, variance, axes, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


def use_closed_form_batch_norm(model):
    """Switch every ``keras.layers.BatchNormalization`` inside ``model`` to :class:`BatchNormalization`.

    keras-hub builds its ResNets with Keras's own layer; the subclass adds no
    state, so switching the class of the built layers keeps every variable,
    name and weight path (conversion tables and saved files are unchanged).
    Returns the number of layers switched.
    """
    switched = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = BatchNormalization
            switched += 1
    return switched
