"""Run one HyperIQA configuration under KERAS_BACKEND=torch and =jax and compare them.

The same command as ``keras-hyperiqa compare`` (see its --help): same seed,
data and initial weights in both backends (each in its own subprocess);
forward parity, per-epoch loss / SRCC / PLCC side by side, step time and peak
memory. Writes OUT/comparison.md and OUT/comparison.json; exits 1 when the
forward parity breaks --tolerance.

    .venv/bin/python scripts/compare_backends.py --out runs/compare
    .venv/bin/python scripts/compare_backends.py --backbone resnet50 --epochs 2 --out runs/compare50
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_hyperiqa.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
