"""Keras's own callbacks in ``Trainer.fit``, on torch and jax.

Keras's TensorBoard callback writes through ``tensorflow.summary``, so every
scenario runs in a fresh subprocess (TensorFlow stays out of the test process)
under each backend; the subprocess writes a JSON of what it observed.
"""

import json
import os

import numpy as np
import pytest

from conftest import run_backend

SCENARIO = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
import keras_hyperiqa
import keras
import numpy as np
from keras_hyperiqa.training import HyperAdam, HyperIQASchedule, Trainer
from doubles import ArrayEvalSource, ArrayTrainSource, TinyIQA, toy_dataset

work = {work!r}
LR = 1e-2


def setup(seed=0):
    x, y = toy_dataset(n_images=10, seed=5)
    train = ArrayTrainSource(x[:7], y[:7], batch_size=3, seed=11)
    val = ArrayEvalSource(x[7:], y[7:])
    test = ArrayEvalSource(x[:4], y[:4], seed=3)
    model = TinyIQA(batchnorm=True, seed=seed)
    opt = HyperAdam(learning_rate=LR)
    trainer = Trainer(model, opt)
    schedule = HyperIQASchedule(opt, model.backbone_variables, model.hypernet_variables,
                                lr=LR, lr_ratio=10, decay_every=1)
    return model, opt, trainer, schedule, train, val, test


def weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in model.weights]


def events(directory):
    import tensorflow as tf

    out = {{}}
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (int(event.step), float(tf.make_ndarray(value.tensor))))
    return out


result = {{}}

# TensorBoard, CSVLogger, ModelCheckpoint and EarlyStopping together.
model, opt, trainer, schedule, train, val, test = setup()
tb, csv_path, ckpt = (os.path.join(work, n) for n in ("tb", "log.csv", "ckpt"))
stopper = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=2)
history = trainer.fit(train, 6, val=val, test=test, verbose=0, callbacks=[
    schedule,
    keras.callbacks.TensorBoard(tb),
    keras.callbacks.CSVLogger(csv_path),
    keras.callbacks.ModelCheckpoint(os.path.join(ckpt, "e{{epoch}}.weights.h5"),
                                    save_weights_only=True),
    stopper,
])
result["epochs_run"] = [row["epoch"] for row in history]
result["stopped_epoch"] = stopper.stopped_epoch
result["history_lr"] = [row["backbone_lr"] for row in history]
result["history_val_srcc"] = [row["val_srcc"] for row in history]
result["history_test_srcc"] = [row["test_srcc"] for row in history]
result["history_loss"] = [row["loss"] for row in history]
result["optimizer_after_fit"] = getattr(model, "optimizer", None) is None
result["train_events"] = events(os.path.join(tb, "train"))
result["val_events"] = events(os.path.join(tb, "validation"))
with open(csv_path) as f:
    result["csv"] = f.read()
result["checkpoints"] = sorted(os.listdir(ckpt))
reloaded = TinyIQA(batchnorm=True, seed=7)
reloaded.load_weights(os.path.join(ckpt, "e3.weights.h5"))
result["final_weights"] = weights(model)
result["checkpoint_weights"] = weights(reloaded)

# LearningRateScheduler and ReduceLROnPlateau drive model.optimizer.
model, opt, trainer, schedule, train, val, test = setup()
trainer.fit(train, 2, verbose=0, callbacks=[
    keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.5 ** (epoch + 1))])
result["lr_scheduler"] = float(keras.ops.convert_to_numpy(opt.learning_rate))
model, opt, trainer, schedule, train, val, test = setup()
trainer.fit(train, 2, verbose=0, callbacks=[keras.callbacks.ReduceLROnPlateau(
    monitor="loss", min_delta=1e9, patience=1, factor=0.1)])
result["plateau"] = float(keras.ops.convert_to_numpy(opt.learning_rate))


# BackupAndRestore: killed in epoch 1, a new process resumes at epoch 1.
class Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            raise KeyboardInterrupt("killed")


model, opt, trainer, schedule, train, val, test = setup()
trainer.fit(train, 3, val=val, verbose=0, callbacks=[schedule])
result["straight"] = weights(model) + [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                                       for v in opt.variables]
backup = os.path.join(work, "backup")
model, opt, trainer, schedule, train, val, test = setup()
try:
    trainer.fit(train, 3, val=val, verbose=0,
                callbacks=[schedule, keras.callbacks.BackupAndRestore(backup), Kill()])
except KeyboardInterrupt:
    pass
model, opt, trainer, schedule, train, val, test = setup(seed=123)
history = trainer.fit(train, 3, val=val, verbose=0,
                      callbacks=[schedule, keras.callbacks.BackupAndRestore(backup)])
result["resumed_epochs"] = [row["epoch"] for row in history]
result["resumed"] = weights(model) + [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                                      for v in opt.variables]
with open(os.path.join(work, "result.json"), "w") as f:
    json.dump(result, f)
"""


@pytest.fixture(scope="module", params=["torch", "jax"])
def observed(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"callbacks-{request.param}")
    code = SCENARIO.format(tests=os.path.dirname(__file__), work=str(work))
    run_backend(request.param, code)
    with open(work / "result.json") as f:
        return json.load(f)


def test_early_stopping_stops_the_loop(observed):
    # min_delta 1e9: epoch 0 is the best, patience 2 stops after epoch 2.
    assert observed["epochs_run"] == [0, 1, 2]
    assert observed["stopped_epoch"] == 2


def test_tensorboard_logs_rates_and_metrics(observed):
    train, val = observed["train_events"], observed["val_events"]
    # The rate that trained each epoch (decay_every=1: lr / 10 from epoch 2).
    lr = [value for _, value in train["epoch_learning_rate"]]
    np.testing.assert_allclose(lr, [1e-2, 1e-2, 1e-3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_backbone_lr"]],
                               observed["history_lr"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]],
                               observed["history_loss"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in train["epoch_test_srcc"]],
                               observed["history_test_srcc"], rtol=1e-6)
    # Validation metrics under the validation writer, per epoch...
    np.testing.assert_allclose([v for _, v in val["epoch_srcc"]],
                               observed["history_val_srcc"], rtol=1e-6)
    # ...and from on_test_end, against the optimizer's step count (7 images
    # x 2 patches in batches of 3: 5 steps per epoch).
    steps = [step for step, _ in val["evaluation_srcc_vs_iterations"]]
    assert steps == [5, 10, 15]
    test_steps = [step for step, _ in val["evaluation_test_srcc_vs_iterations"]]
    assert test_steps == [5, 10, 15]


def test_csv_logger_and_model_checkpoint(observed):
    lines = observed["csv"].strip().splitlines()
    header = lines[0].split(",")
    assert header[0] == "epoch" and {"loss", "val_srcc", "test_plcc", "backbone_lr"} <= set(header)
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]
    assert observed["checkpoints"] == ["e1.weights.h5", "e2.weights.h5", "e3.weights.h5"]
    for a, b in zip(observed["final_weights"], observed["checkpoint_weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_model_optimizer_is_set_during_fit_only(observed):
    # LearningRateScheduler (0.5 ** (epoch + 1) at the start of epoch 1) and
    # ReduceLROnPlateau (epoch 0 is the best, patience 1: lr x 0.1 after epoch 1).
    assert observed["lr_scheduler"] == pytest.approx(0.25)
    assert observed["plateau"] == pytest.approx(1e-3, rel=1e-5)
    assert observed["optimizer_after_fit"]


def test_backup_and_restore_resumes_exactly(observed):
    assert observed["resumed_epochs"] == [1, 2]
    assert len(observed["straight"]) == len(observed["resumed"])
    for a, b in zip(observed["straight"], observed["resumed"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
