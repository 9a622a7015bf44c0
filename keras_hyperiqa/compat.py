"""Every private Keras and keras-hub name this package uses, in one place.

Public APIs do not cover a few things we need (the epoch that Keras's
``BackupAndRestore`` restores, keras-hub's timm ResNet converter). Each such
name is reached only through a function here, and ``tests/test_compat.py``
checks each one against the installed versions, so an upgrade that moves or
renames one fails there with a message naming it, not deep inside a run.
"""

import importlib

# (module, attribute) of every private name used below; the test walks this list.
PRIVATE_NAMES = (
    ("keras_hub.src.utils.timm.convert_resnet", "convert_weights"),
    ("keras_hub.src.utils.preset_utils", "get_preset_loader"),
    ("keras_hub.src.utils.preset_utils", "KerasPresetSaver"),
    ("keras_hub.src.utils.preset_utils", "get_file"),
    ("keras_hub.src.utils.preset_utils", "MODEL_WEIGHTS_FILE"),
    ("keras_hub.src.utils.preset_utils", "METADATA_FILE"),
)


class CompatError(ImportError):
    """A private name this package needs is missing from the installed version."""


def private(module, name):
    """``module.name``, or a :class:`CompatError` naming both and the versions."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CompatError(
            f"keras-hyperiqa needs the private name {module}.{name}, which the installed "
            f"{_versions()} do not have ({err}); install the versions pinned in pyproject.toml"
        ) from None


def _versions():
    out = []
    for dist in ("keras", "keras-hub"):
        try:
            from importlib.metadata import version

            out.append(f"{dist} {version(dist)}")
        except Exception:  # noqa: BLE001 - a version string is only for the message
            out.append(f"{dist} (unknown version)")
    return " / ".join(out)


# ------------------------------------------------------------------ Keras
def clear_restored_initial_epoch(model):
    """Forget an epoch left by an earlier ``BackupAndRestore`` (before ``on_train_begin``)."""
    model._initial_epoch = None


def restored_initial_epoch(model):
    """The epoch ``keras.callbacks.BackupAndRestore`` restored, or ``None``.

    The callback stores it on the model as ``_initial_epoch`` in
    ``on_train_begin``; Keras's own ``fit`` reads it the same way.
    """
    epoch = getattr(model, "_initial_epoch", None)
    return None if epoch is None else int(epoch)


# -------------------------------------------------------------- keras-hub
def timm_resnet_convert_weights(backbone, loader, config):
    """keras-hub's timm ResNet converter (torchvision names -> ``ResNetBackbone``)."""
    return private("keras_hub.src.utils.timm.convert_resnet", "convert_weights")(
        backbone, loader, config)


def preset_loader(preset):
    """keras-hub's loader for a preset (local folder, ``hf://``, ``kaggle://``)."""
    return private("keras_hub.src.utils.preset_utils", "get_preset_loader")(preset)


def preset_saver(directory):
    """keras-hub's saver: ``config.json``, ``metadata.json``, ``model.weights.h5``."""
    return private("keras_hub.src.utils.preset_utils", "KerasPresetSaver")(directory)


def preset_file(preset, name):
    """A local path to ``name`` in a preset (downloaded and cached when remote)."""
    return private("keras_hub.src.utils.preset_utils", "get_file")(preset, name)


def preset_weights_name():
    return private("keras_hub.src.utils.preset_utils", "MODEL_WEIGHTS_FILE")


def preset_metadata_name():
    return private("keras_hub.src.utils.preset_utils", "METADATA_FILE")
