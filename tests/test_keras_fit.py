"""HyperIQA in Keras's own model.compile / model.fit, on torch and jax.

Each backend runs in a subprocess: two epochs of ``model.fit`` with HyperAdam,
the schedule (read through ``model.optimizer``; all fixes applied, and all
reverted as in the original solver), the patch pipeline as a PyDataset and the
image-level SRCC callback, against ``Trainer.fit`` on the same batches.
"""

import json

import numpy as np
import pytest

from conftest import run_backend

SCENARIO = r"""
import json
import keras_hyperiqa
import keras
import numpy as np
from keras_hyperiqa.training import (HyperAdam, HyperIQASchedule, ImageCorrelation,
                                     PatchPyDataset, Trainer)
from keras_hyperiqa.training.schedule import Fixes
from doubles import ArrayEvalSource, ArrayTrainSource, TinyIQA, toy_dataset

LR, EPOCHS = 1e-2, 2
x, y = toy_dataset(n_images=14, seed=5)
train = ArrayTrainSource(x[:7], y[:7], batch_size=3, seed=11)
val = ArrayEvalSource(x[7:], y[7:])


def weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in model.weights]


def scenario(FIXES):
    # Our trainer.
    model = TinyIQA(batchnorm=True)
    opt = HyperAdam(learning_rate=LR)
    trainer = Trainer(model, opt)
    history = trainer.fit(train, EPOCHS, val=val, verbose=0, callbacks=[
        HyperIQASchedule(opt, model.backbone_variables, model.hypernet_variables,
                         lr=LR, lr_ratio=10, decay_every=1, fixes=FIXES)])
    ours = weights(model) + [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in opt.variables]

    # Keras's loop: the schedule finds the optimizer and groups on the model.
    model = TinyIQA(batchnorm=True)
    model.compile(optimizer=HyperAdam(learning_rate=LR), loss="mean_absolute_error")
    data = PatchPyDataset(train)
    rates = []
    probe = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: rates.append(
        model.optimizer.effective_learning_rate(model.hypernet_variables[0])))
    fit = model.fit(data, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[
        HyperIQASchedule(lr=LR, lr_ratio=10, decay_every=1, fixes=FIXES),
        data.epoch_callback(), ImageCorrelation(val), probe])
    keras_fit = weights(model) + [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                                  for v in model.optimizer.variables]

    # Resuming with model.fit(initial_epoch=1): the schedule applies epoch 1's rates.
    resumed = TinyIQA(batchnorm=True)
    resumed.compile(optimizer=HyperAdam(learning_rate=LR), loss="mean_absolute_error")
    late = PatchPyDataset(train)
    seen = []
    resumed.fit(late, epochs=2, initial_epoch=1, shuffle=False, verbose=0, callbacks=[
        HyperIQASchedule(lr=LR, lr_ratio=10, decay_every=1, fixes=FIXES), late.epoch_callback(),
        keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(late._batches[0]))])

    return dict(
        ours=ours, keras_fit=keras_fit,
        trainer_val_srcc=[row["val_srcc"] for row in history],
        trainer_val_plcc=[row["val_plcc"] for row in history],
        fit_val_srcc=fit.history["val_srcc"], fit_val_plcc=fit.history["val_plcc"],
        trainer_hypernet_lr=[row["hypernet_lr"] for row in history], fit_hypernet_lr=rates,
        resumed_lr=resumed.optimizer.effective_learning_rate(resumed.hypernet_variables[0]),
        resumed_epochs=sorted(set(seen)),
    )


print(json.dumps({"fixed": scenario(Fixes()), "original": scenario(Fixes.original())}))
"""


@pytest.fixture(scope="module", params=["torch", "jax"])
def backend_runs(request):
    return request.param, json.loads(run_backend(request.param, SCENARIO).strip().splitlines()[-1])


@pytest.fixture(params=["fixed", "original"])
def runs(request, backend_runs):
    backend, results = backend_runs
    return backend, results[request.param]


def test_model_fit_weights_equal_trainer_fit(runs):
    backend, r = runs
    assert len(r["ours"]) == len(r["keras_fit"])
    # Same batches, loss, gradients and HyperAdam steps; the two loops only
    # differ in how they sum the same float32 numbers (jax: XLA fusions).
    tol = 0.0 if backend == "torch" else 1e-6
    for a, b in zip(r["ours"], r["keras_fit"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol, atol=tol)


def test_schedule_rates_in_model_fit(runs):
    _, r = runs
    # decay_every=1, ratio 10: the hypernet trains at 1e-1 in epochs 0 and 1
    # (frozen from epoch 1 with the original's filter bug).
    np.testing.assert_allclose(r["fit_hypernet_lr"], r["trainer_hypernet_lr"], rtol=1e-6)
    # initial_epoch=1 applies epoch 1's rates and the data's epoch 1 crops.
    assert r["resumed_lr"] == pytest.approx(r["trainer_hypernet_lr"][1], rel=1e-6)
    assert r["resumed_epochs"] == [1]


def test_image_correlation_callback_matches_trainer(runs):
    _, r = runs
    np.testing.assert_allclose(r["fit_val_srcc"], r["trainer_val_srcc"], atol=1e-6)
    np.testing.assert_allclose(r["fit_val_plcc"], r["trainer_val_plcc"], atol=1e-6)


def test_hyperadam_is_serializable(tmp_path):
    import keras

    from keras_hyperiqa.training import HyperAdam

    opt = HyperAdam(learning_rate=3e-4, weight_decay=1e-3, epsilon=1e-9)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone) is HyperAdam
    assert clone.get_config() == opt.get_config()
    assert clone.l2_weight_decay == 1e-3
    # A compiled model saves its HyperAdam and loads it back compiled.
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    model = HyperIQA(backbone="resnet_tiny", patch_size=32)
    model.build((None, 32, 32, 3))
    model.compile(optimizer=HyperAdam(learning_rate=3e-4), loss="mean_absolute_error")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is HyperAdam
    assert float(keras.ops.convert_to_numpy(loaded.optimizer.learning_rate)) == pytest.approx(3e-4)
