"""keras-hyperiqa: HyperIQA as Keras 3 layers (torch by default, jax too).

Importing the package sets ``KERAS_BACKEND=torch`` when it is unset, so import
``keras_hyperiqa`` before ``keras``. Heavy modules (keras, keras-hub) are loaded
on first attribute access only, which keeps ``keras-hyperiqa --help`` fast.
"""

from keras_hyperiqa.backend import ensure_default_backend

ensure_default_backend()

__version__ = "0.1.0"

_LAZY = {
    "HyperIQA": "keras_hyperiqa.model.hyperiqa",
    "convert_original_checkpoint": "keras_hyperiqa.convert.original",
    "load_original_checkpoint": "keras_hyperiqa.convert.original",
    "UserError": "keras_hyperiqa.errors",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'keras_hyperiqa' has no attribute {name!r}")
