"""Every private Keras / keras-hub name in ``keras_hyperiqa.compat`` still exists; versions below the floors are refused."""

import os
import subprocess
import sys

import pytest

from keras_hyperiqa import compat
from keras_hyperiqa.errors import UserError


@pytest.mark.parametrize("module,name", compat.PRIVATE_NAMES,
                         ids=[f"{m}.{n}" for m, n in compat.PRIVATE_NAMES])
def test_private_name_exists(module, name):
    try:
        compat.private(module, name)
    except compat.CompatError as err:
        pytest.fail(str(err))


def test_missing_private_name_is_a_clear_error():
    with pytest.raises(compat.CompatError, match="keras_hub.src.utils.nope.missing"):
        compat.private("keras_hub.src.utils.nope", "missing")


def test_backup_and_restore_epoch_attribute(tmp_path):
    """``BackupAndRestore`` still hands the restored epoch over as ``model._initial_epoch``."""
    import keras

    from doubles import TinyIQA

    model = TinyIQA()
    model.compile(optimizer="sgd", loss="mae")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    backup.set_model(model)
    backup._current_epoch = 3
    backup._save_model()
    compat.clear_restored_initial_epoch(model)
    assert compat.restored_initial_epoch(model) is None
    restorer = keras.callbacks.BackupAndRestore(str(tmp_path))
    restorer.set_model(model)
    restorer.on_train_begin()
    assert compat.restored_initial_epoch(model) == 3, (
        "keras.callbacks.BackupAndRestore no longer sets model._initial_epoch; "
        "update keras_hyperiqa.compat.restored_initial_epoch")


def test_optimizer_private_names():
    """Slot index and built-variable list still read as ``compat`` reads them."""
    import keras

    a, b = keras.Variable([1.0, 2.0]), keras.Variable(3.0)
    opt = keras.optimizers.Adam()
    opt.build([a, b])
    msg = ("keras.optimizers.Optimizer no longer has _get_variable_index/_trainable_variables; "
           "update keras_hyperiqa.compat.optimizer_variable_index/optimizer_built_variables")
    assert compat.optimizer_variable_index(opt, b) == 1, msg
    assert list(compat.optimizer_built_variables(opt)) == [a, b], msg


def test_fused_update_hook_is_called_by_apply():
    """``Optimizer.apply`` still routes updates through ``_backend_update_step``."""
    import keras
    import numpy as np

    calls = []

    @compat.fused_update_step
    class Recording(keras.optimizers.SGD):
        def fused_update_step(self, grads, variables, learning_rate):
            calls.append(len(variables))
            return len(calls) > 1  # the first step falls back to Keras's own update

    v = keras.Variable([1.0, 2.0])
    opt = Recording(learning_rate=0.5)
    opt.apply([keras.ops.ones((2,))], [v])
    opt.apply([keras.ops.ones((2,))], [v])
    assert calls == [1, 1], (
        f"keras.optimizers.Optimizer.apply no longer calls {compat.OPTIMIZER_UPDATE_HOOK}; "
        "update keras_hyperiqa.compat.fused_update_step")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), [0.5, 1.5])


def test_switch_layer_class_keeps_variables():
    import keras

    class Sub(keras.layers.BatchNormalization):
        pass

    layer = keras.layers.BatchNormalization(name="bn")
    layer.build((None, 3))
    paths = [w.path for w in layer.weights]
    compat.switch_layer_class(layer, Sub)
    assert type(layer) is Sub and [w.path for w in layer.weights] == paths
    with pytest.raises(TypeError):
        compat.switch_layer_class(layer, keras.layers.Dense)


def test_swin_drop_path_replaced_during_construction_only():
    """keras-hub Swin blocks still look ``DropPath`` up in their module when built."""
    from keras_hub.src.models.swin_transformer import swin_transformer_layers as hub_layers

    original = hub_layers.DropPath
    built = []

    def factory(rate, **kwargs):
        built.append(rate)
        return original(rate, **kwargs)

    with compat.swin_drop_path_replaced(factory):
        assert hub_layers.DropPath is factory
        block = hub_layers.SwinTransformerBlock(
            dim=8, input_resolution=(4, 4), num_heads=2, window_size=4, drop_path=0.1)
    assert hub_layers.DropPath is original
    assert built == [0.1], (
        "keras-hub's SwinTransformerBlock no longer builds its DropPath from the module "
        "attribute; update keras_hyperiqa.compat.swin_drop_path_replaced")
    del block


def test_hyperadam_takes_the_fused_path_on_torch(monkeypatch):
    import keras

    from keras_hyperiqa.training.optimizer import HyperAdam

    if keras.backend.backend() != "torch":
        pytest.skip("the fused update is torch's")
    calls = []
    original = HyperAdam._torch_update_step
    monkeypatch.setattr(HyperAdam, "_torch_update_step",
                        lambda self, *a: calls.append(1) or original(self, *a))
    v = keras.Variable([1.0, 2.0])
    opt = HyperAdam(learning_rate=0.1, weight_decay=0.0)
    opt.apply([keras.ops.ones((2,))], [v])
    assert calls == [1]
    assert float(keras.ops.convert_to_numpy(v)[0]) < 1.0


def test_zeros_instead_of_random_init_covers_keras_initializers():
    """Every random initializer a model uses draws through a patched ``__call__``."""
    import keras
    import numpy as np

    from keras_hyperiqa.model.initializers import kaiming_normal, torch_default_kernel

    inits = [keras.initializers.GlorotUniform(), keras.initializers.HeNormal(),
             keras.initializers.RandomUniform(-1, 1), keras.initializers.TruncatedNormal(),
             keras.initializers.Orthogonal(), kaiming_normal(), torch_default_kernel()]
    with compat.zeros_instead_of_random_init():
        drawn = [keras.ops.convert_to_numpy(init((4, 4))) for init in inits]
    for init, value in zip(inits, drawn):
        assert not value.any(), (
            f"{type(init).__name__} no longer draws through a __call__ that "
            "keras_hyperiqa.compat.zeros_instead_of_random_init replaces")
    assert np.abs(keras.ops.convert_to_numpy(inits[0]((4, 4)))).sum() > 0  # restored


def test_torch_memory_layout_is_kept_by_the_variable():
    """Keras's torch Variable keeps the Parameter whose ``.data`` compat replaces, and assigns into it."""
    import keras
    import numpy as np

    if keras.backend.backend() != "torch":
        pytest.skip("a torch memory layout")
    v = keras.Variable(np.arange(24, dtype="float32").reshape(2, 3, 1, 4))
    parameter = v.value
    data = parameter.detach().permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0)
    compat.set_torch_memory_layout(v, data)
    msg = ("keras's torch Variable no longer keeps the torch.nn.Parameter it hands out as .value, "
           "or assign() no longer copies into it; update keras_hyperiqa.compat.set_torch_memory_layout")
    assert v.value is parameter and v.value.stride() == data.stride(), msg
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), np.arange(24).reshape(2, 3, 1, 4))
    v.assign(np.full((2, 3, 1, 4), 2.0, "float32"))
    assert v.value is parameter and v.value.stride() == data.stride(), msg
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), 2.0)
    with pytest.raises(ValueError, match="keeps shape and dtype"):
        compat.set_torch_memory_layout(v, data.reshape(4, 3, 2, 1))


def test_versions_older_than_the_floor_are_refused_in_one_line():
    keras_floor, hub_floor = dict(compat.MIN_VERSIONS)["keras"], dict(compat.MIN_VERSIONS)["keras-hub"]
    compat.check_versions({"keras": keras_floor, "keras-hub": hub_floor})
    compat.check_versions({"keras": "4.0.0", "keras-hub": "1.0.0"})
    compat.check_versions({})  # not installed: left to fail at import
    with pytest.raises(compat.VersionError) as err:
        compat.check_versions({"keras": "3.13.2", "keras-hub": hub_floor})
    assert str(err.value) == (
        f"keras-hyperiqa needs keras>={keras_floor}, but keras 3.13.2 is installed; "
        f"upgrade it (pip install 'keras>={keras_floor}') or reinstall keras-hyperiqa")
    with pytest.raises(compat.VersionError, match=rf"needs keras-hub>={hub_floor}, but keras-hub 0.29.1 is"):
        compat.check_versions({"keras": keras_floor, "keras-hub": "0.29.1"})
    assert issubclass(compat.VersionError, ImportError) and issubclass(compat.VersionError, UserError)


def test_check_versions_reads_the_installed_metadata(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.20.0" if name == "keras-hub" else real(name))
    with pytest.raises(compat.VersionError, match="keras-hub 0.20.0 is installed"):
        compat.check_versions()


def test_an_old_keras_is_refused_in_one_line(tmp_path):
    """``import keras_hyperiqa`` stays light; ``import keras`` after it, and any CLI command, refuse."""
    dist = tmp_path / "keras-3.8.0.dist-info"  # found before the real keras on sys.path
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: keras\nVersion: 3.8.0\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
    floor = dict(compat.MIN_VERSIONS)["keras"]
    message = (f"keras-hyperiqa needs keras>={floor}, but keras 3.8.0 is installed; "
               f"upgrade it (pip install 'keras>={floor}') or reinstall keras-hyperiqa")

    def run(*args):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                              check=False)

    proc = run("-c", "import keras_hyperiqa")
    assert proc.returncode == 0, proc.stderr
    for first in ("import keras_hyperiqa; import keras", "import keras; import keras_hyperiqa"):
        proc = run("-c", first)
        assert proc.returncode != 0
        assert proc.stderr.strip().splitlines()[-1] == f"keras_hyperiqa.compat.VersionError: {message}"
    model, image = tmp_path / "m.keras", tmp_path / "x.png"
    model.write_bytes(b"")
    image.write_bytes(b"")
    proc = run("-m", "keras_hyperiqa.cli", "predict", str(model), str(image))
    assert (proc.returncode, proc.stderr.strip()) == (2, f"Error: {message}")


def test_version_floors_match_pyproject():
    """The floors ``check_versions`` enforces are the ones pyproject.toml declares."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        deps = [Requirement(d) for d in tomllib.load(f)["project"]["dependencies"]]
    floors = {r.name: s.version for r in deps for s in r.specifier if s.operator == ">="}
    for name, floor in compat.MIN_VERSIONS:
        assert floors[name] == floor, f"pyproject.toml says {name}>={floors[name]}, compat {floor}"
