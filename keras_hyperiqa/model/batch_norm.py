"""Batch normalisation through the fused op of :mod:`keras_hyperiqa.model.ops`.

Keras's ``BatchNormalization`` trains through automatic differentiation of
its elementwise formula, several times slower than a fused batch norm on
torch, and ResNet-50 has 53 of them in every step. This subclass keeps the
layer's variables, config, moving-statistics update (biased batch variance,
``momentum`` as in Keras) and weights, and normalises through
``ops.batch_norm`` in training and inference, so weights, checkpoints and
``.keras`` files are interchangeable with Keras's layer.
"""

import keras
from keras import ops

from keras_hyperiqa import compat
from keras_hyperiqa.model import ops as fused


@keras.saving.register_keras_serializable(package="keras_hyperiqa")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by the fused ``batch_norm`` op.

    Masks and renorm fall back to Keras's own ``call``.
    """

    def call(self, inputs, training=None, mask=None):
        if mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        training = bool(training and self.trainable)
        outputs, mean, variance = fused.batch_norm(
            inputs, self.gamma if self.scale else None, self.beta if self.center else None,
            self.moving_mean, self.moving_variance, axis=self.axis, epsilon=self.epsilon,
            training=training)
        if training:
            momentum = self.momentum
            dtype = mean.dtype
            self.moving_mean.assign(
                ops.cast(self.moving_mean, dtype) * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                ops.cast(self.moving_variance, dtype) * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)


def use_fused_batch_norm(model):
    """Switch every ``keras.layers.BatchNormalization`` inside ``model`` to :class:`BatchNormalization`.

    keras-hub builds its ResNets with Keras's own layer; the subclass adds no
    state, so switching the class of the built layers keeps every variable,
    name and weight path (conversion tables and saved files are unchanged).
    Returns the number of layers switched.
    """
    switched = 0
    stack, seen = list(getattr(model, "layers", [])), set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if type(layer) is keras.layers.BatchNormalization:
            compat.switch_layer_class(layer, BatchNormalization)
            switched += 1
        stack.extend(getattr(layer, "layers", []))
    return switched
