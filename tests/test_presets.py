"""HyperIQA models through keras-hub preset folders (offline: local folders)."""

import json
import os

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import keras_hyperiqa
from keras_hyperiqa.cli import cli
from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.hyperiqa import HyperIQA


def _scores(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


@pytest.fixture(scope="module")
def tiny():
    model = HyperIQA(backbone="resnet_tiny", patch_size=64, resize=(96, 80), score_range=(0, 1),
                     test_patches=9, test_crops="grid")
    model.build((None, 64, 64, 3))
    rng = np.random.default_rng(0)
    for v in model.weights:  # non-trivial values everywhere, statistics included
        v.assign(rng.normal(0, 0.05, v.shape).astype("float32") + (1.0 if "variance" in v.path else 0.0))
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    return model, x


def test_preset_round_trip(tiny, tmp_path):
    model, x = tiny
    folder = tmp_path / "preset"
    model.save_to_preset(folder)
    assert {"config.json", "metadata.json", "model.weights.h5"} <= {p.name for p in folder.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by colleagues as umask allows
    meta = json.loads((folder / "metadata.json").read_text())["keras_hyperiqa"]
    assert meta["resize"] == [96, 80] and meta["score_range"] == [0.0, 1.0]
    assert (meta["test_patches"], meta["test_crops"]) == (9, "grid")
    loaded = keras_hyperiqa.HyperIQA.from_preset(str(folder))
    np.testing.assert_array_equal(_scores(loaded, x), _scores(model, x))
    assert loaded.get_config() == model.get_config()
    # keras-hub's own loader recognises the class too.
    from keras_hyperiqa import compat

    assert compat.preset_loader(str(folder)).check_backbone_class() is HyperIQA


def test_preset_folder_errors(tiny, tmp_path):
    model, _ = tiny
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError, match="exists and is not empty"):
        model.save_to_preset(tmp_path / "full")
    with pytest.raises(UserError, match="not a readable keras-hub preset"):
        HyperIQA.from_preset(str(tmp_path / "full"))


def test_predict_reads_a_preset_folder(tiny, tmp_path):
    from PIL import Image

    model, _ = tiny
    folder = tmp_path / "preset"
    model.save_to_preset(folder)
    model.save(tmp_path / "m.keras")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (100, 90, 3), dtype=np.uint8)).save(image)
    scores = []
    for source in (folder, tmp_path / "m.keras"):
        result = CliRunner().invoke(cli, ["predict", str(source), str(image), "--format", "json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)[0]["score"])
        assert "9 grid crops" in result.stderr
    assert scores[0] == scores[1]
