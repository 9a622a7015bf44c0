"""Image-level IQA metrics: per-image mean of patch scores, then SRCC/PLCC/KRCC/RMSE.

As in the original evaluation, each image's score is the plain mean of the
scores of its test patches (``data.pipeline.image_means``), and SRCC
(Spearman), PLCC (Pearson, no logistic fit), KRCC (Kendall) and RMSE are
computed on those means against the labels.
"""

import numpy as np

from keras_hyperiqa.data.pipeline import image_means


def iqa_metrics(predictions, labels):
    """SRCC, PLCC, KRCC and RMSE between per-image predictions and labels.

    Returns a dict ``{"srcc", "plcc", "krcc", "rmse"}`` of Python floats.
    Correlations are NaN when either side is constant (scipy's convention).
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels, dtype=np.float64).reshape(-1)
    if pred.shape != lab.shape:
        raise ValueError(f"{pred.size} predictions but {lab.size} labels")
    if pred.size < 2:
        raise ValueError("need at least two images to compute correlations")
    import warnings

    from scipy import stats  # here: scipy.stats costs a second of start-up that predict does not need

    with warnings.catch_warnings():
        # Constant inputs: scipy warns and returns NaN; NaN is the answer.
        warnings.simplefilter("ignore")
        srcc = stats.spearmanr(pred, lab)[0]
        plcc = stats.pearsonr(pred, lab)[0]
        krcc = stats.kendalltau(pred, lab)[0]
    rmse = float(np.sqrt(np.mean((pred - lab) ** 2)))
    return {
        "srcc": float(srcc),
        "plcc": float(plcc),
        "krcc": float(krcc),
        "rmse": rmse,
    }


def image_level_metrics(patch_scores, image_index, labels):
    """Aggregate patch scores per image, then :func:`iqa_metrics`."""
    labels = np.asarray(labels)
    means = image_means(patch_scores, image_index, len(labels))
    return iqa_metrics(means, labels)
