"""The fused batch-norm op and layer against Keras's own layer, and the torch kernel layout.

``keras_hyperiqa.model.batch_norm.BatchNormalization`` (through
``keras_hyperiqa.model.ops.batch_norm``) must give Keras's outputs,
input/gamma/beta gradients, moving statistics and inference outputs
(channels-first and channels-last) on torch (this process) and jax (a
subprocess), and so must the op's ``keras.ops`` fallback; the comparison must
catch a fused op fed detached statistics. ``use_torch_kernel_layout`` must
change the memory order only: same values, same training step.
"""

import json

import keras_hyperiqa  # noqa: F401  (torch unless KERAS_BACKEND is set)
import keras
import numpy as np
import pytest

from conftest import run_backend

CASES = [((4, 8, 6, 5), 1), ((3, 5, 7, 6), -1), ((16, 12), -1)]

COMPARE = """
import numpy as np, keras
from keras import ops
from keras_hyperiqa.model.batch_norm import BatchNormalization

def compare(shape, axis, dtype="float32"):
    rng = np.random.default_rng(0)
    # an offset mean (conv outputs are not centred) and a non-trivial upstream
    x = (rng.normal(size=shape) * 2 + 3).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    channels = shape[axis]
    gamma = rng.uniform(0.5, 1.5, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    moving_mean = rng.normal(size=channels).astype("float32")
    moving_variance = rng.uniform(0.5, 2.0, channels).astype("float32")
    out = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(axis=axis, epsilon=1e-5, momentum=0.9, dtype=dtype)
        layer.build(shape)
        for v, value in zip(layer.weights, (gamma, beta, moving_mean, moving_variance)):
            v.assign(value)
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]
        if keras.backend.backend() == "torch":
            import torch
            device = layer.gamma.value.device  # the one Keras picked
            xt = torch.tensor(x, requires_grad=True, device=device)
            y = layer(xt, training=True)
            (y.float() * torch.tensor(upstream, device=device)).sum().backward()
            res = [y.detach(), xt.grad, layer.gamma.value.grad, layer.beta.value.grad,
                   layer.moving_mean.value, layer.moving_variance.value]
            infer = layer(torch.tensor(x, device=device), training=False)
        else:
            import jax
            def f(tv, x):
                y, nt = layer.stateless_call(tv, ntv, x, training=True)
                return (y.astype("float32") * upstream).sum(), (y, nt)
            (_, (y, nt)), (gt, gx) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(tv, x)
            res = [y, gx, gt[0], gt[1], nt[0], nt[1]]
            infer = layer.stateless_call(tv, nt, x, training=False)[0]
        out.append([np.asarray(ops.convert_to_numpy(ops.cast(r, "float32"))) for r in res + [infer]])
    keras_out, ours = out
    return [float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(keras_out, ours)]
"""

NAMES = ["output", "d_input", "d_gamma", "d_beta", "moving_mean", "moving_variance", "inference"]


def _compare_here(cases=CASES, dtype="float32"):
    namespace = {}
    exec(COMPARE, namespace)
    return [namespace["compare"](s, a, dtype) for s, a in cases]


def _check(errors, tolerance=2e-5, cases=CASES):
    for (shape, axis), errs in zip(cases, errors):
        for name, err in zip(NAMES, errs):
            assert err < tolerance, f"{shape} axis {axis}: {name} differs by {err:.2g} (relative)"


def test_fused_batch_norm_matches_keras_on_torch():
    _check(_compare_here())


def test_fused_batch_norm_matches_keras_on_jax():
    code = COMPARE + f"\nimport json\nprint(json.dumps([compare(tuple(s), a) for s, a in {json.dumps(CASES)}]))\n"
    _check(json.loads(run_backend("jax", code).strip().splitlines()[-1]))


def test_keras_ops_fallback_matches_keras(monkeypatch):
    from keras_hyperiqa.model import ops as fused

    monkeypatch.setitem(fused._IMPLEMENTATIONS, "torch", fused._batch_norm_keras)
    _check(_compare_here())


def test_fused_batch_norm_mixed_bfloat16_on_torch():
    # bfloat16 activations, float32 parameters and statistics (the GPU setting)
    _check(_compare_here(CASES[:2], dtype="mixed_bfloat16"), tolerance=2e-2, cases=CASES[:2])


def test_the_comparison_catches_detached_statistics(monkeypatch):
    """A fused kernel fed precomputed, detached batch statistics (a tempting
    shortcut) has the right outputs but wrong input gradients."""
    import torch
    import torch.nn.functional as F

    from keras_hyperiqa.model import ops as fused

    def detached(x, gamma, beta, moving_mean, moving_variance, axis, epsilon, training):
        if not training:
            return fused._batch_norm_torch(x, gamma, beta, moving_mean, moving_variance,
                                           axis, epsilon, training)
        xt = x.movedim(axis % x.ndim, 1)
        dims = [d for d in range(xt.ndim) if d != 1]
        with torch.no_grad():
            mean = xt.mean(dims)
            variance = xt.var(dims, unbiased=False)
        y = F.batch_norm(xt, mean, variance, gamma.value, beta.value, training=False, eps=epsilon)
        return y.movedim(1, axis % x.ndim), mean, variance

    monkeypatch.setitem(fused._IMPLEMENTATIONS, "torch", detached)
    errors = _compare_here(CASES[:2])
    for errs in errors:
        assert errs[NAMES.index("output")] < 2e-5
    with pytest.raises(AssertionError, match="d_input"):
        _check(errors)


def test_resnet_backbones_use_the_fused_batch_norm():
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
    from keras_hyperiqa.inference import Predictor

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
