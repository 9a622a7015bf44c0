"""HyperAdam: ``torch.optim.Adam`` semantics with per-variable lr multipliers.

The original HyperIQA solver trains with ``torch.optim.Adam`` over two
parameter groups (backbone at ``lr``, hypernet at ``lr * lr_ratio``) and
``weight_decay=5e-4``. Keras's own ``Adam`` differs from that in two ways
(epsilon is added to ``sqrt(v)`` *before* bias correction, and weight decay is
decoupled), so this module implements the torch update with ``keras.ops`` only,
and replaces parameter groups by one learning-rate multiplier per model
variable. The multipliers are optimizer variables: they live in
``optimizer.variables``, are saved with the optimizer state and flow through
``stateless_apply`` on jax, and can be changed at any time (with
:meth:`HyperAdam.set_group_multiplier`) without touching the moment slots.
"""

import keras
from keras import ops

from keras_hyperiqa import compat


@keras.saving.register_keras_serializable("keras_hyperiqa")
@compat.fused_update_step
class HyperAdam(keras.optimizers.Optimizer):
    r"""Adam with coupled L2 decay, torch's epsilon placement and lr multipliers.

    For every model variable ``p`` with gradient ``g``, learning-rate
    multiplier ``mu_p`` and global learning rate ``lr``, one step is (``t`` is
    the step count *after* incrementing, i.e. 1 on the first step)::

        g     = g + weight_decay * p                 # coupled L2, every variable
        m     = m + (1 - beta_1) * (g - m)           # torch: exp_avg.lerp_
        v     = beta_2 * v + (1 - beta_2) * g * g
        bc1   = 1 - beta_1 ** t
        bc2   = 1 - beta_2 ** t
        denom = sqrt(v) / sqrt(bc2) + epsilon        # torch's epsilon placement
        p     = p - (lr * mu_p / bc1) * m / denom

    This is exactly ``torch.optim.Adam`` (``amsgrad=False``, ``maximize=False``)
    where the variable's parameter group has learning rate ``lr * mu_p``. The
    multiplier scales the whole step, decay term included, so ``mu_p = 0``
    leaves ``p`` bit-identical (its moments still update, as in a torch group
    whose lr is 0).

    The step count is Keras's ``optimizer.iterations`` (shared by all
    variables, like torch's per-parameter ``step`` when all parameters step
    together). :meth:`reset_slots` zeroes moments and step count in place,
    which is what rebuilding a ``torch.optim.Adam`` does.

    Args:
        learning_rate: float, the base learning rate (the backbone's in
            HyperIQA). Stored in the ``learning_rate`` variable; assign it with
            ``optimizer.learning_rate = value``.
        beta_1, beta_2: moment decay rates (torch defaults 0.9, 0.999).
        epsilon: torch's ``eps``, added after the bias-corrected ``sqrt(v)``.
            Default 1e-8 (torch's default, not Keras's 1e-7).
        weight_decay: coupled L2 coefficient (torch's ``weight_decay``),
            default 5e-4 as in HyperIQA. This is *not* Keras's decoupled
            ``weight_decay``, which is disabled in the base class.
        name: optimizer name.
    """

    def __init__(
        self,
        learning_rate=2e-5,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=5e-4,
        name=None,
        **kwargs,
    ):
        # Keras's decoupled decay, clipping, EMA, loss scaling and gradient
        # accumulation stay off: none of them exist in the original solver.
        super().__init__(
            learning_rate=float(learning_rate),
            weight_decay=None,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.l2_weight_decay = float(weight_decay or 0.0)

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        """Create momentum, velocity and lr-multiplier variables.

        One momentum and one velocity slot (shape and dtype of the model
        variable) and one scalar float32 multiplier (initially 1) per model
        variable, all non-trainable optimizer variables.
        """
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        self._multipliers = []
        for variable in var_list:
            prefix = getattr(variable, "path", variable.name).replace("/", "_")
            self._multipliers.append(
                self.add_variable(
                    shape=(),
                    initializer="ones",
                    dtype="float32",
                    name=f"{prefix}_lr_multiplier",
                )
            )

    # ------------------------------------------------------------ update math
    def update_step(self, gradient, variable, learning_rate):
        """One torch-Adam step for ``variable`` (see the class docstring)."""
        dtype = variable.dtype
        index = compat.optimizer_variable_index(self, variable)
        m = self._momentums[index]
        v = self._velocities[index]
        multiplier = self._multipliers[index]

        lr = ops.multiply(
            ops.cast(learning_rate, dtype), ops.cast(multiplier, dtype)
        )
        gradient = ops.cast(gradient, dtype)
        if self.l2_weight_decay:
            gradient = ops.add(
                gradient,
                ops.multiply(ops.cast(self.l2_weight_decay, dtype), variable),
            )
        step = ops.cast(self.iterations + 1, dtype)
        bias_correction1 = 1.0 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias_correction2 = 1.0 - ops.power(ops.cast(self.beta_2, dtype), step)

        self.assign_add(
            m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1)
        )
        self.assign(
            v,
            ops.add(
                ops.multiply(v, self.beta_2),
                ops.multiply(ops.square(gradient), 1.0 - self.beta_2),
            ),
        )
        denom = ops.add(
            ops.divide(ops.sqrt(v), ops.sqrt(bias_correction2)), self.epsilon
        )
        step_size = ops.divide(lr, bias_correction1)
        self.assign_sub(
            variable, ops.multiply(step_size, ops.divide(m, denom))
        )

    def fused_update_step(self, grads, trainable_variables, learning_rate):
        """All variables at once with ``torch._foreach_*`` on torch; False elsewhere.

        Keras's ``apply`` reaches this through the hook that
        :func:`keras_hyperiqa.compat.fused_update_step` installs; when it
        returns False, Keras runs :meth:`update_step` per variable.

        On torch, Keras would run :meth:`update_step` once per variable (about
        20 small ops each, every one through Keras's dispatch): for
        ResNet-50's 300-odd variables that is thousands of Python-level ops
        per step. The fused path below does the same maths as
        :meth:`update_step` (and as ``torch.optim.Adam(foreach=True)``) in
        about a dozen multi-tensor kernels, with no host-device sync: step
        count, learning rate and multipliers stay device tensors.
        """
        if keras.backend.backend() == "torch" and _torch_fast_path_ok(
            grads, trainable_variables
        ):
            self._torch_update_step(grads, trainable_variables, learning_rate)
            return True
        return False

    def _torch_update_step(self, grads, trainable_variables, learning_rate):
        import torch

        with torch.no_grad():
            indices = [compat.optimizer_variable_index(self, v) for v in trainable_variables]
            params = [v.value for v in trainable_variables]
            dtype = params[0].dtype
            grads = [ops.convert_to_tensor(g) for g in grads]
            grads = [g if g.dtype == dtype else g.to(dtype) for g in grads]
            exp_avgs = [self._momentums[i].value for i in indices]
            exp_avg_sqs = [self._velocities[i].value for i in indices]
            multipliers = torch.stack(
                [self._multipliers[i].value for i in indices]
            ).to(dtype)

            if self.l2_weight_decay:
                grads = torch._foreach_add(
                    grads, params, alpha=self.l2_weight_decay
                )
            # m <- m + (1 - beta_1) (g - m);  v <- beta_2 v + (1 - beta_2) g^2
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - self.beta_1)
            torch._foreach_mul_(exp_avg_sqs, self.beta_2)
            torch._foreach_addcmul_(
                exp_avg_sqs, grads, grads, value=1.0 - self.beta_2
            )
            del grads

            step = self.iterations.value.to(dtype) + 1
            # Python-number bases: a tensor built from one would be a
            # host-to-device copy, which waits for the device on CUDA.
            bias_correction1 = 1.0 - torch.pow(self.beta_1, step)
            bias_correction2 = 1.0 - torch.pow(self.beta_2, step)
            lr = ops.convert_to_tensor(learning_rate).to(dtype)
            # One step size per variable: lr * mu_p / bc1, all on the device.
            step_sizes = (lr * multipliers / bias_correction1).unbind(0)

            # p <- p - m / (denom / step_size): one fused pass over p, m, denom.
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, torch.sqrt(bias_correction2))
            torch._foreach_add_(denom, self.epsilon)
            torch._foreach_div_(denom, list(step_sizes))
            torch._foreach_addcdiv_(params, exp_avgs, denom, value=-1.0)

    # ------------------------------------------------------------ multipliers
    def _index_of(self, variable):
        if not self.built:
            raise ValueError(
                "HyperAdam is not built yet; call optimizer.build("
                "model.trainable_variables) first."
            )
        if isinstance(variable, str):
            for i, v in enumerate(compat.optimizer_built_variables(self)):
                if v.path == variable:
                    return i
            raise KeyError(f"No optimized variable with path {variable!r}")
        return compat.optimizer_variable_index(self, variable)

    def set_group_multiplier(self, variables, value):
        """Set the lr multiplier of every variable in ``variables`` to ``value``.

        ``variables`` holds model variables (or their ``.path`` strings) that
        the optimizer was built with. Moments and step count are untouched.
        """
        for variable in variables:
            self._multipliers[self._index_of(variable)].assign(float(value))

    def set_multipliers(self, mapping):
        """Set multipliers from ``{variable_or_path: value}``."""
        for variable, value in mapping.items():
            self._multipliers[self._index_of(variable)].assign(float(value))

    def get_multiplier(self, variable):
        """Current multiplier of ``variable`` (a model variable or its path)."""
        return float(
            ops.convert_to_numpy(self._multipliers[self._index_of(variable)])
        )

    def effective_learning_rate(self, variable):
        """``learning_rate * multiplier`` for ``variable``, as a Python float."""
        lr = float(ops.convert_to_numpy(self.learning_rate))
        return lr * self.get_multiplier(variable)

    @property
    def multipliers(self):
        """The multiplier variables, in the order of the built variables."""
        return list(self._multipliers)

    @property
    def momentums(self):
        return list(self._momentums)

    @property
    def velocities(self):
        return list(self._velocities)

    # ----------------------------------------------------------------- resets
    def reset_slots(self):
        """Zero all moments and the step count in place (same objects).

        This reproduces what building a fresh ``torch.optim.Adam`` does to the
        optimizer state, without replacing any variable, so compiled steps and
        references held elsewhere stay valid. Learning rate and multipliers are
        kept.
        """
        for slot in list(self._momentums) + list(self._velocities):
            if slot is not None:
                slot.assign(ops.zeros(slot.shape, dtype=slot.dtype))
        self.iterations.assign(0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.l2_weight_decay,
            }
        )
        return config


def _torch_fast_path_ok(grads, variables):
    """The fused torch update handles one floating dtype and dense gradients."""
    if not variables:
        return False
    dtype = variables[0].dtype
    if any(v.dtype != dtype for v in variables):
        return False
    return all(g is not None for g in grads)
