"""ONNX export of a small model: onnxruntime parity, any batch, metadata, file mode."""

import json
import os

import keras
import numpy as np
import pytest

from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.hyperiqa import HyperIQA


def test_tiny_model_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from keras_hyperiqa.export import export_onnx

    model = HyperIQA(backbone="resnet_tiny", patch_size=64, resize=(96, 80), score_range=(0, 1))
    model.build((None, 64, 64, 3))
    x = np.random.default_rng(0).uniform(0, 255, (5, 64, 64, 3)).astype("float32")
    ref = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    out = export_onnx(model, tmp_path / "m.onnx")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    assert np.abs(session.run(None, {name: x})[0].reshape(-1) - ref).max() <= 1e-4
    assert np.abs(session.run(None, {name: x[:2]})[0].reshape(-1) - ref[:2]).max() <= 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["keras_hyperiqa"])
    assert meta["resize"] == [96, 80] and meta["patch_size"] == 64 and meta["score_range"] == [0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left


def test_export_into_a_missing_folder_is_a_user_error(tmp_path):
    from keras_hyperiqa.export import export_onnx

    model = HyperIQA(backbone="resnet_tiny", patch_size=64)
    model.build((None, 64, 64, 3))
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(model, tmp_path / "nope" / "m.onnx")
