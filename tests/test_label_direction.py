"""Label direction: models record it, evaluate reports higher = better, predict says it."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from keras_hyperiqa.cli import cli
from keras_hyperiqa.data.demo import distort, make_scene
from keras_hyperiqa.inference import load_model_file

TINY = ["--backbone", "resnet_tiny", "--backbone-weights", "none", "--epochs", "1", "--batch-size", "8",
        "--train-patches", "1", "--test-patches", "1", "--val-fraction", "0", "--workers", "1"]


def _run(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same 16 images as a CSIQ-layout DMOS set and a generic-CSV MOS set (mos = 1 - dmos)."""
    root = tmp_path_factory.mktemp("direction")
    csiq, mos = root / "csiq", root / "mos"
    (csiq / "dst_imgs_all").mkdir(parents=True)
    mos.mkdir()
    rng = np.random.default_rng(0)
    dmos_lines, mos_rows = [], [("image", "label", "ref")]
    for i in range(16):
        scene, level = i % 4, 1 + i // 4
        name = f"scene{scene}.BLUR.{level}.png"
        img = distort(make_scene(2, scene), "blur", level, rng)
        Image.fromarray(img).save(csiq / "dst_imgs_all" / name)
        Image.fromarray(img).save(mos / name)
        dmos = round(0.1 + 0.2 * (level - 1) + 0.01 * scene, 3)
        dmos_lines.append(f"{name} {dmos}")
        mos_rows.append((name, round(1.0 - dmos, 3), f"scene{scene}"))
    (csiq / "csiq_label.txt").write_text("\n".join(dmos_lines) + "\n")
    with open(mos / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(mos_rows)
    return dict(root=root, csiq=csiq, mos=mos)


@pytest.fixture(scope="module")
def models(sets):
    """A model fitted on the DMOS set, and copies of it marked MOS and unknown."""
    out = sets["root"] / "run"
    result = _run(["fit", "--dataset", "csiq", "--root", sets["csiq"], "--out", out, *TINY])
    assert result.exit_code == 0, result.output
    paths = {"dmos": out / "model.keras", "fit_output": result.output}
    for name, flag in (("mos", True), ("unknown", None)):
        model = load_model_file(out / "model.keras")
        model.higher_is_better = flag
        paths[name] = sets["root"] / f"{name}.keras"
        model.save(paths[name])
    return paths


def test_fit_on_dmos_records_lower_is_better(models):
    assert "DMOS labels (lower is better)" in models["fit_output"]
    assert "backbone resnet_tiny: trained from scratch (--backbone-weights none)" in models["fit_output"]
    assert load_model_file(models["dmos"]).higher_is_better is False
    assert load_model_file(models["mos"]).higher_is_better is True  # the attribute round-trips
    assert load_model_file(models["unknown"]).higher_is_better is None


def test_fit_on_mos_records_higher_is_better(sets, tmp_path):
    result = _run(["fit", "--dataset", "csv", "--root", sets["mos"], "--out", tmp_path / "run", *TINY])
    assert result.exit_code == 0, result.output
    assert "DMOS" not in result.output
    assert load_model_file(tmp_path / "run" / "model.keras").higher_is_better is True


def _evaluate(model, dataset, root, tmp_path):
    result = _run(["evaluate", model, "--dataset", dataset, "--root", root, "--patches", "1",
                   "--csv", tmp_path / f"{dataset}.csv"])
    assert result.exit_code == 0, result.output
    values = dict(zip(*[iter(result.output.split("(")[0].split())] * 2))
    return {k: float(v) for k, v in values.items()}, result.output


def test_evaluate_reports_higher_is_better_correlations(models, sets, tmp_path):
    """One model's scores against MOS and against the same images' DMOS: the same SRCC and PLCC."""
    on_mos, out_mos = _evaluate(models["mos"], "csv", sets["mos"], tmp_path)
    assert "note:" not in out_mos and "RMSE" in on_mos
    assert abs(on_mos["SRCC"]) > 0.05  # the check below would not tell a flip from none
    on_dmos, out_dmos = _evaluate(models["mos"], "csiq", sets["csiq"], tmp_path)
    for key in ("SRCC", "PLCC", "KRCC"):
        assert on_dmos[key] == pytest.approx(on_mos[key], abs=1e-4), key
    assert "RMSE" not in on_dmos
    notes = [line for line in out_dmos.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "negated labels" in notes[0] and "csiq" in notes[0]


def test_evaluate_keeps_labels_when_directions_agree(models, sets, tmp_path):
    """A DMOS-trained model on DMOS labels, and a model of unknown direction: no flip, no note."""
    for name in ("dmos", "unknown"):
        metrics, output = _evaluate(models[name], "csiq", sets["csiq"], tmp_path)
        assert "note:" not in output and "RMSE" in metrics
        with open(tmp_path / "csiq.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        from scipy import stats

        srcc = stats.spearmanr([float(r["prediction"]) for r in rows], [float(r["label"]) for r in rows])[0]
        assert metrics["SRCC"] == pytest.approx(srcc, abs=1e-4)


def test_predict_says_which_way_scores_point(models, sets):
    image = sets["mos"] / "scene0.BLUR.1.png"
    expected = {"dmos": (False, "lower is better"), "mos": (True, "higher is better"),
                "unknown": (None, "direction unknown")}
    for name, (flag, words) in expected.items():
        text = _run(["predict", models[name], image, "--patches", "1"])
        assert text.exit_code == 0, text.output
        header, line = text.output.splitlines()
        assert header.startswith("# scores: " + words)
        assert line.startswith(str(image) + "\t")
        entries = json.loads(_run(["predict", models[name], image, "--patches", "1", "--format", "json"]).output)
        assert entries[0]["higher_is_better"] is flag
        rows = list(csv.DictReader(_run(["predict", models[name], image, "--patches", "1",
                                         "--format", "csv"]).output.splitlines()))
        assert rows[0]["higher_is_better"] == ("" if flag is None else str(flag).lower())


def test_convert_records_direction(tmp_path):
    from reference_hyperiqa import random_original_state_dict

    src = tmp_path / "ckpt.pkl"
    torch.save(random_original_state_dict(seed=0), src)
    assert _run(["convert", src, tmp_path / "koniq.keras"]).exit_code == 0
    assert load_model_file(tmp_path / "koniq.keras").higher_is_better is True
    assert _run(["convert", src, tmp_path / "live.keras", "--lower-is-better"]).exit_code == 0
    assert load_model_file(tmp_path / "live.keras").higher_is_better is False
