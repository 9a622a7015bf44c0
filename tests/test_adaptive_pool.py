"""Adaptive average pooling (multi-scale head, attention fusion) vs numpy and torch.

Issue 11 item 4: a stage map that does not divide by the target size must get
torch's ``adaptive_avg_pool2d`` bins, not a truncated ``k = H // size`` window.
"""

import numpy as np
import pytest

import keras_hyperiqa  # noqa: F401  (sets KERAS_BACKEND=torch if unset)
from conftest import run_backend
from keras_hyperiqa.model.layers import adaptive_avg_pool

torch = pytest.importorskip("torch")

# (H, W, out): divisible, uneven (overlapping bins), smaller than the target, identity.
SIZES = [(56, 56, 7), (28, 14, 7), (10, 10, 7), (15, 9, 4), (5, 5, 7), (7, 7, 7)]


def numpy_adaptive_avg_pool(x, size):
    """NHWC reference written straight from the bin definition."""
    n, h, w, c = x.shape
    out = np.zeros((n, size, size, c), dtype=np.float64)
    for i in range(size):
        h0, h1 = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            w0, w1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
    return out


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


@pytest.mark.parametrize("h,w,size", SIZES)
def test_adaptive_pool_matches_numpy_and_torch(h, w, size):
    x = np.random.RandomState(h * 100 + w).normal(size=(2, h, w, 3)).astype("float32")
    ref = numpy_adaptive_avg_pool(x, size)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    theirs = torch.nn.functional.adaptive_avg_pool2d(xt, size).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(theirs, ref, rtol=0, atol=1e-6)
    last = _np(adaptive_avg_pool(x, size, "channels_last"))
    first = _np(adaptive_avg_pool(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), size,
                             "channels_first")).transpose(0, 2, 3, 1)
    for ours in (last, first):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_adaptive_pool_jax():
    code = """
        import numpy as np, keras_hyperiqa
        from keras_hyperiqa.model.layers import adaptive_avg_pool
        x = np.random.RandomState(0).normal(size=(2, 28, 14, 3)).astype("float32")
        print("OUT", np.asarray(adaptive_avg_pool(x, 7)).ravel().tolist())
    """
    out = run_backend("jax", code)
    got = np.array([float(v) for v in out.split("OUT", 1)[1].strip()[1:-1].split(",")])
    x = np.random.RandomState(0).normal(size=(2, 28, 14, 3)).astype("float32")
    np.testing.assert_allclose(got, numpy_adaptive_avg_pool(x, 7).ravel(), rtol=0, atol=1e-6)
