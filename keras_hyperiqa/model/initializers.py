"""PyTorch's initialisations, stated with Keras initializers.

HyperIQA's numbers come from torch, and two of its defaults differ from Keras:
torch's ``kaiming_normal_`` is an *untruncated* normal (Keras's ``HeNormal`` is
truncated), and torch's default Conv/Linear init is ``kaiming_uniform_(a=sqrt(5))``
for weights and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for biases (Keras uses
Glorot and zeros).
"""

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
