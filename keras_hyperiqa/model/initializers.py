"""PyTorch's initialisations, stated with Keras initializers.

HyperIQA's numbers come from torch, and two of its defaults differ from Keras:
torch's ``kaiming_normal_`` is an *untruncated* normal (Keras's ``HeNormal`` is
truncated), and torch's default Conv/Linear init is ``kaiming_uniform_(a=sqrt(5))``
for weights and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases (Keras uses
Glorot and zeros).
"""

import contextlib
import math

import keras


def kaiming_normal():
    """torch.nn.init.kaiming_normal_ (fan_in, ReLU gain): N(0, 2 / fan_in)."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


def torch_default_kernel():
    """torch's default Conv/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def torch_default_bias(fan_in):
    """torch's default Conv/Linear bias init, given the layer's fan-in."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


# Keras's random initializers (the public classes; their subclasses such as
# GlorotUniform and HeNormal inherit ``__call__`` from VarianceScaling).
_RANDOM_INITIALIZERS = ("RandomNormal", "TruncatedNormal", "RandomUniform", "VarianceScaling", "Orthogonal")


@contextlib.contextmanager
def zeros_instead_of_random_init():
    """Within: Keras's random initializers return zeros (restored on exit).

    For loading a saved model only: building it draws random initial values
    for every variable (27M numbers for a ResNet-50 HyperIQA, seconds on a
    CPU) that the saved weights overwrite at once. Zeros cost an allocation.
    Not thread-safe: nothing else should build variables meanwhile.
    """

    def zeros(self, shape, dtype=None):
        return keras.ops.zeros(shape, dtype=dtype)

    classes = [getattr(keras.initializers, name) for name in _RANDOM_INITIALIZERS]
    saved = [(cls, cls.__dict__["__call__"]) for cls in classes if "__call__" in cls.__dict__]
    for cls, _ in saved:
        cls.__call__ = zeros
    try:
        yield
    finally:
        for cls, call in saved:
            cls.__call__ = call
