"""How far two float32 runs of the same computation may differ.

Two backends (torch and jax), two devices, or a data-parallel and a
single-device run compute the same maths with sums in another order, other
blockings and other fused kernels, so their float32 results differ by
rounding alone. These functions give that difference a bound derived from
float32 error growth, so a comparison fails on a real bug (a wrong flatten
order, a skipped batch norm: changes of 1e-3 and more relative to the output)
and not on the order in which some CPU adds numbers.

The derivation:

* float32 rounds each operation with relative error at most ``U = 2**-24``.
* A sum of ``n`` products ``x_i w_i`` computed in any order is off by at most
  ``n U sum|x_i w_i|`` (the worst case, Higham, *Accuracy and Stability of
  Numerical Algorithms*, 3.1) and, with rounding errors that are independent
  and of mean zero, by at most ``lam sqrt(n) U sum|x_i w_i|`` except with
  probability ``2 exp(-lam**2 / 2)`` (Higham and Mary, *A new approach to
  probabilistic rounding error analysis*, SISC 2019). ``lam = 4``: below 7e-4.
* Two float32 implementations are two independent roundings of the same
  exact value: their difference adds in quadrature, ``sqrt(2 n)`` (``sqrt(n)``
  against a float64 reference).
* A network is a chain of such sums; batch norm and the normalised
  activations keep each layer's gain near one, so the errors of the layers
  add in quadrature too: ``n`` is the sum of the reduction lengths of every
  layer (:func:`reduction_length`), and the bound is relative to the size of
  the output (``max |y|``, since rounding scales with the magnitudes summed,
  not with the spread of the results).
* Training: each step runs the forward and two backward passes over the same
  reductions (``3 n``) plus the batch sum of the gradient; Adam divides the
  gradient by its own root mean square, so a relative error of the gradient
  becomes the same relative error of the step, and a weight's error carries
  on into every later step. The errors of ``T`` steps are therefore added
  linearly, not in quadrature: ``T lam sqrt(2 (3 n + batch)) U`` relative to
  each quantity's size.
"""

import math

U = 2.0 ** -24  # float32 unit roundoff
LAMBDA = 4.0  # probabilistic bound: exceeded with probability < 2 exp(-8)


def reduction_length(model):
    """Sum over every kernel of ``model`` of its reduction length (all axes but the last)."""
    total = 0
    for v in model.weights:
        if len(v.shape) >= 2:
            total += math.prod(int(d) for d in v.shape[:-1])
    return total


def forward_tolerance(n, implementations=2):
    """Relative (to ``max |output|``) bound for one forward pass of reduction length ``n``.

    ``implementations``: 2 for two float32 runs, 1 against a float64 reference.
    """
    return LAMBDA * math.sqrt(implementations * n) * U


def training_tolerance(n, steps, batch, implementations=2):
    """Relative (to each quantity's size) bound after ``steps`` training steps."""
    return steps * LAMBDA * math.sqrt(implementations * (3 * n + batch)) * U
