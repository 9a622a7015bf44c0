"""bf16: scores, generated weights, target net and loss stay float32; saved models load as float32."""

import json
import os
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import run_backend, write_csv_dataset

from keras_hyperiqa.cli import cli
from keras_hyperiqa.data.demo import distort, make_scene
from keras_hyperiqa.inference import load_model_file

N_PATCHES = 24


def _patches():
    """Demo-style scenes under four distortions at several levels: scores that spread."""
    rng = np.random.default_rng(0)
    kinds = ("blur", "contrast", "jpeg", "noise")
    out = []
    for i in range(N_PATCHES):
        img = distort(make_scene(0, i % 6), kinds[(i // 6) % 4], 1 + i % 5, rng)
        out.append(np.asarray(img, dtype="float32")[16:240, 16:240])
    return np.stack(out)


def _scores(model, x):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(ops.cast(model(x, training=False), "float32")))


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory):
    """A resnet_tiny HyperIQA whose float32 scores spread over ~25 points around 60.

    The random head's scores are near-constant and below 1, where bfloat16's
    grid is fine; scaling the last generated layer and shifting its bias puts
    them where real MOS-scale scores live (bfloat16 steps of 0.25-0.5).
    """
    import keras

    from keras_hyperiqa.model.hyperiqa import HyperIQA

    d = tmp_path_factory.mktemp("precision")
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny")
    model.build((None, 224, 224, 3))
    x = _patches()
    raw = _scores(model, x)
    wgen = model.hyper_head.weight_generators[-1]
    k = 25.0 / float(raw.max() - raw.min())
    wgen.kernel.assign(wgen.kernel * k)
    wgen.bias.assign(wgen.bias * k)
    bgen = model.hyper_head.bias_generators[-1]
    bgen.bias.assign(bgen.bias + (60.0 - float(_scores(model, x).mean())))
    path = d / "spread.keras"
    model.save(path)
    np.save(d / "x.npy", x)
    return dict(dir=d, path=path, x=x)


# Scored as ``predict`` scores (the Predictor: jit-compiled on jax).
SCORE_BOTH = """
    import numpy as np
    from keras_hyperiqa.inference import load_model_file
    from keras_hyperiqa.inference import Predictor
    x = np.load({x!r})
    for precision in ("fp32", "bf16"):
        m = load_model_file({path!r}, precision=precision)
        assert m.hyper_head.compute_dtype == "float32"
        np.save({out!r}.format(precision), Predictor(m)(x))
"""


def _check_bf16_against_fp32(fp32, bf16):
    spread = float(fp32.max() - fp32.min())
    assert spread > 10, spread  # a real spread on a MOS-like scale
    assert 40 < fp32.mean() < 80
    err = float(np.abs(bf16 - fp32).max())
    assert err <= 0.05 * spread, f"bf16 off by {err:.3f} = {err / spread:.1%} of the fp32 spread"
    # float32 scores: all distinct, and (but by chance) none on bfloat16's
    # grid, i.e. with the low 16 bits of the float32 pattern all zero.
    assert len(np.unique(bf16)) == len(np.unique(fp32)) == N_PATCHES
    on_grid = int(((bf16.astype(np.float32).view(np.uint32) & 0xFFFF) == 0).sum())
    assert on_grid <= 1, f"{on_grid} of {N_PATCHES} bf16 scores are bfloat16 values"


def test_bf16_scores_are_float32_and_close_to_fp32_torch(spread_model):
    from keras_hyperiqa.inference import Predictor

    x = spread_model["x"]
    fp32 = Predictor(load_model_file(spread_model["path"]))(x)
    model = load_model_file(spread_model["path"], precision="bf16")
    assert model.backbone.compute_dtype == "bfloat16"
    assert model.hyper_head.compute_dtype == "float32"
    _check_bf16_against_fp32(fp32, Predictor(model)(x))


def test_bf16_scores_are_float32_and_close_to_fp32_jax(spread_model):
    d = spread_model["dir"]
    out = str(d / "jax_{}.npy")
    run_backend("jax", SCORE_BOTH.format(x=str(d / "x.npy"), path=str(spread_model["path"]), out=out))
    _check_bf16_against_fp32(np.load(out.format("fp32")), np.load(out.format("bf16")))


def test_bf16_loss_is_float32_on_float32_scores(spread_model):
    """The training forward under bf16 hands float32 scores to a float32 L1 loss."""
    from keras import ops

    from keras_hyperiqa.training import l1_loss

    model = load_model_file(spread_model["path"], precision="bf16")
    x = spread_model["x"][:4]
    pred = model(x, training=True)
    assert ops.convert_to_numpy(pred).dtype == np.float32
    labels = np.array([60.1, 61.3, 59.7, 62.9], dtype="float32")
    loss = l1_loss(pred, labels)
    assert ops.convert_to_numpy(loss).dtype == np.float32
    expected = np.abs(ops.convert_to_numpy(pred) - labels).mean()
    assert abs(float(ops.convert_to_numpy(loss)) - expected) <= 1e-5 * expected


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [distort(make_scene(1, i % 4), "blur", 1 + i % 5, rng) for i in range(12)]
    return write_csv_dataset(tmp_path_factory.mktemp("tinycsv"), images,
                             [90 - 15 * (i % 5) for i in range(12)], [f"c{i % 4}" for i in range(12)],
                             names="{:02d}.png")


def test_model_from_bf16_run_loads_and_predicts_in_float32(tiny_csv, tmp_path):
    import keras

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "fit", "--dataset", "csv", "--root", str(tiny_csv), "--out", str(out), "--precision", "bf16",
        "--backbone", "resnet_tiny", "--backbone-weights", "none", "--epochs", "1", "--batch-size", "8",
        "--train-patches", "1", "--test-patches", "1", "--val-fraction", "0", "--workers", "1",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # The run leaves the process's policy as it found it...
    assert keras.config.dtype_policy().name == "float32"
    # ...and the file carries no bf16 policy of its own.
    with zipfile.ZipFile(out / "model.keras") as z:
        config = z.read("config.json").decode()
    assert "bfloat16" not in config, json.loads(config)["config"].get("dtype")
    model = load_model_file(out / "model.keras")
    policies = {layer.dtype_policy.name for layer in model._flatten_layers(include_self=True, recursive=True)}
    assert policies == {"float32"}, policies
    x = np.asarray(Image.open(tiny_csv / "00.png"), dtype="float32")[None, :224, :224]
    stages = model.stage_features(x)
    assert {str(s.dtype).split(".")[-1] for s in stages} == {"float32"}
    score = _scores(model, x)
    assert score.dtype == np.float32 and np.isfinite(score).all()
    assert os.path.isfile(out / "summary.json")
