"""Run one HyperIQA configuration under KERAS_BACKEND=torch and =jax and compare them.

Same seed, data and initial weights in both (each backend in its own
subprocess); reports forward parity, per-epoch loss / SRCC / PLCC side by side,
step time and peak memory. Writes OUT/comparison.md and OUT/comparison.json;
exits 1 when the forward parity breaks --tolerance.

    .venv/bin/python scripts/compare_backends.py --out runs/compare
    .venv/bin/python scripts/compare_backends.py --backbone resnet50 --epochs 2 --out runs/compare50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_hyperiqa.bench import compare_backends  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="comparison", help="output folder (default: ./comparison)")
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-5, help="max relative forward difference")
    ap.add_argument("--patch-size", type=int, default=224)
    ap.add_argument("--scenes", type=int, default=3, help="demo-style scenes (13 images each; the last is the test set)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--train-patches", type=int, default=2)
    ap.add_argument("--test-patches", type=int, default=1)
    ap.add_argument("--parity-patches", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-ratio", type=float, default=4.0)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = ap.parse_args(argv)
    result = compare_backends(
        args.out, backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        tolerance=args.tolerance, patch_size=args.patch_size, scenes=args.scenes, image_size=args.image_size,
        train_patches=args.train_patches, test_patches=args.test_patches, parity_patches=args.parity_patches,
        lr=args.lr, lr_ratio=args.lr_ratio, device=args.device, verbose=True,
    )
    print((Path(args.out) / "comparison.md").read_text())
    return 0 if result["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
