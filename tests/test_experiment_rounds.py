"""fit's rounds driver: one seeded round per split, medians over rounds, finished rounds kept.

The training itself is replaced by a trainer whose history is given, so the
driver's bookkeeping (seeds, epoch selection, done.json, summary.json) is
checked in a second; test_cli.py trains for real.
"""

import json

import numpy as np
import pytest

from conftest import write_csv_dataset
from keras_hyperiqa import experiment

TEST_SRCC = {10: [0.1, 0.2], 11: [0.5, 0.3], 12: [0.9, 0.4]}  # by round seed


def _history(val, test):
    return [{"epoch": e, "val_srcc": v, "test_srcc": t, "test_plcc": t - 0.01}
            for e, (v, t) in enumerate(zip(val, test))]


class _Trainer:
    def __init__(self, seed, fitted):
        self.seed, self.fitted, self.history = seed, fitted, []

    def fit(self, train, epochs, **kw):
        self.fitted.append(self.seed)
        self.history = _history(val=[0.2, 0.1], test=TEST_SRCC[self.seed])  # selects epoch 0


@pytest.fixture
def fake_training(monkeypatch):
    fitted = []

    def round_trainer(config, info, seed, resize, short_side):
        return _Trainer(seed, fitted), None

    def save_selected(trainer, info, split, test, rdir, primary):
        (rdir / "model.keras").write_bytes(b"round %d" % split.round)

    monkeypatch.setattr(experiment, "_round_trainer", round_trainer)
    monkeypatch.setattr(experiment, "patch_sources", lambda *a: (type("S", (), {"steps_per_epoch": 1}),
                                                                 object(), object()))
    monkeypatch.setattr(experiment, "_round_callbacks", lambda *a: [])
    monkeypatch.setattr(experiment, "_save_selected", save_selected)
    monkeypatch.setattr(experiment, "plot_run", lambda out: None)
    return fitted


def test_fit_trains_each_round_with_its_seed_and_reports_medians(tmp_path, fake_training):
    root = write_csv_dataset(tmp_path / "set", [np.full((8, 8, 3), i, np.uint8) for i in range(30)],
                             list(range(30)), names="{:02d}.png")
    config = experiment.FitConfig(dataset="csv", root=str(root), backbone="resnet_tiny",
                                  backbone_weights="none", epochs=2, rounds=3, seed=10,
                                  val_fraction=0.2, out=str(tmp_path / "run"), verbose=0)
    summary = experiment.fit(config)
    assert fake_training == [10, 11, 12]
    assert [(r["round"], r["seed"], r["selected_epoch"], r["test_srcc"]) for r in summary["rounds"]] == [
        (0, 10, 0, 0.1), (1, 11, 0, 0.5), (2, 12, 0, 0.9)]
    assert summary["srcc"] == pytest.approx(0.5) and summary["plcc"] == pytest.approx(0.49)
    assert summary["optimistic_srcc"] == pytest.approx(0.5) and summary["rounds_run"] == 3
    out = tmp_path / "run"
    assert json.loads((out / "summary.json").read_text())["srcc"] == pytest.approx(0.5)
    assert (out / "model.keras").read_bytes() == b"round 0"
    for r in range(3):
        assert json.loads((out / "rounds" / f"r{r}" / "done.json").read_text())["seed"] == 10 + r
    # The same options again: every round is complete, none is trained again.
    assert experiment.fit(config)["srcc"] == pytest.approx(0.5)
    assert fake_training == [10, 11, 12]
