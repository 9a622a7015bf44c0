"""Backend selection: torch unless the user chose otherwise.

Keras picks its backend once, at first import, from ``KERAS_BACKEND`` (falling
back to TensorFlow). Importing this module before keras makes torch the default
while leaving an explicit ``KERAS_BACKEND=jax`` untouched.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

DEFAULT_BACKEND = "torch"
BACKENDS = ("torch", "jax")

# Frameworks our commands never use. keras-hub imports TensorFlow and
# tensorflow-text when they are installed (seconds of start-up and C++ log
# lines) but only needs them for text models; Keras imports jax whenever it
# is installed. Both treat an ImportError as "not installed".
_UNUSED_BY_COMMANDS = ("tensorflow", "tensorflow_text")
_blocked = []

# Modules whose import registers our serializable classes with Keras.
_SERIALIZABLE_MODULES = ("keras_hyperiqa.model.hyperiqa", "keras_hyperiqa.training.optimizer")


def ensure_default_backend():
    """Set ``KERAS_BACKEND`` to torch when unset; return the backend in force."""
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    # keras-hub imports TensorFlow (for tf.data); keep its C++ start-up logs quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return os.environ["KERAS_BACKEND"]


class _RefusingLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (keras-hyperiqa's commands do not "
                                  "use it)", name=spec.name)

    def exec_module(self, module):  # never reached: create_module raises
        raise ModuleNotFoundError(module.__name__)


class _ImportBlocker(importlib.abc.MetaPathFinder):
    """``import NAME`` (and its submodules) raises ModuleNotFoundError while installed.

    Not ``sys.modules[NAME] = None``: scipy's array-API helpers read
    ``sys.modules["jax"]`` and fail on None. Here the name stays absent from
    ``sys.modules``; ``importlib.util.find_spec`` sees a spec without origin
    (torch._dynamo asks for one and skips it), and the import itself fails
    as for a module that is not installed.
    """

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, _RefusingLoader(), origin=None)
        return None


def block_imports(names):
    """Make ``import NAME`` raise ImportError in this process, unless NAME is already imported.

    Our commands use it for frameworks they never need; ``unblock_imports``
    undoes it, so a process that ran a command in-process (tests, notebooks)
    is left as it was.
    """
    names = [n for n in names if n not in sys.modules]
    if names:
        blocker = _ImportBlocker(names)
        sys.meta_path.insert(0, blocker)
        _blocked.append(blocker)


def unblock_imports():
    """Undo every ``block_imports`` still in force."""
    while _blocked:
        blocker = _blocked.pop()
        if blocker in sys.meta_path:
            sys.meta_path.remove(blocker)


def block_unused_frameworks(backend=None):
    """For our commands: keep TensorFlow (and under torch, jax) from being imported."""
    names = list(_UNUSED_BY_COMMANDS)
    if backend == "torch":
        names.append("jax")
    block_imports(names)


def check_backend():
    """The backend in force; ``BackendError`` (a ``UserError`` and ``ImportError``) if not torch or jax."""
    from keras_hyperiqa.errors import BackendError

    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        backend = keras.backend.backend()
        if backend not in BACKENDS:
            raise BackendError(
                f"keras is running on {backend} (it was imported before keras_hyperiqa, without "
                "KERAS_BACKEND); keras-hyperiqa needs torch or jax: import keras_hyperiqa before "
                "keras (it selects torch), or set KERAS_BACKEND=torch or KERAS_BACKEND=jax")
        return backend
    backend = os.environ.get("KERAS_BACKEND", DEFAULT_BACKEND)
    if backend not in BACKENDS:
        raise BackendError(f"KERAS_BACKEND={backend}: keras-hyperiqa needs torch or jax; "
                           "set KERAS_BACKEND=torch or KERAS_BACKEND=jax")
    return backend


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
    """Checks keras's version before ``keras`` is imported and registers our classes after.

    ``keras.saving.load_model`` finds custom classes only when they are
    registered, but importing keras costs seconds (torch comes with it), which
    the CLI's ``--help`` cannot afford. So ``import keras_hyperiqa`` stays light
    and this finder wraps keras's own loader: once keras has executed, our
    model module is imported and its classes registered.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        # A keras (or keras-hub) older than we need is refused before it runs;
        # raising here keeps this finder, so every later ``import keras`` is too.
        from keras_hyperiqa.compat import check_versions

        check_versions()
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
