import csv
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

# The suite runs on the torch backend in-process; jax checks run in subprocesses.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# On a GPU, convolutions (cuDNN) and jax matmuls default to TF32/bf16 passes
# (about 1e-3 relative), far above the float32 tolerances of the parity tests
# against CPU references: the suite and its subprocesses run full float32.
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


def pytest_configure(config):
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


# the test doubles (tests/doubles.py) and the benchmarks package beside scripts/
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_backend(backend, code, timeout=600):
    """Run ``code`` in a fresh Python with ``KERAS_BACKEND=backend``; return stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    # the test doubles (``doubles``) are importable there as here
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(__file__), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
        text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{backend} subprocess failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture
def backend_runner():
    return run_backend


def state_difference(a, b, optimizer_paths, skip=(), beta_2=0.999):
    """The largest difference between two training states, relative to each quantity's size.

    ``a``/``b``: dicts of arrays; ``o<i>`` is optimizer variable ``i``
    (``optimizer_paths[i]``), any other key a weight, loss or metric, measured
    against ``max |a[key]|``. Adam's first moment may cancel to near zero while
    its gradients do not, so it is measured against the largest gradient its
    second moment implies (``sqrt(max v / (1 - beta_2))``); the second moment,
    a sum of squares, against its own size, with twice the gradient's relative
    error. Compare the result with ``keras_hyperiqa.numerics.training_tolerance``.
    """
    assert sorted(a) == sorted(b)
    assert len(optimizer_paths) == sum(k.startswith("o") and k[1:].isdigit() for k in a)
    worst = 0.0
    for k in a:
        if k in skip:
            continue
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        scale, weight = (float(np.max(np.abs(x))) if x.size else 0.0), 1.0
        if k.startswith("o") and k[1:].isdigit():
            path = optimizer_paths[int(k[1:])]
            if path.endswith("_momentum"):
                v = a[f"o{optimizer_paths.index(path[:-len('_momentum')] + '_velocity')}"]
                scale = float(np.sqrt(np.max(np.asarray(v, np.float64)) / (1 - beta_2)))
            elif path.endswith("_velocity"):
                weight = 0.5
        diff = float(np.max(np.abs(x - y))) if x.size else 0.0
        worst = max(worst, weight * diff / scale if scale > 0 else diff)
    return worst


def noisy_ramps(n, levels, noise_step, size, seed=0):
    """``n`` horizontal grey ramps (``size`` = (height, width), uint8 RGB); image ``i`` carries
    Gaussian noise of sigma ``(i % levels) * noise_step``, all drawn in order from one generator."""
    h, w = size
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(0, 255, w)[None, :, None], (h, 1, 3))
    return [np.clip(base + rng.normal(0, (i % levels) * float(noise_step), base.shape), 0, 255)
            .astype(np.uint8) for i in range(n)]


def write_csv_dataset(root, images, labels, refs=None, names="img/{:02d}.png"):
    """A dataset in the generic ``csv`` reader's format under ``root``: image ``i`` saved as
    ``names.format(i)``, and labels.csv with the columns image,label[,ref]. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        name = names.format(i)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / name)
        rows.append([name, label] if refs is None else [name, label, refs[i]])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"] if refs is None else ["image", "label", "ref"])
        w.writerows(rows)
    return root
