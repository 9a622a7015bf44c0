"""The HyperIQA learning-rate schedule as a Keras callback, with revertible fixes.

Timing follows the original solver: at the *end* of 0-based epoch ``t`` the
rates are recomputed from ``t`` and first act in epoch ``t + 1``. With the
defaults (``lr=2e-5``, ``lr_ratio=10``) and all fixes applied, the rates that
train epoch ``e`` are::

    e 0-6   : backbone 2e-5, hypernet 2e-4
    e 7-9   : backbone 2e-6, hypernet 2e-5
    e 10-12 : backbone 2e-6, hypernet 2e-6
    e 13-15 : backbone 2e-7, hypernet 2e-7

Each of the three solver fixes (README, "The three solver fixes") can be reverted
independently through :class:`Fixes`; reverting all three reproduces the
original solver (new ``torch.optim.Adam`` every epoch, backbone lr constant,
hypernet group empty from the second optimizer on).
"""

import dataclasses

import keras

from keras_hyperiqa.names import REVERT_FIXES


@dataclasses.dataclass(frozen=True)
class Fixes:
    """Which of the three training-bug fixes are applied (``True`` = fixed).

    Attributes:
        hypernet_trains: fix 1, the hypernet (head + generators) trains in
            every epoch. When ``False`` the original one-shot ``filter`` bug
            is reproduced: every optimizer after the first had an empty
            hypernet group, so the hypernet is frozen from 0-based epoch 1 on
            (multiplier 0: bit-identical weights).
        backbone_lr_decays: fix 2, the backbone lr decays with the hypernet's.
            When ``False`` the backbone lr stays at ``lr`` forever and only
            the hypernet lr follows the original formula
            ``lr / 10 ** (t // 6) * ratio``.
        optimizer_state_kept: fix 3, Adam's moments and step count carry
            over between epochs. When ``False`` they are reset at the end of
            every epoch, as rebuilding ``torch.optim.Adam`` did (slots are
            zeroed in place; no new optimizer is built).
    """

    hypernet_trains: bool = True
    backbone_lr_decays: bool = True
    optimizer_state_kept: bool = True

    @classmethod
    def original(cls):
        """All three fixes reverted: the original solver's behaviour."""
        return cls(hypernet_trains=False, backbone_lr_decays=False, optimizer_state_kept=False)

    @classmethod
    def from_reverted(cls, names):
        """Build from the fixes to revert, by their ``--revert-fix`` words.

        ``filter``, ``backbone-decay``, ``optimizer-reset`` (or with ``_``
        for ``-``); see ``keras_hyperiqa.names.REVERT_FIXES``.
        """
        names = {name.replace("_", "-") for name in names}
        unknown = names - set(REVERT_FIXES)
        if unknown:
            raise ValueError(f"Unknown fix name(s): {sorted(unknown)}")
        return cls(**{REVERT_FIXES[name]: False for name in names})


def epoch_rates(epoch, lr=2e-5, lr_ratio=10.0, fixes=Fixes(), decay_every=6,
                ratio_until=8):
    """The ``(backbone_lr, hypernet_lr)`` pair that trains 0-based ``epoch``.

    Pure function of the epoch: the rates for epoch ``e > 0`` are those the
    original computes at the end of epoch ``t = e - 1``
    (``lr / 10 ** (t // decay_every)``, ratio 1 once ``t > ratio_until``);
    epoch 0 trains at ``(lr, lr * lr_ratio)``. ``hypernet_lr`` is 0 when the
    hypernet is frozen (fix 1 reverted, ``epoch >= 1``).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch == 0:
        return float(lr), float(lr) * float(lr_ratio)
    t = epoch - 1
    decayed = float(lr) / 10 ** (t // decay_every)
    ratio = 1.0 if t > ratio_until else float(lr_ratio)
    if fixes.backbone_lr_decays:
        backbone_lr = decayed
    else:
        backbone_lr = float(lr)
    hypernet_lr = decayed * ratio
    if not fixes.hypernet_trains:
        hypernet_lr = 0.0
    return backbone_lr, hypernet_lr


class HyperIQASchedule(keras.callbacks.Callback):
    """Sets a :class:`~keras_hyperiqa.training.optimizer.HyperAdam`'s rates.

    The callback only assigns the optimizer's ``learning_rate`` variable (the
    backbone lr) and the multipliers (backbone 1, hypernet
    ``hypernet_lr / backbone_lr``), plus, with fix 3 reverted, zeroes the
    slots. It never builds an optimizer.

    ``on_epoch_begin(epoch)`` applies the rates that train ``epoch`` (a pure
    function of it, :func:`epoch_rates`), and with fix 3 reverted zeroes the
    slots before every epoch but the first, as the original's new Adam at the
    end of each epoch did. Nothing depends on where training started, so a
    run resumed at epoch ``k`` (``Trainer.fit`` or ``model.fit`` with
    ``initial_epoch=k``, or a ``BackupAndRestore`` restore) trains with the
    same rates, and the same fresh slots, as an uninterrupted one.

    Works in ``Trainer.fit`` and in plain ``model.fit``: the optimizer and
    the two variable groups default to ``self.model.optimizer``,
    ``self.model.backbone_variables`` and ``self.model.hypernet_variables``.

    Args:
        optimizer: a built ``HyperAdam``, or ``None`` for ``model.optimizer``.
        backbone_variables, hypernet_variables: the two disjoint variable
            groups, or ``None`` for the model's own.
        lr: base learning rate (backbone, epoch 0). Default 2e-5.
        lr_ratio: hypernet / backbone ratio until epoch ``ratio_until + 1``.
        fixes: which fixes are applied.
    """

    def __init__(self, optimizer=None, backbone_variables=None, hypernet_variables=None,
                 lr=2e-5, lr_ratio=10.0, fixes=Fixes(), decay_every=6,
                 ratio_until=8):
        super().__init__()
        self._optimizer = optimizer
        self._backbone_variables = (None if backbone_variables is None
                                    else list(backbone_variables))
        self._hypernet_variables = (None if hypernet_variables is None
                                    else list(hypernet_variables))
        self.lr = float(lr)
        self.lr_ratio = float(lr_ratio)
        self.fixes = fixes
        self.decay_every = decay_every
        self.ratio_until = ratio_until

    @property
    def optimizer(self):
        optimizer = self._optimizer
        if optimizer is None:
            optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
            if optimizer is None:
                raise ValueError(
                    "HyperIQASchedule has no optimizer: pass one, or compile the "
                    "model with a HyperAdam (model.compile(optimizer=HyperAdam(...)))")
        if not hasattr(optimizer, "set_group_multiplier"):
            raise ValueError(
                f"HyperIQASchedule needs a HyperAdam, got {type(optimizer).__name__}")
        return optimizer

    def _group(self, name):
        variables = getattr(self, f"_{name}_variables")
        if variables is None:
            variables = getattr(self.model, f"{name}_variables", None)
            if variables is None:
                raise ValueError(
                    f"HyperIQASchedule: pass {name}_variables, or use a model "
                    f"with a {name}_variables property")
        return variables

    @property
    def backbone_variables(self):
        return self._group("backbone")

    @property
    def hypernet_variables(self):
        return self._group("hypernet")

    def rates(self, epoch):
        """``(backbone_lr, hypernet_lr)`` that train 0-based ``epoch``."""
        return epoch_rates(epoch, self.lr, self.lr_ratio, self.fixes,
                           self.decay_every, self.ratio_until)

    def apply_epoch(self, epoch):
        """Assign the learning rate and multipliers for ``epoch``."""
        optimizer = self.optimizer
        backbone_lr, hypernet_lr = self.rates(epoch)
        optimizer.learning_rate = backbone_lr
        optimizer.set_group_multiplier(self.backbone_variables, 1.0)
        ratio = hypernet_lr / backbone_lr if backbone_lr else 0.0
        optimizer.set_group_multiplier(self.hypernet_variables, ratio)

    def on_epoch_begin(self, epoch, logs=None):
        self.apply_epoch(epoch)
        if epoch > 0 and not self.fixes.optimizer_state_kept:
            # The original built a new Adam at the end of every epoch; doing
            # it at the next epoch's start is the same for training, and a
            # resumed run resets whether or not its checkpoint was reset.
            self.optimizer.reset_slots()
