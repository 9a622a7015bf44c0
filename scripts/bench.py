"""Benchmark Keras-torch, Keras-jax and a plain-PyTorch HyperIQA side by side.

Training throughput (patches/s), inference throughput (images/s at 25
patches each) and peak memory per implementation (each figure in its own
subprocess, median of --reps after --warmup), the data pipeline against
decode-per-patch, and the ratios to the plain-PyTorch baseline (timm ResNet +
torch.nn head + torch.optim.Adam with two groups). Writes OUT/bench.md and
OUT/bench.json.

    .venv/bin/python scripts/bench.py                         # CPU: resnet50, batch 4, fp32 (< 5 min on 2 cores)
    .venv/bin/python scripts/bench.py --backbone resnet_tiny  # quick
    .venv/bin/python scripts/bench.py --device gpu            # batch 64, bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import IMPLEMENTATIONS, run_bench  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench", help="output folder (default: ./bench)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: cpu 4, gpu 64)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (the median counts)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default: cpu 1, gpu 3)")
    ap.add_argument("--steps-per-rep", type=int, default=None, help="train steps per repetition (cpu 1, gpu 5)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: cpu fp32, gpu bf16")
    ap.add_argument("--infer-images", type=int, default=None, help="images (25 patches each) per inference batch")
    ap.add_argument("--patches-per-image", type=int, default=25)
    ap.add_argument("--patch-size", type=int, default=224)
    ap.add_argument("--pipeline-images", type=int, default=32)
    ap.add_argument("--impl", action="append", choices=IMPLEMENTATIONS,
                    help="implementations to run (repeatable; default: all three)")
    args = ap.parse_args(argv)
    run_bench(
        args.out, backbone=args.backbone, batch_size=args.batch_size, reps=args.reps, warmup=args.warmup,
        device=args.device, precision=args.precision, infer_images=args.infer_images,
        patches_per_image=args.patches_per_image, patch_size=args.patch_size,
        pipeline_images=args.pipeline_images, steps_per_rep=args.steps_per_rep,
        implementations=tuple(args.impl or IMPLEMENTATIONS), verbose=True,
    )
    print((Path(args.out) / "bench.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
