"""The keras-hyperiqa command line: every command, its run directory and error paths."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import noisy_ramps, write_csv_dataset
from keras_hyperiqa.cli import cli

TINY = ["--backbone", "resnet_tiny", "--backbone-weights", "none", "--epochs", "1",
        "--batch-size", "8", "--train-patches", "1", "--test-patches", "1", "--workers", "1"]
# The smallest fit that learns the tiny set's ranking (noise level = quality):
# 12 Adam steps at twice the demo's lr. Over seeds 0-21 (each its own split
# and init) it ranked its 4 held-out images right up to label ties every time
# (SRCC 0.89-1.0, PLCC 0.949-1.0), and over seeds 0-11 its second epoch's
# training loss was 0.32-0.94 of the first's. Untrained (lr 0) it ranks them
# about backwards at seed 0; with the hypernet frozen the backbone alone can
# still rank noise levels, but the loss stays within 1% of where it started.
LEARN = ["--backbone", "resnet_tiny", "--backbone-weights", "none", "--epochs", "2",
         "--batch-size", "4", "--train-patches", "2", "--test-patches", "1", "--workers", "1",
         "--lr", "1e-3", "--lr-ratio", "4"]
# Held-out SRCC and PLCC floor: one adjacent swap among 4 images gives SRCC 0.8.
HELD_OUT_FLOOR = 0.8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A generic-CSV dataset: 20 noisy images, label = quality, 10 contents."""
    return write_csv_dataset(tmp_path_factory.mktemp("tinyset"), noisy_ramps(20, 5, 12, (232, 240)),
                             [100 - 20 * (i % 5) for i in range(20)], [f"c{i // 2}" for i in range(20)])


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = CliRunner().invoke(cli, ["fit", "--dataset", "csv", "--root", str(dataset), "--out", str(out),
                                      "--val-fraction", "0.2", *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def _run(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kw)


def test_fit_learns_to_rank_the_held_out_images(dataset, tmp_path):
    from scipy.stats import spearmanr

    out = tmp_path / "learn"
    result = _run(["fit", "--dataset", "csv", "--root", str(dataset), "--out", str(out),
                   "--val-fraction", "0.2", *LEARN])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "rounds" / "r0" / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = json.loads((out / "splits.json").read_text())["splits"][0]["test"]
    assert len(rows) == len(test) == 4
    labels = [float(r["label"]) for r in rows]
    predictions = [float(r["prediction"]) for r in rows]
    # The summary's SRCC is that of the held-out predictions.
    assert summary["srcc"] == pytest.approx(spearmanr(predictions, labels)[0], abs=1e-12)
    print(f"\nheld-out SRCC {summary['srcc']:.3f}, PLCC {summary['plcc']:.3f}")
    assert summary["srcc"] >= HELD_OUT_FLOOR
    assert summary["plcc"] >= HELD_OUT_FLOOR
    with open(out / "metrics.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    print(f"training loss by epoch {losses}")
    assert len(losses) == 2 and losses[1] <= 0.95 * losses[0]


def test_fit_writes_every_file_of_the_run_directory(run_dir):
    out, output = run_dir
    for name in ("config.json", "splits.json", "metrics.csv", "model.keras", "summary.json",
                 "curves.png", "scatter.png", "rounds/r0/last.npz", "rounds/r0/test_predictions.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert -1 <= summary["srcc"] <= 1 and -1 <= summary["plcc"] <= 1
    assert "optimistic_srcc" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == "torch"
    assert config["options"]["backbone"] == "resnet_tiny"
    assert config["versions"]["keras"]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["round"], r["epoch"]) for r in rows] == [("0", "0")]
    for key in ("loss", "backbone_lr", "hypernet_lr", "train_srcc", "val_srcc", "test_srcc", "test_plcc"):
        assert rows[0][key] != "", key
    assert "epoch 0: loss" in output and "lr backbone 2e-05 hypernet 0.0002" in output
    # Epochs and rounds from 0 everywhere: console, metrics.csv, summary.json.
    assert "Epoch 0 (epochs 0-0)" in output and "Epoch 1" not in output
    assert summary["rounds"][0]["round"] == 0 and summary["rounds"][0]["selected_epoch"] == 0
    assert "(epoch 0, epoch with the best validation SRCC)" in output
    assert "held-out test SRCC" in output
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert len(splits) == 1
    parts = [set(splits[0][k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_predict_is_deterministic_and_formats(run_dir, dataset):
    out, _ = run_dir
    args = ["predict", str(out / "model.keras"), str(dataset / "img" / "00.png"), str(dataset / "img" / "03.png"),
            "--patches", "4", "--format", "json"]
    first, second = _run(args), _run(args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    scores = json.loads(first.output)
    assert [os.path.basename(s["image"]) for s in scores] == ["00.png", "03.png"]
    # The same as calling the model on the 2 x 2 grid of 224 crops of each
    # 240 x 232 image (no resize: a csv run's model has none) and averaging.
    import keras

    from keras_hyperiqa.numerics import forward_tolerance, reduction_length

    model = keras.saving.load_model(out / "model.keras")
    assert model.resize is None and model.short_side is None
    direct = []
    for name in ("00.png", "03.png"):
        image = np.asarray(Image.open(dataset / "img" / name).convert("RGB"), np.float32)
        assert image.shape == (232, 240, 3)
        crops = np.stack([image[t:t + 224, left:left + 224] for t in (0, 8) for left in (0, 16)])
        direct.append(float(np.mean(keras.ops.convert_to_numpy(model(crops, training=False)))))
    got = np.array([s["score"] for s in scores])
    tolerance = forward_tolerance(reduction_length(model)) * np.abs(direct).max()
    np.testing.assert_allclose(got, direct, rtol=0, atol=tolerance)
    assert abs(direct[0] - direct[1]) > 10 * tolerance  # two images, two scores
    text = _run(["predict", str(out / "model.keras"), str(dataset / "img"), "--patches", "1"])
    assert text.exit_code == 0
    assert text.output.splitlines()[0] == "# scores: higher is better (trained on MOS-like labels)"
    assert len(text.output.strip().splitlines()) == 1 + 20
    csv_out = _run(["predict", str(out / "model.keras"), str(dataset / "img" / "0*.png"), "--format", "csv",
                    "--patches", "1"])
    assert csv_out.output.splitlines()[0] == "image,score,higher_is_better"
    assert len(csv_out.output.strip().splitlines()) == 11


def test_predict_reports_unreadable_inputs_and_scores_the_rest(run_dir, dataset, tmp_path):
    out, _ = run_dir
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    result = _run(["predict", str(out / "model.keras"), str(bad), str(dataset / "img" / "01.png"),
                   str(tmp_path / "missing.png"), "--patches", "1"])
    assert result.exit_code == 2
    assert "01.png\t" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2
    assert any("broken.jpg: cannot read image" in e for e in errors)
    assert any("missing.png: no such file or folder" in e for e in errors)
    assert "Traceback" not in result.output


def test_evaluate_writes_metrics_and_per_image_csv(run_dir, dataset, tmp_path):
    out, _ = run_dir
    target = tmp_path / "scores.csv"
    result = _run(["evaluate", str(out / "model.keras"), "--dataset", "csv", "--root", str(dataset),
                   "--patches", "1", "--csv", str(target)])
    assert result.exit_code == 0, result.output
    for name in ("SRCC", "PLCC", "KRCC", "RMSE"):
        assert name in result.output
    with open(target, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and set(rows[0]) == {"image", "label", "prediction"}
    # Only the run's test split.
    result = _run(["evaluate", str(out / "model.keras"), "--dataset", "csv", "--root", str(dataset),
                   "--patches", "1", "--csv", str(target), "--splits", str(out / "splits.json")])
    assert result.exit_code == 0, result.output
    split = json.loads((out / "splits.json").read_text())
    with open(target, newline="") as f:
        assert len(list(csv.DictReader(f))) == len(split["splits"][0]["test"]) < 20


@pytest.mark.parametrize("args, message", [
    (["fit", "--dataset", "koniq", "--root", "/nonexistent/koniq"], "/nonexistent/koniq"),
    (["fit", "--dataset", "koniq"], "--root is required"),
    (["fit", "--resize", "12"], "--resize '12': expected HxW"),
    (["fit", "--test-patches", "5"], "--test-patches 5 must be a square number for grid crops"),
    (["fit", "--test-patches", "-4"], "--test-patches must be at least 1"),
    (["fit", "--epochs", "0"], "--epochs must be at least 1"),
    (["fit", "--resume", "/nonexistent/run"], "not a run directory"),
    (["convert", "/nonexistent/koniq_pretrained.pkl", "out.keras"], "no such checkpoint file"),
    (["predict", "/nonexistent/model.keras", "x.jpg"], "no such model file"),
    (["fit", "--init", "/nonexistent/model.keras"], "no such --init model file"),
    (["predict", "--resize", "preset-ish", "/nonexistent/model.keras", "x.jpg"], "no such model file"),
    (["evaluate", "/nonexistent/model.keras", "--dataset", "csv", "--root", "/tmp"], "no such model file"),
])
def test_input_errors_are_one_line_with_status_2(args, message):
    result = _run(args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_option_values_are_usage_errors():
    for args in (["fit", "--revert-fix", "bogus"], ["fit", "--backbone", "vgg"], ["predict"]):
        result = _run(args)
        assert result.exit_code == 2
        assert "Traceback" not in result.output


def test_bad_model_file(dataset, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"garbage")
    result = _run(["predict", str(model), str(dataset / "img" / "00.png")])
    assert result.exit_code == 2
    assert f"{model}: not a readable .keras model" in result.output


def test_model_file_user_errors_are_one_line(tmp_path):
    import zipfile

    import keras

    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]).save(other)
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(no_config, "w") as zf:
        zf.writestr("metadata.json", "{}")
    image = tmp_path / "photos" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (240, 240)).save(image)
    for path, message in ((other, "not a HyperIQA model (Sequential)"),
                          (no_config, "not a readable .keras model (no config.json in the archive)")):
        result = _run(["predict", str(path), str(image)])
        assert result.exit_code == 2, result.output
        assert f"{path}: {message}" in result.output
        assert "Traceback" not in result.output


def test_a_bug_inside_keras_is_not_reported_as_a_bad_file(run_dir, dataset, monkeypatch):
    """A KeyError raised while Keras rebuilds a valid file is an internal error
    (exit 1, the traceback with --debug or KERAS_HYPERIQA_DEBUG=1), not the
    user's "not a readable .keras model"."""
    import keras

    out, _ = run_dir

    def broken(*args, **kwargs):
        raise KeyError("dtype_policy")

    monkeypatch.setattr(keras.saving, "load_model", broken)
    args = ["predict", str(out / "model.keras"), str(dataset / "img" / "00.png"), "--patches", "1"]
    monkeypatch.delenv("KERAS_HYPERIQA_DEBUG", raising=False)
    result = _run(args)
    assert result.exit_code == 1, result.output
    assert "not a readable" not in result.output
    assert "Internal error" in result.stderr and "KeyError" in result.stderr
    assert "--debug" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(KeyError, match="dtype_policy"):
        _run(["--debug", *args])
    monkeypatch.setenv("KERAS_HYPERIQA_DEBUG", "1")
    with pytest.raises(KeyError, match="dtype_policy"):
        _run(args)


def test_invalid_dataset_stops_before_training_unless_skipped(dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "img").symlink_to(dataset / "img")
    lines = (dataset / "labels.csv").read_text().splitlines()
    lines[3] = "img/02.png,abc,c1"
    lines.append("img/missing.png,50,c99")
    (broken / "labels.csv").write_text("\n".join(lines) + "\n")
    result = _run(["fit", "--dataset", "csv", "--root", str(broken), "--out", str(tmp_path / "r1"), *TINY])
    assert result.exit_code == 2
    assert "drop them with --skip-invalid" in result.output and "skip_invalid" not in result.output
    assert "labels.csv row 4: label 'abc' is not a number" in result.output
    assert "missing.png" in result.output
    assert not (tmp_path / "r1" / "model.keras").exists()
    result = _run(["fit", "--dataset", "csv", "--root", str(broken), "--out", str(tmp_path / "r2"),
                   "--skip-invalid", *TINY])
    assert result.exit_code == 0, result.output
    dropped = (tmp_path / "r2" / "dropped.txt").read_text()
    assert "abc" in dropped and "missing.png" in dropped
    assert "skip_invalid" not in result.output
    assert (f"dataset 'csv': skipped 1 invalid record(s) of 20 and 1 unreadable row(s); "
            f"the list is in {tmp_path / 'r2' / 'dropped.txt'}") in result.output


def _files(out):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


def test_fit_into_a_finished_run_refuses_other_options_and_resumes_the_same(run_dir, dataset, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    before = _files(out)
    same = ["fit", "--dataset", "csv", "--root", str(dataset), "--out", str(out), "--val-fraction", "0.2", *TINY]
    result = _run([*same, "--seed", "1"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "--seed 0 there, 1 here" in line
    assert f"--resume {out}" in line and "another --out" in line and "--overwrite" in line
    assert _files(out) == before  # nothing rewritten, config.json and splits.json included
    # The same options again: a resume of a finished run, which leaves every file as it was.
    result = _run(same)
    assert result.exit_code == 0, result.output
    assert "already complete" in result.output and "unchanged" in result.output
    assert _files(out) == before
    # --overwrite replaces the run.
    result = _run([*same, "--seed", "1", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["options"]["seed"] == 1
    assert json.loads((out / "splits.json").read_text())["splits"][0]["seed"] == 1
    assert "already complete" not in result.output


def test_run_directory_files_follow_the_umask(run_dir):
    out, _ = run_dir
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "splits.json", "metrics.csv", "summary.json", "model.keras", "rounds/r0/last.npz",
            "rounds/r0/history.csv", "rounds/r0/test_predictions.csv"} <= set(modes)
    assert modes == {name: 0o666 & ~mask for name in modes}


def test_atomic_writers_give_the_umask_mode(tmp_path):
    from keras_hyperiqa.atomic import write_atomic
    from keras_hyperiqa.training import checkpoint as ckpt
    from keras_hyperiqa.training.optimizer import HyperAdam
    from doubles import TinyIQA

    model, opt = TinyIQA(), HyperAdam()
    opt.build(model.trainable_variables)
    mask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.json", "{}")
        ckpt.save_checkpoint(tmp_path / "last.npz", model, opt, {})
    finally:
        os.umask(mask)
    for name in ("a.json", "last.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_a_split_too_small_to_score_stops_before_training(tmp_path):
    # no ref column: every image its own group; val = 10% of 8 = 1 image
    images = [np.full((240, 240, 3), 20 * i, np.uint8) for i in range(10)]
    root = write_csv_dataset(tmp_path / "small", images, [10 * i for i in range(10)])
    out = tmp_path / "run"
    result = _run(["fit", "--dataset", "csv", "--root", str(root), "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "validation split has 1 image, correlations need at least 2" in result.output
    assert "--val-fraction 0" in result.output
    assert not (out / "rounds").exists() and not (out / "config.json").exists()


def test_help_does_not_import_keras():
    code = ("import sys; from keras_hyperiqa.cli import main\n"
            "try:\n    main(['fit', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'keras' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--revert-fix" in proc.stdout


def test_resume_after_a_killed_run_completes_it(dataset, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "keras_hyperiqa", "fit", "--dataset", "csv", "--root", str(dataset),
            "--out", str(out), *TINY]
    args[args.index("--epochs") + 1] = "3"
    env = dict(os.environ, KERAS_BACKEND="torch")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "rounds" / "r0" / "last.npz"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    assert not (out / "summary.json").exists()
    result = _run(["fit", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert "resuming at epoch" in result.output
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    # The resumed run ends where an uninterrupted one does.
    whole = tmp_path / "whole"
    result = _run(["fit", *args[args.index("--dataset"):args.index("--out")], "--out", str(whole),
                   *args[args.index("--out") + 2:]])
    assert result.exit_code == 0, result.output
    with open(whole / "metrics.csv", newline="") as f:
        uninterrupted = list(csv.DictReader(f))
    # Continuous quantities only (a rank correlation jumps on a near tie), to
    # 1e-4: bit-equal on CPU; the margin leaves room for a GPU's unordered
    # reductions, while a resume that drops the Adam moments moves them by 2e-3.
    numbers = ("loss", "test_plcc", "test_rmse")
    for a, b in zip(rows, uninterrupted):
        np.testing.assert_allclose([float(a[k]) for k in numbers], [float(b[k]) for k in numbers],
                                   rtol=1e-4, err_msg=a["epoch"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plcc"] == pytest.approx(json.loads((whole / "summary.json").read_text())["plcc"],
                                            rel=1e-4)


def test_ablate_runs_five_variants_side_by_side(dataset, tmp_path):
    out = tmp_path / "ablate"
    result = _run(["ablate", "--dataset", "csv", "--root", str(dataset), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    table = (out / "ablation.md").read_text()
    for name in ("all-fixes", "revert-filter", "revert-backbone-decay", "revert-optimizer-reset", "original"):
        assert f"| {name} |" in table
        assert (out / name / "summary.json").is_file()
    assert (out / "ablation.png").is_file()
    data = json.loads((out / "ablation.json").read_text())
    assert data[-1]["reverted"] == ["filter", "backbone-decay", "optimizer-reset"]
    # Same splits for every variant.
    splits = {(out / v / "splits.json").read_text() for v in
              ("all-fixes", "revert-filter", "revert-backbone-decay", "revert-optimizer-reset", "original")}
    assert len(splits) == 1


def test_fit_with_swin_backbone_and_predict(dataset, tmp_path):
    out = tmp_path / "swin"
    args = [a if a != "resnet_tiny" else "swin_micro" for a in TINY]
    result = _run(["fit", "--dataset", "csv", "--root", str(dataset), "--out", str(out), "--multiscale",
                   "--val-fraction", "0", *args])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["options"]
    assert config["backbone"] == "swin_micro" and config["multiscale"] is True
    with open(out / "rounds" / "r0" / "test_predictions.csv", newline="") as f:
        first = next(csv.DictReader(f))  # scored by the run (its one epoch is the model saved)
    scored = _run(["predict", str(out / "model.keras"), str(dataset / first["image"]), "--patches", "1",
                   "--format", "json"])
    assert scored.exit_code == 0, scored.output
    # predict's one grid crop is the run's one test crop; batches of 1 and 8
    # differ only by float32 rounding (a relative 1e-6 or so).
    score, expected = json.loads(scored.output)[0]["score"], float(first["prediction"])
    assert score == pytest.approx(expected, rel=1e-4)


def test_resize_accepts_one_set_everywhere(run_dir, dataset):
    out, _ = run_dir
    image = str(dataset / "img" / "00.png")
    base = ["predict", str(out / "model.keras"), image, "--patches", "1"]
    results = [_run(base + extra) for extra in ([], ["--resize", "preset"], ["--resize", "model"])]
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    assert len({r.output for r in results}) == 1
    for command in (["predict", "--help"], ["evaluate", "--help"], ["fit", "--help"], ["convert", "--help"]):
        assert "HxW|none|preset" in _run(command).output
    bad = _run(base + ["--resize", "p"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--resize 'p': expected HxW (e.g. 512x384), 'none' or 'preset'" in bad.output


def test_predict_checks_inputs_and_options_before_loading_the_model(dataset, tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"garbage")  # loading it would fail: these errors come first
    result = _run(["predict", str(model), str(tmp_path / "missing.png")])
    assert result.exit_code == 2
    assert "missing.png: no such file or folder" in result.output
    assert "not a readable .keras model" not in result.output
    result = _run(["predict", str(model), str(dataset / "img" / "00.png"), "--patches", "10"])
    assert result.exit_code == 2
    assert "--patches 10 must be a square number for grid crops" in result.output
    assert "not a readable .keras model" not in result.output


def test_evaluate_scatter_shows_srcc_plcc_and_a_fitted_line(run_dir, dataset, tmp_path):
    from keras_hyperiqa.reports import plot_scatter
    from keras_hyperiqa.metrics import iqa_metrics

    out, _ = run_dir
    scores, plot = tmp_path / "scores.csv", tmp_path / "scatter.png"
    result = _run(["evaluate", str(out / "model.keras"), "--dataset", "csv", "--root", str(dataset),
                   "--patches", "1", "--csv", str(scores), "--scatter", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"scatter plot in {plot}" in result.output
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([1.5, 1.9, 3.4, 3.9])
    drawn = plot_scatter(labels, preds, tmp_path / "s.png", "t")
    m = iqa_metrics(preds, labels)
    assert drawn["title"] == f"t\nSRCC {m['srcc']:.4f}  PLCC {m['plcc']:.4f}  (4 images)"
    np.testing.assert_allclose(drawn["line"], np.polyfit(labels, preds, 1))
    assert (out / "scatter.png").is_file()


def test_commands_never_import_tensorflow_nor_jax_under_torch(run_dir, dataset):
    out, _ = run_dir
    code = ("import sys\nfrom keras_hyperiqa.cli import main\n"
            f"try:\n    main(['predict', {str(out / 'model.keras')!r}, {str(dataset / 'img' / '00.png')!r},"
            " '--patches', '1'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('loaded:', sorted(n for n in ('tensorflow', 'tensorflow_text', 'jax', 'keras_hub')"
            " if n in sys.modules))\n"
            "import importlib.util\nprint('importable after:', importlib.util.find_spec('jax') is not None)\n")
    env = dict(os.environ, KERAS_BACKEND="torch")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    # keras-hub was used, TensorFlow and jax were not imported, and the block ended with the command.
    assert "loaded: ['keras_hub']" in proc.stdout
    assert "importable after: True" in proc.stdout
    assert proc.stderr == "", proc.stderr  # no absl / oneDNN / CUDA-probe lines
