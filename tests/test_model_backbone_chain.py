"""The block-chained backbone against the plain functional call, and ``.keras`` files across the change.

``HyperIQA`` runs its ResNet feature model as a chain of sub-models cut at the
residual-block outputs (``keras_hyperiqa.model.backbones.BlockChain``): the
scores, the gradients of every trainable variable and the moving statistics
must equal those of one functional call, on torch (this process) and jax (a
subprocess). ``tests/data/legacy_resnet_tiny.keras`` was saved by the code
before the change: it must load with the same scores, and saving again must
store the same variable paths.
"""

import io
import json
import zipfile
from pathlib import Path

import keras_hyperiqa  # noqa: F401  (torch unless KERAS_BACKEND is set)
import keras
import numpy as np
import pytest

from conftest import run_backend

DATA = Path(__file__).parent / "data"

PARITY = """
import numpy as np, keras
from keras import ops
from keras_hyperiqa.model.backbones import BlockChain
from keras_hyperiqa.model.hyperiqa import HyperIQA

def num(t):
    return np.array(ops.convert_to_numpy(ops.stop_gradient(t)))

def chain_vs_functional(backbone, patch, n):
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone=backbone, patch_size=patch)
    model.build((None, patch, patch, 3))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (n, patch, patch, 3)).astype("float32")
    y = ops.convert_to_tensor(rng.uniform(0, 100, (n,)).astype("float32"))
    chain = model._backbone_chain
    assert len(chain.segments) > 4, len(chain.segments)  # the stem and every block
    initial = [num(v) for v in model.variables]
    results = []
    for runner in (chain, BlockChain(model.backbone_features)):
        for v, value in zip(model.variables, initial):
            v.assign(value)
        model._backbone_chain = runner
        trainable = model.trainable_variables
        if keras.backend.backend() == "torch":
            import torch
            values = [v.value for v in trainable]
            scores = model(x, training=True)
            loss = ops.mean(ops.abs(scores - y))
            grads = torch.autograd.grad(loss, values)
            moving = [v.value for v in model.non_trainable_variables]
            infer = model(x, training=False)
        else:
            import jax
            tv = [v.value for v in trainable]
            ntv = [v.value for v in model.non_trainable_variables]
            def f(tv):
                scores, nt = model.stateless_call(tv, ntv, x, training=True)
                return ops.mean(ops.abs(scores - y)), (scores, nt)
            (_, (scores, moving)), grads = jax.value_and_grad(f, has_aux=True)(tv)
            infer = model.stateless_call(tv, moving, x, training=False)[0]
        results.append([num(t) for t in [scores, infer] + list(moving) + list(grads)])
    model._backbone_chain = chain
    a, b = results
    return max(float(np.abs(p - q).max() / (np.abs(q).max() + 1e-12)) for p, q in zip(a, b))
"""


def _parity_here(backbone, patch, n):
    namespace = {}
    exec(PARITY, namespace)
    return namespace["chain_vs_functional"](backbone, patch, n)


def test_block_chain_matches_functional_call_torch():
    assert _parity_here("resnet_tiny", 64, 3) < 1e-6


def test_block_chain_matches_functional_call_jax():
    code = PARITY + "\nimport json\nprint(json.dumps(chain_vs_functional('resnet_tiny', 64, 3)))\n"
    assert json.loads(run_backend("jax", code).strip().splitlines()[-1]) < 1e-5


@pytest.mark.slow
def test_block_chain_matches_functional_call_resnet50():
    assert _parity_here("resnet50", 224, 2) < 1e-6


def test_block_chain_cuts():
    from keras_hyperiqa.model.backbones import block_chain, build_backbone

    backbone, features = build_backbone("resnet_tiny", 64)
    chain = block_chain(backbone, features)
    assert [m.name for m in chain.segments][:2] == ["backbone_features_part0", "backbone_features_part1"]
    # every tap taken once, in order
    assert sorted(k for taps in chain.taps for k in taps) == [0, 1, 2, 3]
    other = keras.Model(features.inputs, features.outputs[:2])
    inside = backbone.get_layer("stack3_block0_1_relu").output  # inside a block: no cut
    single = block_chain(backbone, keras.Model(features.inputs, [features.outputs[0], inside]))
    assert single.single and len(single.segments) == 1
    assert len(block_chain(backbone, other).segments) == 3  # stops at the last tap


def _weight_paths(path):
    import h5py

    with zipfile.ZipFile(path) as z:
        f = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        found = {}
        f.visititems(lambda name, obj: found.__setitem__(
            name, obj.shape if hasattr(obj, "shape") else None))
        return found


def test_keras_files_saved_before_the_change_load_unchanged(tmp_path):
    model = keras.saving.load_model(DATA / "legacy_resnet_tiny.keras")
    assert len(model._backbone_chain.segments) == 5
    ref = np.load(DATA / "legacy_resnet_tiny.npz")
    scores = keras.ops.convert_to_numpy(model(ref["x"], training=False))
    np.testing.assert_allclose(scores, ref["scores"], rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "again.keras")
    assert _weight_paths(tmp_path / "again.keras") == _weight_paths(DATA / "legacy_resnet_tiny.keras")
