"""Loading a .keras file reads every variable from it and draws no random initial values."""

import keras_hyperiqa  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)

import keras
import numpy as np

from keras_hyperiqa.convert.original import save_model_atomic
from keras_hyperiqa.inference import load_model_file
from keras_hyperiqa.model.hyperiqa import HyperIQA


def test_load_draws_no_random_init_and_keeps_every_weight(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny", resize=(256, 256))
    model.build((None, 224, 224, 3))
    path = tmp_path / "tiny.keras"
    save_model_atomic(model, path)

    calls = []
    original = keras.initializers.VarianceScaling.__call__

    def counting(self, shape, dtype=None):
        calls.append(tuple(shape))
        return original(self, shape, dtype=dtype)

    monkeypatch.setattr(keras.initializers.VarianceScaling, "__call__", counting)
    loaded = load_model_file(path)
    assert calls == []  # building for a load drew no random kernels
    assert loaded.resize == (256, 256)
    saved = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}
    for v in loaded.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), saved[v.path], err_msg=v.path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6, atol=1e-6)
    # The initializers draw again after the load.
    keras.initializers.HeNormal()((3, 3))
    assert calls == [(3, 3)]
