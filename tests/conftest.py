import os
import subprocess
import sys
import textwrap

import pytest

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
sys.path.insert(0, os.path.dirname(__file__))


def run_backend(backend, code, timeout=600):
    """Run ``code`` in a fresh Python with ``KERAS_BACKEND=backend``; return stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
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
