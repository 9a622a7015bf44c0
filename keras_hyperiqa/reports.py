"""Tables and plots of scores: the CSV and PNG files that ``fit`` and ``evaluate`` write."""

import csv
import io
import math
from pathlib import Path

from keras_hyperiqa.atomic import atomic_path, write_atomic


def write_csv(path, rows, columns=None):
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def fmt(v, spec=".4f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def plot_scatter(labels, predictions, path, title):
    """Predictions against labels, a least-squares line, SRCC and PLCC in the title.

    Returns ``{"title", "line"}``: the title drawn and the line's (slope,
    intercept), None when the labels are constant.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from keras_hyperiqa.metrics import iqa_metrics

    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(predictions, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x, y, s=10, alpha=0.7)
    line = None
    if len(x) >= 2 and np.ptp(x) > 0:
        metrics = iqa_metrics(y, x)
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + intercept, color="C1", label="least-squares line")
        line = (float(slope), float(intercept))
        ax.legend(fontsize=8, loc="upper left")
        title = (f"{title}\nSRCC {fmt(metrics['srcc'])}  PLCC {fmt(metrics['plcc'])}"
                 f"  ({len(x)} images)")
    ax.set(xlabel="label", ylabel="predicted score", title=title)
    fig.tight_layout()
    save_fig(fig, Path(path))
    plt.close(fig)
    return {"title": title, "line": line}


def save_fig(fig, path):
    """``fig`` as a PNG at ``path``, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
