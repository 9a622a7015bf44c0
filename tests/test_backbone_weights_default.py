"""fit --dataset starts from ImageNet weights by default; from scratch only when asked."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_csv_dataset
from keras_hyperiqa.cli import cli
from keras_hyperiqa.convert import backbone as backbone_weights
from keras_hyperiqa.data.demo import distort, make_scene
from keras_hyperiqa.errors import UserError
from keras_hyperiqa.experiment import FitConfig, quick_profile, resolve_backbone_weights

SMALL = ["--epochs", "1", "--batch-size", "8", "--train-patches", "1", "--test-patches", "1",
         "--val-fraction", "0", "--workers", "1"]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [distort(make_scene(3, i % 5), "blur", 1 + i % 5, rng) for i in range(10)]
    return write_csv_dataset(tmp_path_factory.mktemp("weights_csv"), images,
                             [90 - 15 * (i % 5) for i in range(10)], [f"c{i % 5}" for i in range(10)],
                             names="{:02d}.png")


def test_offline_default_fails_before_the_run_files(tiny_csv, tmp_path):
    """No network (the Hugging Face hub in offline mode, an empty cache): one line naming the way out."""
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), KERAS_BACKEND="torch")
    proc = subprocess.run(
        [sys.executable, "-m", "keras_hyperiqa", "fit", "--dataset", "csv", "--root", str(tiny_csv),
         "--out", str(out), *SMALL], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "hf://timm/resnet50.tv_in1k" in errors[0]
    assert "--backbone-weights PATH" in errors[0] and "--backbone-weights none" in errors[0]
    assert not any(out.iterdir())


def test_backbone_without_imagenet_weights_needs_explicit_none(tiny_csv, tmp_path):
    result = CliRunner().invoke(cli, ["fit", "--dataset", "csv", "--root", str(tiny_csv), "--out",
                                      str(tmp_path / "run"), "--backbone", "resnet_tiny", *SMALL])
    assert result.exit_code == 2
    assert "resnet_tiny has no ImageNet weights" in result.output
    assert "--backbone-weights PATH" in result.output and "--backbone-weights none" in result.output
    assert not any((tmp_path / "run").iterdir())


def test_dataset_default_loads_the_backbones_imagenet_weights(tiny_csv, tmp_path, monkeypatch):
    """The default source goes through the real preset loader: here a local timm folder
    (what keras-hub downloads for ``hf://timm/...``), of a random resnet18."""
    import keras
    import torch

    from keras_hyperiqa.inference import load_model_file

    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False)
    preset = tmp_path / "resnet18_tv_in1k"
    preset.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, preset / "model.safetensors")
    (preset / "config.json").write_text(json.dumps({
        "architecture": "resnet18", "num_classes": 1000, "num_features": 512,
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "crop_pct": 0.875},
    }))
    monkeypatch.setitem(backbone_weights.IMAGENET_WEIGHTS, "resnet18", str(preset))
    out = tmp_path / "run"
    # lr 0: the trained model keeps the kernels it started from.
    result = CliRunner().invoke(cli, ["fit", "--dataset", "csv", "--root", str(tiny_csv), "--out", str(out),
                                      "--backbone", "resnet18", "--lr", "0", *SMALL],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"backbone resnet18: ImageNet weights from {preset}" in result.output
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["backbone_weights"] == str(preset)
    model = load_model_file(out / "model.keras")
    stem = [w for w in model.backbone.weights if w.path.endswith("conv1_conv/kernel")]
    assert len(stem) == 1
    # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
    expected = net.state_dict()["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stem[0]), expected)


def test_demo_and_explicit_none_train_from_scratch_and_say_so(capsys):
    assert resolve_backbone_weights(quick_profile()) == "none"
    assert "demo set, quick profile: backbone resnet_tiny trained from scratch" in capsys.readouterr().out
    assert resolve_backbone_weights(FitConfig()) == "none"  # no dataset: the demo set
    config = FitConfig(dataset="koniq", backbone="resnet50", backbone_weights="none")
    assert resolve_backbone_weights(config) == "none"
    assert "backbone resnet50: trained from scratch (--backbone-weights none)" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^/no/such/weights.pth: no such file$"):
        resolve_backbone_weights(FitConfig(dataset="koniq", backbone_weights="/no/such/weights.pth"))


def test_dataset_default_is_each_backbones_imagenet_source():
    from keras_hyperiqa.model.backbones import BACKBONES

    for name in BACKBONES:
        if name in ("resnet_tiny", "swin_micro"):  # test-size configs without ImageNet weights
            continue
        assert backbone_weights.imagenet_weights(name) == backbone_weights.IMAGENET_WEIGHTS[name]
    assert backbone_weights.imagenet_weights("resnet50") == "hf://timm/resnet50.tv_in1k"
    with pytest.raises(UserError, match="--backbone-weights none"):
        backbone_weights.imagenet_weights("swin_micro")
