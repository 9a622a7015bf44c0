"""Checkpoints, resume, CSV history, reproducibility and mixed precision."""

import csv
import os

import keras_hyperiqa  # noqa: F401
import keras
import numpy as np
import pytest

from keras_hyperiqa.training import checkpoint as ckpt
from keras_hyperiqa.training.optimizer import HyperAdam
from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule
from doubles import (
    ArrayEvalSource,
    ArrayTrainSource,
    TinyIQA,
    toy_dataset,
)
from keras_hyperiqa.training.trainer import HistoryCSVLogger, Trainer


def _numpy(v):
    return np.array(keras.ops.convert_to_numpy(v), copy=True)


def _data():
    x, y = toy_dataset(n_images=10, seed=5)
    return (ArrayTrainSource(x[:7], y[:7], batch_size=3, seed=11),
            ArrayEvalSource(x[7:], y[7:]))


def _setup(directory, fixes=Fixes(), seed=0, batchnorm=True):
    model = TinyIQA(batchnorm=batchnorm, seed=seed)
    opt = HyperAdam(learning_rate=1e-2)
    trainer = Trainer(model, opt)
    callbacks = [
        HyperIQASchedule(opt, model.backbone_variables,
                         model.hypernet_variables, lr=1e-2, lr_ratio=10,
                         fixes=fixes, decay_every=1),
        ckpt.CheckpointCallback(directory, trainer),
        HistoryCSVLogger(os.path.join(directory, "history.csv"), trainer),
    ]
    return model, opt, trainer, callbacks


def _state(model, opt):
    return ([_numpy(v) for v in model.variables],
            [_numpy(v) for v in opt.variables])


class Kill(keras.callbacks.Callback):
    """Simulates the process dying in the middle of an epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("fixes", [Fixes(), Fixes.original()])
def test_resume_equals_uninterrupted_run(tmp_path, fixes):
    train, val = _data()
    # Straight: 2 epochs.
    model, opt, trainer, cbs = _setup(tmp_path / "straight", fixes)
    trainer.fit(train, 2, val=val, callbacks=cbs, verbose=0)
    straight = _state(model, opt)

    # 1 epoch, then killed in the middle of epoch 1.
    run_dir = tmp_path / "resumed"
    model, opt, trainer, cbs = _setup(run_dir, fixes)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, 2, val=val, callbacks=cbs + [Kill(1, 1)],
                    verbose=0)
    assert ckpt.read_state(ckpt.latest_checkpoint(run_dir))["epoch"] == 0
    # The kill left the live weights half-way through epoch 1.
    assert any(not np.array_equal(a, b)
               for a, b in zip(_state(model, opt)[0], straight[0]))

    # A new process: fresh objects with a different init, then resume.
    model, opt, trainer, cbs = _setup(run_dir, fixes, seed=123)
    initial_epoch = trainer.restore(ckpt.latest_checkpoint(run_dir))
    assert initial_epoch == 1 and len(trainer.history) == 1
    trainer.fit(train, 2, val=val, callbacks=cbs,
                initial_epoch=initial_epoch, verbose=0)
    resumed = _state(model, opt)

    for a, b in zip(straight[0] + straight[1], resumed[0] + resumed[1]):
        np.testing.assert_array_equal(a, b)
    # History and CSV cover both epochs exactly once.
    state = ckpt.read_state(ckpt.latest_checkpoint(run_dir))
    assert [row["epoch"] for row in state["history"]] == [0, 1]
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "backbone_lr", "hypernet_lr", "val_srcc", "val_plcc",
            "val_krcc", "val_rmse"} <= set(rows[0])


def test_checkpoint_holds_full_optimizer_state(tmp_path):
    train, _ = _data()
    model, opt, trainer, cbs = _setup(tmp_path)
    trainer.fit(train, 1, callbacks=cbs, verbose=0)
    path = ckpt.latest_checkpoint(tmp_path)
    saved_model, saved_opt = _state(model, opt)
    state = ckpt.read_state(path)
    assert state["epoch"] == 0 and state["next_epoch"] == 1
    names = state["optimizer_paths"]
    assert any(n.endswith("iteration") for n in names)
    assert any(n.endswith("learning_rate") for n in names)
    assert sum(n.endswith("_momentum") for n in names) == len(
        model.trainable_variables)
    assert sum(n.endswith("_lr_multiplier") for n in names) == len(
        model.trainable_variables)

    # Load into fresh objects: every model and optimizer variable comes back,
    # including step count, multipliers and BatchNorm moving statistics.
    model2 = TinyIQA(batchnorm=True, seed=9)
    opt2 = HyperAdam()
    trainer2 = Trainer(model2, opt2)
    assert trainer2.restore(path) == 1
    for a, b in zip(saved_model + saved_opt, _state(model2, opt2)[0]
                    + _state(model2, opt2)[1]):
        np.testing.assert_array_equal(a, b)
    assert int(_numpy(opt2.iterations)) == train.steps_per_epoch
    assert opt2.get_multiplier(model2.hypernet_variables[0]) == pytest.approx(
        10.0)

    # A mismatching model is refused.
    with pytest.raises(ValueError):
        Trainer(TinyIQA(batchnorm=False), HyperAdam()).restore(path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    train, _ = _data()
    model, opt, trainer, cbs = _setup(tmp_path)
    trainer.fit(train, 1, callbacks=cbs, verbose=0)
    path = ckpt.latest_checkpoint(tmp_path)
    before = open(path, "rb").read()

    def dying_savez(f, **arrays):  # dies after writing part of the file
        f.write(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, 2, callbacks=cbs, initial_epoch=1, verbose=0)
    assert open(path, "rb").read() == before  # previous checkpoint intact
    assert ckpt.read_state(path)["epoch"] == 0
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary left


def _seeded_run(tmp_path, seed):
    keras.utils.set_random_seed(seed)
    x, y = toy_dataset(n_images=10, seed=seed)
    train = ArrayTrainSource(x[:7], y[:7], batch_size=3, seed=seed)
    val = ArrayEvalSource(x[7:], y[7:], seed=seed)
    model = TinyIQA(batchnorm=True, seed=seed)
    opt = HyperAdam(learning_rate=1e-2)
    trainer = Trainer(model, opt)
    sched = HyperIQASchedule(opt, model.backbone_variables,
                             model.hypernet_variables, lr=1e-2)
    return trainer.fit(train, 2, val=val, callbacks=[sched], verbose=0)


def test_same_seed_same_metrics(tmp_path):
    a = _seeded_run(tmp_path, 3)
    b = _seeded_run(tmp_path, 3)
    c = _seeded_run(tmp_path, 4)
    assert a == b
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


def test_mixed_bfloat16_trains(tmp_path):
    train, val = _data()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = TinyIQA(batchnorm=True)
        opt = HyperAdam(learning_rate=1e-2)
        trainer = Trainer(model, opt)
        before = [_numpy(v) for v in model.trainable_variables]
        history = trainer.fit(train, 1, val=val, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model.body.compute_dtype == "bfloat16"
    assert np.isfinite(history[0]["loss"]) and np.isfinite(
        history[0]["val_rmse"])
    assert all(not np.array_equal(a, _numpy(v))
               for a, v in zip(before, model.trainable_variables))


def _two_layers(names, seed):
    """Two Dense(4) layers of the same shape, created in the order of ``names``."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4,))] + [keras.layers.Dense(4, name=n) for n in names],
                             name="two_layers")
    for v in model.variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    opt = HyperAdam(learning_rate=1e-2)
    opt.build(model.trainable_variables)
    return model, opt


def test_restore_goes_by_variable_path_not_position(tmp_path):
    """A checkpoint of a model whose two same-shape layers come in the other
    order restores each variable from its own path (by position they would
    load swapped, silently); a model with another variable is refused."""
    model, opt = _two_layers(["first", "second"], seed=0)
    path = ckpt.save_checkpoint(tmp_path / "c.npz", model, opt, {"next_epoch": 1})
    saved = {v.path.split("/", 1)[1]: _numpy(v) for v in model.variables}

    swapped, swapped_opt = _two_layers(["second", "first"], seed=1)
    assert swapped.variables[0].path.endswith("/second/kernel")
    assert swapped_opt.name != opt.name  # numbered by Keras: paths are matched without it
    ckpt.load_checkpoint(path, swapped, swapped_opt)
    for v in swapped.variables:
        np.testing.assert_array_equal(_numpy(v), saved[v.path.split("/", 1)[1]], err_msg=v.path)

    other, other_opt = _two_layers(["first", "third"], seed=2)
    before = [_numpy(v) for v in other.variables]
    with pytest.raises(ckpt.CheckpointMismatch) as err:
        ckpt.load_checkpoint(path, other, other_opt)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "variable third/kernel is not in it" in message
    for v, b in zip(other.variables, before):  # nothing assigned
        np.testing.assert_array_equal(_numpy(v), b)


def test_checkpoint_without_variable_paths_is_refused(tmp_path):
    import json

    model, opt = _two_layers(["first", "second"], seed=0)
    arrays = {f"model/{i}": _numpy(v) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": _numpy(v) for i, v in enumerate(opt.variables)})
    arrays["state"] = np.frombuffer(json.dumps({"next_epoch": 1}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(ckpt.CheckpointMismatch, match="no variable paths stored"):
        ckpt.load_checkpoint(tmp_path / "old.npz", model, opt)
