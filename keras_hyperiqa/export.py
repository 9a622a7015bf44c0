"""Exporting a HyperIQA model for inference without Keras: ONNX.

``model.export(path, format="onnx")`` is Keras's own exporter (on the torch
backend it goes through ``torch.onnx``). The ONNX graph takes float32 NHWC
patches in [0, 255] (ImageNet normalisation is inside) with a dynamic batch
axis and returns one score per patch. The model's preprocessing (resize,
patch size, test crops, score range) is stored as JSON in the file's
metadata under ``keras_hyperiqa``, so a scorer needs only onnxruntime, numpy
and Pillow (README, "Export to ONNX").
"""

import json
import os

from keras_hyperiqa.atomic import atomic_path
from keras_hyperiqa.errors import UserError

METADATA_KEY = "keras_hyperiqa"


def model_metadata(model):
    """What a scorer needs besides the graph: preprocessing and the scores' meaning."""
    config = model.get_config()
    keys = ("backbone", "patch_size", "resize", "short_side", "score_range", "test_patches",
            "test_crops", "label_direction")
    meta = {k: config[k] for k in keys if k in config}
    meta["input"] = "float32 (N, patch, patch, 3) RGB in [0, 255], channels last"
    return meta


def export_onnx(model, dst):
    """Write ``model`` as ONNX to ``dst`` atomically (torch backend), with its metadata."""
    import keras

    if keras.backend.backend() != "torch":
        raise UserError("ONNX export runs on the torch backend: use --backend torch")
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'keras-hyperiqa[onnx]'") from None
    dst = os.fspath(dst)
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise UserError(f"{dst}: folder {folder} does not exist")
    import numpy as np

    # Keras exports only a model that has been called (a loaded one has not).
    size = model.patch_size
    model(np.zeros((1, size, size, 3), "float32"), training=False)
    with atomic_path(dst) as tmp:
        model.export(tmp, format="onnx", verbose=False)
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(model_metadata(model))
        onnx.save(proto, tmp)
    return dst
