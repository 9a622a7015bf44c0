"""HyperAdam vs torch.optim.Adam on torch and jax; torch vs jax training parity.

The jax half runs this very file as a script under ``KERAS_BACKEND=jax`` (the
Keras backend is fixed per process); it writes its results to an ``.npz`` that
the tests below compare with the torch backend (this process) and with a
plain ``torch.optim.Adam`` reference.
"""

import os
import subprocess
import sys

import keras_hyperiqa  # noqa: F401  (torch unless KERAS_BACKEND is set)
import keras
import numpy as np

from conftest import state_difference
from keras_hyperiqa.numerics import training_tolerance

STEPS = 12
SWITCH = 6  # base lr and a multiplier change before this step
SHAPES = [(3, 4), (5,), (2, 2, 3), (4,)]
GROUP = [0, 1, 1, 0]  # variable -> group (0: lr 1e-3, 1: lr 1e-2)
# The last variable has tiny values and gradients, where torch's epsilon
# placement (after the bias-corrected sqrt(v)) differs visibly from Keras's.
SCALE = [1.0, 1.0, 1.0, 1e-7]


def _optimizer_inputs():
    rng = np.random.default_rng(0)
    init = [(rng.normal(size=s) * k).astype(np.float32)
            for s, k in zip(SHAPES, SCALE)]
    grads = [
        [(rng.normal(size=s) * k).astype(np.float32)
         for s, k in zip(SHAPES, SCALE)]
        for _ in range(STEPS)
    ]
    return init, grads


def _group_lrs(step, switch=SWITCH):
    """(group-0 lr, group-1 lr) for a step: 1e-3/1e-2, then 5e-4/1.5e-3 from ``switch``."""
    return (1e-3, 1e-2) if step < switch else (5e-4, 1.5e-3)


def optimizer_scenario():
    """HyperAdam over SHAPES: base lr 1e-3, multipliers 1 / 10; at step 6
    base lr 5e-4 and group-1 multiplier 3. On jax the steps go through a
    jit-compiled ``stateless_apply``; on torch through ``apply``."""
    from keras_hyperiqa.training.optimizer import HyperAdam

    init, grads = _optimizer_inputs()
    variables = [keras.Variable(a, name=f"w{i}") for i, a in enumerate(init)]
    opt = HyperAdam(learning_rate=1e-3, weight_decay=5e-4)
    opt.build(variables)
    group1 = [v for v, g in zip(variables, GROUP) if g == 1]
    opt.set_group_multiplier(group1, 10.0)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step_fn = jax.jit(
            lambda ov, g, tv: opt.stateless_apply(ov, g, tv)
        )
    for step in range(STEPS):
        if step == SWITCH:
            opt.learning_rate = 5e-4
            opt.set_group_multiplier(group1, 3.0)
        if backend == "jax":
            tv, ov = step_fn(
                [v.value for v in opt.variables], grads[step],
                [v.value for v in variables],
            )
            for v, val in zip(variables, tv):
                v.assign(val)
            for v, val in zip(opt.variables, ov):
                v.assign(val)
        else:
            import torch

            with torch.no_grad():
                opt.apply([torch.tensor(g, device=v.value.device)
                           for g, v in zip(grads[step], variables)], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables], int(
        keras.ops.convert_to_numpy(opt.iterations)
    )


def torch_adam_reference(switch=SWITCH):
    """torch.optim.Adam over the same groups; ``switch=STEPS`` keeps the first lrs throughout."""
    import torch

    init, grads = _optimizer_inputs()
    params = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    groups = [
        {"params": [p for p, g in zip(params, GROUP) if g == k], "lr": lr}
        for k, lr in enumerate(_group_lrs(0))
    ]
    opt = torch.optim.Adam(groups, weight_decay=5e-4)
    for step in range(STEPS):
        for group, lr in zip(opt.param_groups, _group_lrs(step, switch)):
            group["lr"] = lr
        for p, g in zip(params, grads[step]):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


def training_scenario():
    """TinyIQA with BatchNorm, weights from numpy, 3 epochs with the schedule
    (fix 2 reverted so the hypernet lr decays every epoch, decay_every=1)."""
    from keras_hyperiqa.training.optimizer import HyperAdam
    from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule
    from doubles import (
        ArrayEvalSource,
        ArrayTrainSource,
        TinyIQA,
        toy_dataset,
    )
    from keras_hyperiqa.training.trainer import Trainer

    model = TinyIQA(batchnorm=True, name="tiny_iqa")  # explicit: auto names get _1 suffixes when other tests built one first
    rng = np.random.default_rng(42)
    for v in model.trainable_variables:
        v.assign(rng.normal(0, 0.4, size=v.shape).astype(np.float32))
    images, labels = toy_dataset(n_images=10)
    train = ArrayTrainSource(images[:7], labels[:7], batch_size=4, seed=3)
    val = ArrayEvalSource(images[7:], labels[7:])
    opt = HyperAdam(learning_rate=1e-2, weight_decay=5e-4)
    trainer = Trainer(model, opt)
    schedule = HyperIQASchedule(
        opt, model.backbone_variables, model.hypernet_variables,
        lr=1e-2, lr_ratio=10, fixes=Fixes(backbone_lr_decays=False),
        decay_every=1,
    )
    history = trainer.fit(train, 3, val=val, callbacks=[schedule], verbose=0)
    return {
        "paths": np.array([v.path for v in model.variables]),
        "weights": [keras.ops.convert_to_numpy(v) for v in model.variables],
        "opt": [keras.ops.convert_to_numpy(v) for v in opt.variables],
        "opt_paths": [v.path for v in opt.variables],
        "steps": int(keras.ops.convert_to_numpy(opt.iterations)),
        "loss": np.array([row["loss"] for row in history]),
        "val_srcc": np.array([row["val_srcc"] for row in history]),
        "hypernet_lr": np.array([row["hypernet_lr"] for row in history]),
    }


def _save(path):
    weights, iterations = optimizer_scenario()
    train = training_scenario()
    arrays = {f"opt_w{i}": w for i, w in enumerate(weights)}
    arrays["opt_iterations"] = np.array(iterations)
    arrays["paths"] = train["paths"]
    arrays.update({f"w{i}": w for i, w in enumerate(train["weights"])})
    arrays.update({f"o{i}": w for i, w in enumerate(train["opt"])})
    arrays["opt_paths"] = np.array(train["opt_paths"])
    for key in ("loss", "val_srcc", "hypernet_lr"):
        arrays[key] = train[key]
    arrays["backend"] = np.array(keras.backend.backend())
    np.savez(path, **arrays)


# --------------------------------------------------------------------- tests
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "jax.npz"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = np.load(out)
    assert str(data["backend"]) == "jax"
    return data


def test_hyperadam_matches_torch_adam_two_groups_torch_backend():
    assert keras.backend.backend() == "torch"
    weights, iterations = optimizer_scenario()
    reference = torch_adam_reference()
    assert iterations == STEPS
    for ours, ref in zip(weights, reference):
        assert np.max(np.abs(ours - ref)) <= 1e-6
    # The reference really moved every variable, and the lr switch moved
    # every one of them elsewhere than the first lrs would have, by far more
    # than the 1e-6 above: a HyperAdam that ignored the new base lr or the
    # new multiplier would fail the comparison.
    init, _ = _optimizer_inputs()
    assert min(np.max(np.abs(r - a)) for r, a in zip(reference, init)) > 1e-4
    unswitched = torch_adam_reference(switch=STEPS)
    moved = [float(np.max(np.abs(r - u))) for r, u in zip(reference, unswitched)]
    assert min(moved) > 1e-4, moved


def test_hyperadam_matches_torch_adam_two_groups_jax_backend(jax_results):
    reference = torch_adam_reference()
    assert int(jax_results["opt_iterations"]) == STEPS
    for i, ref in enumerate(reference):
        assert np.max(np.abs(jax_results[f"opt_w{i}"] - ref)) <= 1e-6


def test_torch_and_jax_train_to_the_same_weights(jax_results):
    torch_run = training_scenario()
    assert list(torch_run["paths"]) == list(jax_results["paths"])
    strip = lambda paths: [str(p).split("/", 1)[1] for p in paths]  # noqa: E731  (numbered names)
    assert strip(torch_run["opt_paths"]) == strip(jax_results["opt_paths"])
    ours = {f"w{i}": w for i, w in enumerate(torch_run["weights"])}
    # Slots, step count, learning rate and multipliers.
    ours.update({f"o{i}": w for i, w in enumerate(torch_run["opt"])})
    ours["loss"] = torch_run["loss"]
    theirs = {k: jax_results[k] for k in ours}
    # Float32 error growth over the run's Adam steps of TinyIQA (reduction length
    # 48 + 8 + 6, batches of 4; keras_hyperiqa.numerics), relative to each quantity.
    tolerance = training_tolerance(62, steps=torch_run["steps"], batch=4)
    assert torch_run["steps"] == 12
    diff = state_difference(ours, theirs, list(torch_run["opt_paths"]))
    print(f"\njax vs torch after {torch_run['steps']} steps: {diff:.2e} relative (bound {tolerance:.2e})")
    assert diff <= tolerance, (diff, tolerance)
    # The BatchNorm moving statistics were updated (non-trainable state
    # flows through the jax stateless step).
    paths = list(torch_run["paths"])
    moving_mean = torch_run["weights"][paths.index("tiny_iqa/norm/moving_mean")]
    assert np.max(np.abs(moving_mean)) > 1e-3
    np.testing.assert_allclose(
        torch_run["hypernet_lr"], [1e-1, 1e-1, 1e-2], rtol=1e-6
    )


if __name__ == "__main__":
    _save(sys.argv[1])
