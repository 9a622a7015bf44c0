"""keras-hyperiqa: HyperIQA as Keras 3 layers (torch by default, jax too).

Importing the package sets ``KERAS_BACKEND=torch`` when it is unset, so import
``keras_hyperiqa`` before ``keras``. Heavy modules (keras, keras-hub) load on
first use only, which keeps ``keras-hyperiqa --help`` fast; the model classes
are registered with Keras as soon as keras is imported, so
``keras.saving.load_model("model.keras")`` works after ``import keras_hyperiqa``.
Keras on TensorFlow (``import keras`` first without ``KERAS_BACKEND``) is
refused with a ``BackendError`` saying how to choose torch or jax, and a keras
or keras-hub older than ``keras_hyperiqa.compat.MIN_VERSIONS`` with a
``VersionError`` naming the version needed, raised by ``import keras`` (or by
this import when keras came first); the CLI prints it in one line.
"""

import sys as _sys

from keras_hyperiqa.backend import check_backend, ensure_default_backend, register_when_keras_loads
from keras_hyperiqa.compat import check_versions as _check_versions

ensure_default_backend()
if "keras" in _sys.modules:  # keras imported first: it may have chosen TensorFlow, or be too old
    _check_versions()
    check_backend()
register_when_keras_loads()  # otherwise both are checked when keras is imported

__version__ = "0.1.0"

_LAZY = {
    "HyperIQA": "keras_hyperiqa.model.hyperiqa",
    "load_backbone_weights": "keras_hyperiqa.convert.backbone",
    "convert_original_checkpoint": "keras_hyperiqa.convert.original",
    "load_original_checkpoint": "keras_hyperiqa.convert.original",
    "UserError": "keras_hyperiqa.errors",
    "HyperAdam": "keras_hyperiqa.training.optimizer",
    "HyperIQASchedule": "keras_hyperiqa.training.schedule",
    "PatchPyDataset": "keras_hyperiqa.training.keras_fit",
    "ImageCorrelation": "keras_hyperiqa.training.keras_fit",
    "load_checkpoint": "keras_hyperiqa.convert.original",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'keras_hyperiqa' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
