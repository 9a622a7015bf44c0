"""Backend selection: torch unless the user chose otherwise.

Keras picks its backend once, at first import, from ``KERAS_BACKEND`` (falling
back to TensorFlow). Importing this module before keras makes torch the default
while leaving an explicit ``KERAS_BACKEND=jax`` untouched.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

DEFAULT_BACKEND = "torch"

# Modules whose import registers our serializable classes with Keras.
_SERIALIZABLE_MODULES = ("keras_hyperiqa.model.hyperiqa", "keras_hyperiqa.training.optimizer")


def ensure_default_backend():
    """Set ``KERAS_BACKEND`` to torch when unset; return the backend in force."""
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    # keras-hub imports TensorFlow (for tf.data); keep its C++ start-up logs quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return os.environ["KERAS_BACKEND"]


def _our_import_in_progress():
    return any(
        name.startswith("keras_hyperiqa.")
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def _register_serializables():
    # When keras is first imported by one of our own modules, that import
    # chain is mid-way (importing the model now would hit a half-initialised
    # module); the model module registers its classes itself when it loads.
    if _our_import_in_progress():
        return
    for name in _SERIALIZABLE_MODULES:
        importlib.import_module(name)


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers our Keras classes right after ``keras`` itself is imported.

    ``keras.saving.load_model`` finds custom classes only when they are
    registered, but importing keras costs seconds (torch comes with it), which
    the CLI's ``--help`` cannot afford. So ``import keras_hyperiqa`` stays light
    and this finder wraps keras's own loader: once keras has executed, our
    model module is imported and its classes registered.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_serializables()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_keras_loads():
    """Make ``keras.saving.load_model`` know our classes, without importing keras now."""
    if "keras" in sys.modules:
        _register_serializables()
    elif not any(isinstance(f, _RegisterAfterKerasImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKerasImport())
