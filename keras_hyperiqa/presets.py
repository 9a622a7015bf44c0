"""HyperIQA models as keras-hub preset folders, through keras-hub's own machinery.

A preset folder holds what keras-hub's ``KerasPresetSaver`` writes for a
backbone: ``config.json`` (the serialized ``HyperIQA``: architecture,
preprocessing, score range, test crops and whatever else the model config
holds), ``model.weights.h5`` and ``metadata.json`` (keras-hub's fields plus a
``keras_hyperiqa`` entry with the preprocessing and the scores' meaning).
keras-hub's loader reads it from a local folder, ``hf://user/name`` or
``kaggle://...``; ``keras_hub.upload_preset`` publishes it.
"""

import json
import os

from keras_hyperiqa import compat
from keras_hyperiqa.atomic import atomic_dir
from keras_hyperiqa.errors import UserError

REMOTE_SCHEMES = ("hf://", "kaggle://", "gs://", "modelscope://")


def is_preset(path):
    path = os.fspath(path)
    return path.startswith(REMOTE_SCHEMES) or os.path.isdir(path)


def save_preset(model, directory):
    """Write ``model`` as a keras-hub preset folder, atomically (a new folder).

    Refuses an existing non-empty folder.
    """
    from keras_hyperiqa.export import model_metadata

    directory = os.fspath(directory).rstrip("/") or "/"
    if os.path.isdir(directory) and os.listdir(directory):
        raise UserError(f"{directory}: the preset folder exists and is not empty")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{directory}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        raise UserError(f"{directory}: folder {parent} does not exist")
    with atomic_dir(directory) as tmp:
        compat.preset_saver(tmp).save_backbone(model)
        meta_path = os.path.join(tmp, compat.preset_metadata_name())
        with open(meta_path) as f:
            metadata = json.load(f)
        metadata["keras_hyperiqa"] = model_metadata(model)
        with open(meta_path, "w") as f:
            json.dump(metadata, f, indent=4)
    return directory


def load_preset(preset, load_weights=True):
    """A ``HyperIQA`` from a preset folder or URI (keras-hub's loader)."""
    import keras_hyperiqa.model.hyperiqa as hyperiqa

    preset = os.fspath(preset)
    try:
        loader = compat.preset_loader(preset)
        cls = loader.check_backbone_class()
    except (ValueError, FileNotFoundError, OSError) as err:
        raise UserError(f"{preset}: not a readable keras-hub preset "
                        f"({str(err).strip().splitlines()[0][:200]})") from None
    if not (isinstance(cls, type) and issubclass(cls, hyperiqa.HyperIQA)):
        raise UserError(f"{preset}: a preset of {getattr(cls, '__name__', cls)}, not of HyperIQA")
    # keras-hub drops the build config; the weights need a built model.
    model = loader.load_backbone(cls, load_weights=False)
    model.build((None, model.patch_size, model.patch_size, 3))
    if load_weights:
        model.load_weights(compat.preset_file(preset, compat.preset_weights_name()))
    return model
