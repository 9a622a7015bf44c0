"""A round's report (the selected epoch's numbers) and the medians over rounds.

The paper reports the median SRCC/PLCC over 10 random train/test splits, with
the epoch chosen by the best *test* SRCC (optimistic: the test split selects
the model). Here the default selects the epoch on a validation split carved
from the training images and reports test metrics at that epoch; the
optimistic best-test-epoch numbers are reported too, labelled as such.
``keras_hyperiqa.experiment.fit`` drives the rounds (a split, a seed, a run
directory each) and summarizes them with these.
"""

import math

import numpy as np


def _best(history, key):
    best_i, best_v = None, -math.inf
    for i, row in enumerate(history):
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if value > best_v:  # ties: earliest epoch wins
            best_i, best_v = i, value
    return best_i


def round_report(history, select_on="val_srcc"):
    """Summarize one round's per-epoch history.

    Returns a dict with ``selected_epoch`` (best ``select_on``; ``None`` when
    no row has it) and the ``test_*``/``val_*`` metrics of that epoch, plus
    ``optimistic_epoch`` and ``optimistic_test_srcc`` / ``optimistic_test_plcc``
    (best test SRCC over epochs: the original's protocol, selected on test).
    """
    report = {"selected_on": select_on, "selected_epoch": None}
    i = _best(history, select_on) if select_on else None
    if i is not None:
        row = history[i]
        report["selected_epoch"] = row.get("epoch", i)
        for key, value in row.items():
            if key.startswith(("test_", "val_")):
                report[key] = value
    j = _best(history, "test_srcc")
    report["optimistic_epoch"] = None if j is None else history[j].get("epoch", j)
    if j is not None:
        report["optimistic_test_srcc"] = history[j]["test_srcc"]
        report["optimistic_test_plcc"] = history[j].get("test_plcc")
    return report


def summarize_rounds(reports):
    """Per-round reports plus medians of the headline numbers.

    Returns ``{"rounds": reports, "median_test_srcc", "median_test_plcc",
    "median_optimistic_test_srcc", "median_optimistic_test_plcc"}`` (a median
    is ``None`` when no round has that number).
    """
    summary = {"rounds": list(reports)}
    for key in ("test_srcc", "test_plcc", "optimistic_test_srcc",
                "optimistic_test_plcc"):
        values = [r[key] for r in reports if r.get(key) is not None]
        summary["median_" + key] = float(np.median(values)) if values else None
    return summary
