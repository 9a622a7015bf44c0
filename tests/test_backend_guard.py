"""The TensorFlow backend is refused in one line; our commands' import blocks; error text helpers."""

import os
import subprocess
import sys

import pytest

from keras_hyperiqa import backend as hb
from keras_hyperiqa.errors import BackendError, UserError, first_line


def _python(code, tmp_path, **env):
    # A fresh KERAS_HOME: no keras.json, so keras alone would pick TensorFlow.
    full = dict(os.environ, KERAS_HOME=str(tmp_path), **env)
    if "KERAS_BACKEND" not in env:
        full.pop("KERAS_BACKEND", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_keras_imported_first_on_tensorflow_is_refused_in_one_line(tmp_path):
    proc = _python("import keras\nimport keras_hyperiqa\n", tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("keras_hyperiqa.errors.BackendError: keras is running on tensorflow")
    assert "import keras_hyperiqa before keras" in last and "KERAS_BACKEND=torch" in last


def test_cli_refuses_a_tensorflow_backend_with_status_2(tmp_path):
    code = "from keras_hyperiqa.cli import main\nmain(['predict', 'm.keras', 'x.jpg'])\n"
    (tmp_path / "m.keras").write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("Error: KERAS_BACKEND=tensorflow: keras-hyperiqa needs torch or jax; "
                                   "set KERAS_BACKEND=torch or KERAS_BACKEND=jax")


def test_backend_error_is_a_user_error_and_an_import_error():
    assert issubclass(BackendError, UserError) and issubclass(BackendError, ImportError)


def test_block_imports_is_undone():
    name = "json"  # importable, not yet imported in this test (dropped from sys.modules)
    saved = sys.modules.pop(name, None)
    try:
        hb.block_imports([name, "os"])  # an imported module is never blocked
        with pytest.raises(ImportError):
            __import__(name)
        assert name not in sys.modules  # absent, as when not installed (scipy looks there)
        assert __import__("os") is os
        hb.unblock_imports()
        assert __import__(name).dumps([1]) == "[1]"
    finally:
        hb.unblock_imports()
        if saved is not None:
            sys.modules[name] = saved


def test_first_line_cuts_at_a_word():
    err = ValueError("alpha beta gamma delta\nsecond line")
    assert first_line(err) == "alpha beta gamma delta"
    assert first_line(err, limit=13) == "alpha beta ..."
    assert first_line(ValueError("")) == "ValueError"
