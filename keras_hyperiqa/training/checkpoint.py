"""Atomic training checkpoints: model weights + full optimizer state + loop position.

One checkpoint is one ``.npz`` file holding

* ``model/<i>``: every model variable (trainable and non-trainable, e.g.
  BatchNorm moving statistics), in ``model.variables`` order;
* ``optimizer/<i>``: every optimizer variable (step count, learning rate,
  moments, velocities, lr multipliers), in ``optimizer.variables`` order;
* ``state``: JSON with the loop position (last completed 0-based epoch), the
  per-epoch history and any extra fields the caller adds, plus the variable
  paths: restoring matches every variable to its saved array by path, so a
  checkpoint of another model is refused instead of loaded by position.

It is written through :func:`keras_hyperiqa.atomic.atomic_file` (a temporary
name in the same directory, fsynced, then ``os.replace``), so a run killed at any moment
leaves either the previous complete checkpoint or the new complete one.

Directory layout written by :class:`CheckpointCallback`::

    <directory>/last.npz            latest completed epoch (resume from here)
    <directory>/epoch_<EEE>.npz     every epoch, when keep_all=True
"""

import json
import os

import keras
import numpy as np

from keras_hyperiqa.atomic import atomic_file
from keras_hyperiqa.errors import UserError

LAST = "last.npz"
FORMAT_VERSION = 1


def _to_numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def save_checkpoint(path, model, optimizer, state):
    """Write model + optimizer variables and ``state`` (JSON-able) atomically."""
    path = os.fspath(path)
    arrays = {}
    for i, v in enumerate(model.variables):
        arrays[f"model/{i}"] = _to_numpy(v)
    for i, v in enumerate(optimizer.variables):
        arrays[f"optimizer/{i}"] = _to_numpy(v)
    meta = dict(state)
    meta["format_version"] = FORMAT_VERSION
    meta["model_paths"] = [v.path for v in model.variables]
    meta["optimizer_paths"] = [v.path for v in optimizer.variables]
    meta["model_name"], meta["optimizer_name"] = model.name, optimizer.name
    arrays["state"] = np.frombuffer(
        json.dumps(meta).encode("utf-8"), dtype=np.uint8
    )
    with atomic_file(path, "wb", fsync=True) as f:
        np.savez(f, **arrays)
    return path


def read_state(path):
    """Only the JSON state of a checkpoint (no variables are touched)."""
    with np.load(os.fspath(path)) as data:
        return json.loads(data["state"].tobytes().decode("utf-8"))


class CheckpointMismatch(UserError, ValueError):
    """The checkpoint was written by another model or optimizer (one line, naming a path)."""


def _relative_paths(model_paths, optimizer_paths, model_name=None, optimizer_name=None):
    """Paths without the model's and optimizer's own names.

    Keras numbers the names of later instances (``hyper_iqa_1/lda1/...``,
    ``hyper_adam_1/hyper_iqa_1_lda1_..._momentum``), so a resumed process, or
    a second round in the same process, names the same variables differently.
    Without a stored name, the most common first path component is the name.
    """
    def most_common_head(paths):
        heads = [p.split("/", 1)[0] for p in paths if "/" in p]
        return max(set(heads), key=heads.count) if heads else None

    model_name = model_name or most_common_head(model_paths)
    optimizer_name = optimizer_name or most_common_head(optimizer_paths)

    def strip(p, prefix):
        return p[len(prefix):] if prefix and p.startswith(prefix) else p

    model = [strip(p, f"{model_name}/") for p in model_paths]
    optimizer = [strip(strip(p, f"{optimizer_name}/"), f"{model_name}_") for p in optimizer_paths]
    return model, optimizer


def _match_by_path(path, kind, variables, names, saved_paths, data):
    """``[(variable, array)]`` pairing each variable with the saved array of its path."""
    index = {}
    for i, p in enumerate(saved_paths):
        if p in index:
            raise CheckpointMismatch(f"{path}: {kind} variable path {p} is stored twice")
        index[p] = i
    pairs, ours = [], set()
    for v, name in zip(variables, names):
        if name in ours:
            raise CheckpointMismatch(f"{path}: this {kind} has two variables named {name}")
        ours.add(name)
        if name not in index:
            raise CheckpointMismatch(
                f"{path}: written by another {kind}: this {kind}'s variable {name} is not in it")
        value = data[f"{kind}/{index[name]}"]
        if tuple(value.shape) != tuple(v.shape):
            raise CheckpointMismatch(
                f"{path}: written by another {kind}: {kind} variable {name} has shape "
                f"{tuple(value.shape)} there, {tuple(v.shape)} here")
        pairs.append((v, value))
    extra = [p for p in saved_paths if p not in ours]
    if extra:
        raise CheckpointMismatch(
            f"{path}: written by another {kind}: its variable {extra[0]} is not in this {kind}")
    return pairs


def load_checkpoint(path, model, optimizer):
    """Restore model and optimizer variables in place, by variable path; return the JSON state.

    Every variable takes the array saved under its own ``path`` (the order of
    ``model.variables`` may differ). The optimizer must already be built on
    ``model.trainable_variables`` (``Trainer`` does this on construction) so
    its variables exist.

    Raises:
        CheckpointMismatch: (a ``UserError`` and ``ValueError``) naming the
            first variable path that is missing on either side or has another
            shape; nothing is assigned then.
    """
    with np.load(os.fspath(path)) as data:
        state = json.loads(data["state"].tobytes().decode("utf-8"))
        if "model_paths" not in state or "optimizer_paths" not in state:
            raise CheckpointMismatch(
                f"{path}: no variable paths stored (an older checkpoint format), so it "
                f"cannot be matched to this model; start the run again")
        saved = _relative_paths(state["model_paths"], state["optimizer_paths"],
                                state.get("model_name"), state.get("optimizer_name"))
        ours = _relative_paths([v.path for v in model.variables],
                               [v.path for v in optimizer.variables], model.name, optimizer.name)
        pairs = []
        for kind, variables, names, saved_paths in (
                ("model", model.variables, ours[0], saved[0]),
                ("optimizer", optimizer.variables, ours[1], saved[1])):
            pairs += _match_by_path(path, kind, variables, names, saved_paths, data)
        for v, value in pairs:
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
