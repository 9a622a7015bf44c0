"""The seed document's ablation: the three solver fixes, each reverted, side by side.

Five runs on the same data, splits and seed: all fixes (this project's
default), each fix reverted alone, and all three reverted (the original
solver's behaviour). Each is an ordinary run directory under ``out``, so an
interrupted ablation resumes where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from keras_hyperiqa.atomic import write_atomic
from keras_hyperiqa.experiment import fit, write_json
from keras_hyperiqa.names import REVERT_FIXES
from keras_hyperiqa.reports import save_fig

VARIANTS = (
    ("all-fixes", ()),
    ("revert-filter", ("filter",)),
    ("revert-backbone-decay", ("backbone-decay",)),
    ("revert-optimizer-reset", ("optimizer-reset",)),
    ("original", tuple(REVERT_FIXES)),
)


def run(config, out):
    """Train the five variants of ``config`` under ``out``; write the comparison."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, reverted in VARIANTS:
        run_dir = out / name
        if config.verbose:
            print(f"== {name}: reverted fixes: {', '.join(reverted) or 'none'}", flush=True)
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        elif (run_dir / "config.json").is_file():
            summary = fit(resume=str(run_dir))
        else:
            summary = fit(dataclasses.replace(config, revert_fix=list(reverted), out=str(run_dir)))
        results.append((name, reverted, summary, _curve(run_dir)))
    table = _table(results)
    write_atomic(out / "ablation.md", table)
    write_json(out / "ablation.json", [
        {"variant": n, "reverted": list(r), "srcc": s["srcc"], "plcc": s["plcc"],
         "optimistic_srcc": s["optimistic_srcc"], "test_srcc_per_epoch": c}
        for n, r, s, c in results])
    _plot(results, out / "ablation.png")
    if config.verbose:
        print(table, end="", flush=True)
    return results


def _curve(run_dir):
    """Test SRCC per epoch of round 0."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["round"] == "0"]
    return [float(r["test_srcc"]) if r.get("test_srcc") else math.nan for r in rows]


def _table(results):
    lines = ["| variant | reverted fixes | test SRCC | test PLCC | best-epoch test SRCC (optimistic) | test SRCC per epoch |",
             "|---|---|---|---|---|---|"]
    for name, reverted, s, curve in results:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {name} | {', '.join(reverted) or 'none'} | {fmt(s['srcc'])} | {fmt(s['plcc'])} | "
                     f"{fmt(s['optimistic_srcc'])} | {' '.join(f'{v:.3f}' for v in curve)} |")
    return "\n".join(lines) + "\n"


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, _, _, curve in results:
        ax.plot(range(len(curve)), curve, marker="o", label=name)
    ax.set(xlabel="epoch (from 0)", ylabel="test SRCC", title="HyperIQA solver fixes: ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_fig(fig, path)
    plt.close(fig)
