"""The closed-form batch norm against Keras's own layer, and the torch kernel layout.

``keras_hyperiqa.model.batch_norm.BatchNormalization`` must give Keras's
outputs, input/gamma/beta gradients and moving statistics (channels-first and
channels-last) on torch (this process) and jax (a subprocess);
``use_torch_kernel_layout`` must change the memory order only: same values,
same training step.
"""

import json

import keras_hyperiqa  # noqa: F401  (torch unless KERAS_BACKEND is set)
import keras
import numpy as np
import pytest

from conftest import run_backend

CASES = [((4, 8, 6, 5), 1), ((3, 5, 7, 6), -1)]

COMPARE = """
import json
import numpy as np, keras
from keras import ops
from keras_hyperiqa.model.batch_norm import BatchNormalization

def compare(shape, axis):
    rng = np.random.default_rng(0)
    # an offset mean (conv outputs are not centred) and a non-trivial upstream
    x = (rng.normal(size=shape) * 2 + 3).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    channels = shape[axis]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    out = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(axis=axis, epsilon=1e-5, momentum=0.9)
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]
        if keras.backend.backend() == "torch":
            import torch
            device = layer.gamma.value.device  # the one Keras picked
            xt = torch.tensor(x, requires_grad=True, device=device)
            y = layer(xt, training=True)
            (y * torch.tensor(upstream, device=device)).sum().backward()
            res = [y.detach(), xt.grad, layer.gamma.value.grad, layer.beta.value.grad,
                   layer.moving_mean.value, layer.moving_variance.value]
            infer = layer(torch.tensor(x, device=device), training=False)
        else:
            import jax
            def f(tv, x):
                y, nt = layer.stateless_call(tv, ntv, x, training=True)
                return (y * upstream).sum(), (y, nt)
            (_, (y, nt)), (gt, gx) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(tv, x)
            res = [y, gx, gt[0], gt[1], nt[0], nt[1]]
            infer = layer.stateless_call(tv, nt, x, training=False)[0]
        out.append([np.asarray(ops.convert_to_numpy(r)) for r in res + [infer]])
    keras_out, ours = out
    return [float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(keras_out, ours)]

print(json.dumps([compare(tuple(s), a) for s, a in %s]))
"""

NAMES = ["output", "d_input", "d_gamma", "d_beta", "moving_mean", "moving_variance", "inference"]


def _check(errors):
    for (shape, axis), errs in zip(CASES, errors):
        for name, err in zip(NAMES, errs):
            assert err < 2e-5, f"{shape} axis {axis}: {name} differs by {err:.2g} (relative)"


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_closed_form_batch_norm_matches_keras(backend):
    code = COMPARE % json.dumps([[list(s), a] for s, a in CASES])
    _check(json.loads(run_backend(backend, code).strip().splitlines()[-1]))


def test_resnet_backbones_use_the_closed_form_batch_norm():
    from keras_hyperiqa.model.batch_norm import BatchNormalization
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    model = HyperIQA(backbone="resnet_tiny")
    norms = [layer for layer in model.backbone.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is BatchNormalization for layer in norms)
    # same variables as Keras's layer: names in saved files are unchanged
    assert [w.name for w in norms[0].weights] == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_torch_kernel_layout_changes_memory_order_only():
    from keras_hyperiqa.model.hyperiqa import HyperIQA
    from keras_hyperiqa.training.optimizer import HyperAdam
    from keras_hyperiqa.training.trainer import Trainer

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = rng.uniform(0, 100, (2,)).astype("float32")
    results = []
    for relayout in (False, True):
        keras.utils.set_random_seed(0)
        model = HyperIQA(backbone="resnet_tiny", patch_size=64, name="hyper_iqa")
        model.build((None, 64, 64, 3))
        before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]
        if relayout:
            trainer = Trainer(model, HyperAdam(learning_rate=1e-3, weight_decay=5e-4))
        else:  # the same step with Keras's row-major storage
            import keras_hyperiqa.training.trainer as trainer_module

            original = trainer_module.use_torch_kernel_layout
            trainer_module.use_torch_kernel_layout = lambda variables: None
            try:
                trainer = Trainer(model, HyperAdam(learning_rate=1e-3, weight_decay=5e-4))
            finally:
                trainer_module.use_torch_kernel_layout = original
        kernels = [v.value for v in model.variables if len(v.shape) == 4]
        assert kernels
        assert all(k.permute(3, 2, 0, 1).is_contiguous() == relayout for k in kernels)
        after = [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        losses = [trainer.train_step(x, y) for _ in range(3)]
        # a checkpoint restore (assign) keeps the layout
        k = next(i for i, v in enumerate(model.variables) if len(v.shape) == 4)
        model.variables[k].assign(after[k])
        assert all(k.permute(3, 2, 0, 1).is_contiguous() == relayout
                   for k in (v.value for v in model.variables if len(v.shape) == 4))
        slots = [v.value for v in trainer.optimizer.variables if len(v.shape) == 4]
        assert slots and all(s.permute(3, 2, 0, 1).is_contiguous() == relayout for s in slots)
        results.append((losses, [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]))
    (loss_a, vars_a), (loss_b, vars_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(vars_a, vars_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_torch_predictor_splits_large_batches_without_changing_scores():
    from keras_hyperiqa.model.hyperiqa import HyperIQA
    from keras_hyperiqa.training.trainer import Predictor

    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny", patch_size=64)
    model.build((None, 64, 64, 3))
    x = np.random.default_rng(1).uniform(0, 255, (7, 64, 64, 3)).astype("float32")
    whole = Predictor(model, max_batch=7)(x)
    calls = []
    original_call = model.call

    def counting_call(inputs, *args, **kwargs):
        calls.append(int(inputs.shape[0]))
        return original_call(inputs, *args, **kwargs)

    model.call = counting_call
    try:
        split = Predictor(model, max_batch=3)(x)
    finally:
        del model.call
    assert calls == [3, 3, 1]
    assert split.shape == (7,)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_batch"):
        Predictor(model, max_batch=0)
