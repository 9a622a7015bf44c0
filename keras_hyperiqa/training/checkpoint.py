"""Atomic training checkpoints: model weights + full optimizer state + loop position.

One checkpoint is one ``.npz`` file holding

* ``model/<i>``: every model variable (trainable and non-trainable, e.g.
  BatchNorm moving statistics), in ``model.variables`` order;
* ``optimizer/<i>``: every optimizer variable (step count, learning rate,
  moments, velocities, lr multipliers), in ``optimizer.variables`` order;
* ``state``: JSON with the loop position (last completed 0-based epoch), the
  per-epoch history and any extra fields the caller adds, plus the variable
  paths used to check that the checkpoint matches the model.

It is written to a temporary name in the same directory, flushed and fsynced,
then moved into place with ``os.replace``, so a run killed at any moment
leaves either the previous complete checkpoint or the new complete one.

Directory layout written by :class:`CheckpointCallback`::

    <directory>/last.npz            latest completed epoch (resume from here)
    <directory>/epoch_<EEE>.npz     every epoch, when keep_all=True
"""

import json
import os
import tempfile

import keras
import numpy as np

LAST = "last.npz"
FORMAT_VERSION = 1


def _to_numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, model, optimizer, state):
    """Write model + optimizer variables and ``state`` (JSON-able) atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for i, v in enumerate(model.variables):
        arrays[f"model/{i}"] = _to_numpy(v)
    for i, v in enumerate(optimizer.variables):
        arrays[f"optimizer/{i}"] = _to_numpy(v)
    meta = dict(state)
    meta["format_version"] = FORMAT_VERSION
    meta["model_paths"] = [v.path for v in model.variables]
    meta["optimizer_paths"] = [v.path for v in optimizer.variables]
    arrays["state"] = np.frombuffer(
        json.dumps(meta).encode("utf-8"), dtype=np.uint8
    )
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-" + os.path.basename(path) + "-", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def read_state(path):
    """Only the JSON state of a checkpoint (no variables are touched)."""
    with np.load(os.fspath(path)) as data:
        return json.loads(data["state"].tobytes().decode("utf-8"))


def load_checkpoint(path, model, optimizer):
    """Restore model and optimizer variables in place; return the JSON state.

    The optimizer must already be built on ``model.trainable_variables``
    (``Trainer`` does this on construction) so its variables exist.

    Raises:
        ValueError: if the checkpoint's variable count or shapes do not match.
    """
    with np.load(os.fspath(path)) as data:
        state = json.loads(data["state"].tobytes().decode("utf-8"))
        for kind, variables in (("model", model.variables),
                                ("optimizer", optimizer.variables)):
            n_saved = len(state[f"{kind}_paths"])
            if n_saved != len(variables):
                raise ValueError(
                    f"Checkpoint {path} has {n_saved} {kind} variables, "
                    f"this {kind} has {len(variables)}"
                )
            for i, v in enumerate(variables):
                value = data[f"{kind}/{i}"]
                if tuple(value.shape) != tuple(v.shape):
                    raise ValueError(
                        f"Checkpoint {path}: {kind} variable {i} "
                        f"({state[f'{kind}_paths'][i]}) has shape "
                        f"{value.shape}, expected {tuple(v.shape)}"
                    )
                v.assign(value)
    return state


def latest_checkpoint(directory):
    """Path of ``<directory>/last.npz`` if it exists, else ``None``."""
    path = os.path.join(os.fspath(directory), LAST)
    return path if os.path.exists(path) else None


class CheckpointCallback(keras.callbacks.Callback):
    """Write a checkpoint at the end of every epoch.

    The state records ``epoch`` (the completed 0-based epoch),
    ``next_epoch`` and ``history`` (``trainer.history``, one dict per completed
    epoch), plus ``extra`` (any JSON-able dict, e.g. the run configuration).

    Resuming is exact wherever it sits in the callback list: the schedule
    applies each epoch's rates (and, with fix 3 reverted, its fresh slots)
    in ``on_epoch_begin``.

    Args:
        directory: checkpoint directory (created if missing).
        trainer: the :class:`~keras_hyperiqa.training.trainer.Trainer`.
        keep_all: also keep ``epoch_<EEE>.npz`` for every epoch.
        extra: JSON-able dict stored in every checkpoint's state.
    """

    def __init__(self, directory, trainer, keep_all=False, extra=None):
        super().__init__()
        self.directory = os.fspath(directory)
        self.trainer = trainer
        self.keep_all = keep_all
        self.extra = dict(extra or {})

    def on_epoch_end(self, epoch, logs=None):
        state = {
            "epoch": int(epoch),
            "next_epoch": int(epoch) + 1,
            "history": self.trainer.history,
            "extra": self.extra,
        }
        model, optimizer = self.trainer.model, self.trainer.optimizer
        if self.keep_all:
            save_checkpoint(
                os.path.join(self.directory, f"epoch_{epoch:03d}.npz"),
                model, optimizer, state,
            )
        save_checkpoint(
            os.path.join(self.directory, LAST), model, optimizer, state
        )
