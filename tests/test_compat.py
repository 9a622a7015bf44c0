"""Every private Keras / keras-hub name in ``keras_hyperiqa.compat`` still exists."""

import pytest

from keras_hyperiqa import compat


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
