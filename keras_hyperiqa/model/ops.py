"""Fused ops Keras lacks, one implementation per backend plus a ``keras.ops`` fallback.

Layers call these ops and never branch on the backend; this module is the one
place (with the training step) that knows which backend runs.

``batch_norm``: Keras's ``BatchNormalization`` trains through automatic
differentiation of its elementwise formula (moments, subtract, multiply,
add), about a dozen full passes over each activation per step on torch, and
has no fused training-mode op to call instead.

* torch: ``torch.nn.functional.batch_norm``, training and inference, i.e.
  torch's own fused kernel (oneDNN/native on the CPU, cuDNN on a GPU). In
  training the kernel computes the batch statistics itself and autograd runs
  through the kernel's own backward, which carries the statistics' gradient.
  Handing the kernel precomputed, detached statistics instead would drop that
  gradient (``tests/test_model_batch_norm.py`` checks it does not).
  Channels-last input is passed as a channels-first view (``movedim``, no
  copy), which torch's kernels treat as the channels-last memory format.
  bfloat16/float16 input runs with float32 parameters and statistics, as the
  kernels support, so no cast copies of the activations.
* jax: the closed-form gradient (Ioffe & Szegedy 2015) as a
  ``keras.ops.custom_gradient`` over ``ops.moments`` statistics: four passes
  in the backward where XLA's autodiff of the formula needs more.
* others: Keras's own formula (``ops.moments`` + ``ops.batch_normalization``),
  differentiated by the backend.

Every implementation computes in at least float32 and returns the output in
the input's dtype.
"""

import keras
from keras import ops


def batch_norm(x, gamma, beta, moving_mean, moving_variance, axis=-1, epsilon=1e-3,
               training=False):
    """Batch normalisation over every axis but ``axis``.

    Args:
        x: the input, any rank >= 2.
        gamma, beta: per-channel scale and offset, or ``None`` (1 and 0).
        moving_mean, moving_variance: per-channel statistics used in
            inference (ignored in training).
        axis: the channel axis.
        epsilon: added to the variance.
        training: normalise with the batch's own statistics (and
            differentiate through them) instead of the moving ones.

    Returns:
        ``(outputs, mean, variance)``: the output in ``x``'s dtype and the
        per-channel statistics it was normalised with (float32 or wider),
        shape ``(channels,)``: in training the batch mean and biased batch
        variance (what Keras's layer feeds its moving averages; no gradient
        flows through them), otherwise ``moving_mean``/``moving_variance``.
    """
    impl = _IMPLEMENTATIONS.get(keras.backend.backend(), _batch_norm_keras)
    return impl(x, gamma, beta, moving_mean, moving_variance, axis, epsilon, bool(training))


def _compute_dtype(x):
    return keras.backend.result_type(x.dtype, "float32")


def _stat_shape(ndim, axis, channels):
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def _batch_norm_keras(x, gamma, beta, moving_mean, moving_variance, axis, epsilon, training):
    """Keras's formula in ``keras.ops`` (what ``keras.layers.BatchNormalization`` computes)."""
    x = ops.convert_to_tensor(x)
    dtype = _compute_dtype(x)
    xc = ops.cast(x, dtype)
    axis = axis % len(x.shape)
    gamma = None if gamma is None else ops.cast(gamma, dtype)
    beta = None if beta is None else ops.cast(beta, dtype)
    if training:
        axes = [i for i in range(len(x.shape)) if i != axis]
        mean, variance = ops.moments(xc, axes)
    else:
        mean, variance = ops.cast(moving_mean, dtype), ops.cast(moving_variance, dtype)
    y = ops.batch_normalization(xc, mean, variance, axis, offset=beta, scale=gamma,
                                epsilon=epsilon)
    if training:
        mean, variance = ops.stop_gradient(mean), ops.stop_gradient(variance)
    return ops.cast(y, x.dtype), mean, variance


def _batch_norm_closed_form(x, gamma, beta, moving_mean, moving_variance, axis, epsilon, training):
    """Training with the closed-form backward; inference as Keras's layer.

    Forward ``y = x * scale + (beta - mean * scale)``, ``scale = gamma *
    rstd``; backward, with ``xhat = (x - mean) * rstd`` and ``n`` values per
    channel:

        dgamma = sum(g * xhat),   dbeta = sum(g)
        dx = gamma * rstd / n * (n * g - dbeta - xhat * dgamma)

    in four full passes with per-channel coefficients (``dx = a * g - (k * x
    - c)``). The batch statistics are taken outside the differentiated
    function (their gradient is part of the closed form).
    """
    if not training:
        return _batch_norm_keras(x, gamma, beta, moving_mean, moving_variance, axis,
                                 epsilon, training)
    x = ops.convert_to_tensor(x)
    dtype = _compute_dtype(x)
    xc = ops.cast(x, dtype)
    ndim = len(x.shape)
    axis = axis % ndim
    channels = int(x.shape[axis])
    axes = tuple(i for i in range(ndim) if i != axis)
    stat_shape = _stat_shape(ndim, axis, channels)
    gamma = ops.ones((channels,), dtype) if gamma is None else ops.cast(gamma, dtype)
    beta = ops.zeros((channels,), dtype) if beta is None else ops.cast(beta, dtype)
    # Keras's layer's statistics (ops.moments), clamped against round-off.
    mean, variance = ops.moments(ops.stop_gradient(xc), axes, keepdims=True)
    variance = ops.maximum(variance, 0.0)
    n = 1
    for a in axes:
        n *= int(x.shape[a])

    @ops.custom_gradient
    def normalize(x, gamma, beta):
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
            return dx, ops.reshape(sum_gxhat, (channels,)), ops.reshape(sum_g, (channels,))

        return y, grad

    y = normalize(xc, gamma, beta)
    return ops.cast(y, x.dtype), ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,))


def _batch_norm_torch(x, gamma, beta, moving_mean, moving_variance, axis, epsilon, training):
    """torch's fused kernel; the batch statistics come from the kernel itself."""
    import torch
    import torch.nn.functional as F

    x = ops.convert_to_tensor(x)
    axis = axis % x.ndim
    channels = x.shape[axis]
    n = x.numel() // max(channels, 1)
    if training and n < 2:  # torch refuses batch statistics of one value
        return _batch_norm_keras(x, gamma, beta, moving_mean, moving_variance, axis,
                                 epsilon, training)
    dtype = torch.promote_types(x.dtype, torch.float32)

    def param(v):
        return None if v is None else ops.convert_to_tensor(v).to(dtype)

    gamma, beta = param(gamma), param(beta)
    xt = x if axis == 1 else x.movedim(axis, 1)
    if training:
        # With momentum 1 the kernel's running buffers receive exactly this
        # batch's mean and unbiased variance (no gradient flows into them).
        mean = torch.zeros(channels, dtype=dtype, device=x.device)
        variance = torch.zeros(channels, dtype=dtype, device=x.device)
        y = F.batch_norm(xt, mean, variance, gamma, beta, training=True, momentum=1.0,
                         eps=epsilon)
        # biased, as Keras's moving average uses; not in place: the kernel
        # saved the buffer for its backward
        variance = variance * ((n - 1) / n)
    else:
        mean, variance = param(moving_mean), param(moving_variance)
        y = F.batch_norm(xt, mean, variance, gamma, beta, training=False, eps=epsilon)
    if axis != 1:
        y = y.movedim(1, axis)
    return y, mean, variance


_IMPLEMENTATIONS = {
    "torch": _batch_norm_torch,
    "jax": _batch_norm_closed_form,
}
