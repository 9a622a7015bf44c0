"""Image-level metrics, evaluation through the trainer, round reports and their medians."""

import keras_hyperiqa  # noqa: F401
import numpy as np
import pytest
from scipy import stats

from keras_hyperiqa.data.pipeline import image_means
from keras_hyperiqa.metrics import (
    image_level_metrics,
    iqa_metrics,
)
from keras_hyperiqa.training.run import (
    round_report,
    summarize_rounds,
)


def test_aggregate_is_per_image_mean():
    scores = np.array([1.0, 3.0, 10.0, 2.0, 4.0, 6.0])
    index = np.array([0, 0, 2, 1, 1, 1])
    np.testing.assert_allclose(image_means(scores, index, 3),
                               [2.0, 4.0, 10.0])
    with pytest.raises(ValueError):  # image 3 has no patch
        image_means(scores, index, 4)


def test_metrics_match_scipy_and_use_image_means():
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 100, 20)
    patch_index = np.repeat(np.arange(20), 5)
    # Per-patch noise large enough that patch-level and image-level differ.
    patches = labels[patch_index] + rng.normal(0, 15, patch_index.size)
    got = image_level_metrics(patches, patch_index, labels)
    means = patches.reshape(20, 5).mean(axis=1)
    assert got["srcc"] == pytest.approx(stats.spearmanr(means, labels)[0])
    assert got["plcc"] == pytest.approx(stats.pearsonr(means, labels)[0])
    assert got["krcc"] == pytest.approx(stats.kendalltau(means, labels)[0])
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((means - labels) ** 2)))
    assert got["srcc"] != pytest.approx(
        stats.spearmanr(patches, labels[patch_index])[0], abs=1e-3)
    perfect = iqa_metrics(labels * 2 + 1, labels)
    assert perfect["srcc"] == pytest.approx(1.0)
    assert perfect["plcc"] == pytest.approx(1.0)


def test_trainer_evaluate_aggregates_patches_per_image():
    from doubles import (
        ArrayEvalSource,
        TinyIQA,
        toy_dataset,
    )
    from keras_hyperiqa.training.trainer import Trainer

    x, y = toy_dataset(n_images=6)
    source = ArrayEvalSource(x, y, patches_per_image=3, batch_size=4)
    trainer = Trainer(TinyIQA())
    patches, index = [], []
    for xb, ib in source.eval_batches():
        patches.append(trainer.predict_on_batch(xb))
        index.append(ib)
    patches, index = np.concatenate(patches), np.concatenate(index)
    assert patches.shape == (18,)
    expected = np.array([patches[index == i].astype(np.float64).mean()
                         for i in range(6)])
    np.testing.assert_allclose(trainer.predict(source), expected, rtol=1e-6)
    assert trainer.evaluate(source) == pytest.approx(iqa_metrics(expected, y))


def _history(val, test):
    return [{"epoch": e, "val_srcc": v, "test_srcc": t, "test_plcc": t - 0.01}
            for e, (v, t) in enumerate(zip(val, test))]


def test_round_report_selects_on_val_and_reports_optimistic():
    history = _history(val=[0.5, 0.8, 0.7], test=[0.9, 0.6, 0.95])
    report = round_report(history)
    assert report["selected_epoch"] == 1
    assert report["test_srcc"] == 0.6
    assert report["optimistic_epoch"] == 2
    assert report["optimistic_test_srcc"] == 0.95
    assert report["optimistic_test_plcc"] == pytest.approx(0.94)


def test_summarize_rounds_medians():
    tests = {0: [0.1, 0.2], 1: [0.5, 0.3], 2: [0.9, 0.4]}
    reports = [round_report(_history(val=[0.2, 0.1], test=tests[r])) for r in range(3)]  # epoch 0
    summary = summarize_rounds(reports)
    assert [r["test_srcc"] for r in summary["rounds"]] == [0.1, 0.5, 0.9]
    assert summary["median_test_srcc"] == pytest.approx(0.5)
    assert summary["median_test_plcc"] == pytest.approx(0.49)
    assert summary["median_optimistic_test_srcc"] == pytest.approx(0.5)
    assert summarize_rounds([])["median_test_srcc"] is None
