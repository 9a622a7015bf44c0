"""Every private Keras and keras-hub name this package uses, in one place.

Public APIs do not cover a few things we need: the epoch that Keras's
``BackupAndRestore`` restores, an optimizer's slot index and its one-call
update hook, switching a built layer's class, skipping random initial values
when loading, changing a torch variable's memory layout in place, keras-hub's
timm ResNet converter, preset files and the Swin
blocks' ``DropPath``. Each is reached only through a function here, and ``tests/test_compat.py``
checks each one against the installed versions, so an upgrade that moves or
renames one fails there with a message naming it, not deep inside a run.
``check_versions`` (run when keras is imported after keras_hyperiqa) refuses a keras or
keras-hub older than the oldest the suite passed on, in one line.
"""

import contextlib
import importlib

from keras_hyperiqa.errors import UserError

# The oldest releases the whole test suite passed on; pyproject.toml states
# the same floors (tests/test_compat.py checks that they agree).
MIN_VERSIONS = (("keras", "3.15.0"), ("keras-hub", "0.32.0"))

# (module, attribute) of every private name used below; the test walks this list.
PRIVATE_NAMES = (
    ("keras_hub.src.utils.timm.convert_resnet", "convert_weights"),
    ("keras_hub.src.utils.preset_utils", "get_preset_loader"),
    ("keras_hub.src.utils.preset_utils", "KerasPresetSaver"),
    ("keras_hub.src.utils.preset_utils", "get_file"),
    ("keras_hub.src.utils.preset_utils", "MODEL_WEIGHTS_FILE"),
    ("keras_hub.src.utils.preset_utils", "METADATA_FILE"),
    ("keras_hub.src.models.swin_transformer.swin_transformer_layers", "DropPath"),
)

# Private attributes of Keras objects used below (each has a test in tests/test_compat.py).
OPTIMIZER_UPDATE_HOOK = "_backend_update_step"


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


class VersionError(UserError, ImportError):
    """An installed keras or keras-hub is older than keras-hyperiqa needs."""


def check_versions(installed=None):
    """Raise :class:`VersionError` if keras or keras-hub is older than ``MIN_VERSIONS``.

    ``installed`` maps a distribution name to its version string (default: the
    installed ones, read from package metadata without importing them); a
    distribution that is absent is left to fail at its import.
    """
    if installed is None:
        installed = installed_versions(name for name, _ in MIN_VERSIONS)
    from packaging.version import InvalidVersion, Version

    for name, floor in MIN_VERSIONS:
        have = installed.get(name)
        if have is None:
            continue
        try:
            too_old = Version(have) < Version(floor)
        except InvalidVersion:
            continue
        if too_old:
            raise VersionError(
                f"keras-hyperiqa needs {name}>={floor}, but {name} {have} is installed; "
                f"upgrade it (pip install '{name}>={floor}') or reinstall keras-hyperiqa")


def installed_versions(names):
    """``{name: version}`` of installed distributions (``None``: not installed), without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _versions():
    installed = installed_versions(name for name, _ in MIN_VERSIONS)
    return " / ".join(f"{name} {installed[name] or '(not installed)'}" for name, _ in MIN_VERSIONS)


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


def optimizer_variable_index(optimizer, variable):
    """Position of ``variable`` in the list ``optimizer`` was built with (its slot index)."""
    return optimizer._get_variable_index(variable)


def optimizer_built_variables(optimizer):
    """The variables ``optimizer`` was built with, in slot order."""
    return optimizer._trainable_variables


def fused_update_step(cls):
    """Class decorator: let ``cls.fused_update_step`` update all variables at once.

    Keras's ``Optimizer.apply`` hands every (gradient, variable) pair to the
    private ``_backend_update_step``, which calls ``update_step`` once per
    variable. The hook installed here first calls
    ``self.fused_update_step(grads, variables, learning_rate)``; when that
    returns False, Keras's own per-variable path runs.
    """
    def hook(self, grads, trainable_variables, learning_rate):
        if not self.fused_update_step(grads, trainable_variables, learning_rate):
            getattr(super(cls, self), OPTIMIZER_UPDATE_HOOK)(
                grads, trainable_variables, learning_rate)

    setattr(cls, OPTIMIZER_UPDATE_HOOK, hook)
    return cls


def switch_layer_class(layer, cls):
    """Make a built ``layer`` an instance of ``cls``, a subclass adding no state.

    Variables, names and weight paths stay as they are, which rebuilding the
    layer would not guarantee.
    """
    if not issubclass(cls, type(layer)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(layer).__name__}")
    layer.__class__ = cls


def set_torch_memory_layout(variable, data):
    """torch backend: ``variable`` takes ``data``'s storage (same shape and values), in place.

    Keras's torch ``Variable`` keeps one ``torch.nn.Parameter``, hands it out
    as ``value`` and ``assign`` copies into it (``copy_``); replacing that
    Parameter's ``.data`` changes the memory layout of every later read,
    gradient and assign while every reference to the Parameter (autograd's,
    the optimizer's) stays valid.
    """
    parameter = variable.value
    if tuple(data.shape) != tuple(parameter.shape) or data.dtype != parameter.dtype:
        raise ValueError(f"{variable.path}: a new layout keeps shape and dtype "
                         f"({tuple(parameter.shape)} {parameter.dtype}), got {tuple(data.shape)} {data.dtype}")
    parameter.data = data


# Keras's random initializers whose ``__call__`` the patch below replaces: the
# public classes; their subclasses such as GlorotUniform and HeNormal inherit
# ``__call__`` from VarianceScaling (tests/test_compat.py checks this).
_RANDOM_INITIALIZERS = ("RandomNormal", "TruncatedNormal", "RandomUniform", "VarianceScaling", "Orthogonal")


@contextlib.contextmanager
def zeros_instead_of_random_init():
    """Within: Keras's random initializers return zeros (restored on exit).

    For loading a saved model only: building it draws random initial values
    for every variable (27M numbers for a ResNet-50 HyperIQA, seconds on a
    CPU) that the saved weights overwrite at once. Zeros cost an allocation.
    Not thread-safe: nothing else should build variables meanwhile.
    """
    import keras

    def zeros(self, shape, dtype=None):
        return keras.ops.zeros(shape, dtype=dtype)

    classes = [getattr(keras.initializers, name) for name in _RANDOM_INITIALIZERS]
    saved = [(cls, cls.__dict__["__call__"]) for cls in classes if "__call__" in cls.__dict__]
    for cls, _ in saved:
        cls.__call__ = zeros
    try:
        yield
    finally:
        for cls, call in saved:
            cls.__call__ = call


# -------------------------------------------------------------- keras-hub
def swin_drop_path_replaced(factory):
    """Context manager: keras-hub Swin blocks built inside it get ``factory(rate, **kw)``.

    keras-hub's Swin blocks look ``DropPath`` up in their module when they are
    built, so it is replaced there for the construction only.
    """
    import contextlib

    module = importlib.import_module(
        "keras_hub.src.models.swin_transformer.swin_transformer_layers")
    private(module.__name__, "DropPath")

    @contextlib.contextmanager
    def replaced():
        original = module.DropPath
        module.DropPath = factory
        try:
            yield
        finally:
            module.DropPath = original

    return replaced()



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
