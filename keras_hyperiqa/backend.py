"""Backend selection: torch unless the user chose otherwise.

Keras picks its backend once, at first import, from ``KERAS_BACKEND`` (falling
back to TensorFlow). Importing this module before keras makes torch the default
while leaving an explicit ``KERAS_BACKEND=jax`` untouched.
"""

import os

DEFAULT_BACKEND = "torch"


def ensure_default_backend():
    """Set ``KERAS_BACKEND`` to torch when unset; return the backend in force."""
    os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
    return os.environ["KERAS_BACKEND"]
