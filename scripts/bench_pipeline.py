"""Throughput of the patch pipeline against decode-per-patch, on the same generated images.

Generates ``--images`` JPEGs (512 wide x 384 high, photo-like: smooth noise
plus edges) in a temporary folder, then times one training epoch of
``--patches`` random 224 crops (with flips) per image, batches of 96, as
float32 arrays:

* decode-per-patch, 1 thread: the original HyperIQA way (its DataLoader runs
  with num_workers=0): every patch opens and decodes the whole file again,
  flips, crops and converts;
* decode-per-patch, N threads: the same with ``--workers`` threads, for a fair
  comparison of the parallel part;
* PatchDataset: decode each image once per epoch, cut all its crops
  (``--workers`` threads), float32 batches like the others; and the same
  with ``dtype='uint8'`` batches (for a loop that casts on the device).

Each method runs ``--repeat`` times and the best time counts. With small
JPEGs decoding is cheap, so writing the float32 batches (58 MB per batch of
96) bounds every method; larger images widen the gap.

Prints patches/s for each and the speed-up ratio. No keras / torch import.

    .venv/bin/python scripts/bench_pipeline.py --images 32 --patches 25 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import decode_per_patch_epoch, make_jpegs  # noqa: E402
from keras_hyperiqa.data.pipeline import PatchDataset  # noqa: E402

PATCH = 224
BATCH = 96


def pipeline_epoch(paths, labels, patches, workers, dtype="float32") -> int:
    ds = PatchDataset(list(zip(paths, labels)), patches_per_image=patches, batch_size=BATCH, workers=workers,
                      dtype=dtype)
    return sum(len(x) for x, _ in ds.train_batches(0))


REPEAT = 3


def timed(fn, *args):
    """(patches, best wall time of REPEAT runs): the best run is the least disturbed by other load."""
    best = float("inf")
    for _ in range(REPEAT):
        t = time.perf_counter()
        n = fn(*args)
        best = min(best, time.perf_counter() - t)
    return n, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--patches", type=int, default=25)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--repeat", type=int, default=3, help="runs per method; the best time is reported")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        labels = [float(i) for i in range(len(paths))]
        pipeline_epoch(paths[:2], labels[:2], 2, 1)  # warm imports and the page cache
        rows = [
            ("decode-per-patch, 1 thread (original)", *timed(decode_per_patch_epoch, paths, labels, args.patches, PATCH, BATCH)),
            (f"decode-per-patch, {args.workers} threads", *timed(decode_per_patch_epoch, paths, labels, args.patches, PATCH, BATCH,
                                                                    0, args.workers)),
            (f"PatchDataset, {args.workers} threads", *timed(pipeline_epoch, paths, labels, args.patches, args.workers)),
            (f"PatchDataset uint8 batches, {args.workers} thr", *timed(pipeline_epoch, paths, labels, args.patches,
                                                                        args.workers, "uint8")),
        ]
    print(f"{args.images} JPEG images 512x384, {args.patches} patches/image of {PATCH}x{PATCH}, batch {BATCH}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'method':42s} {'patches':>8s} {'seconds':>8s} {'patches/s':>10s}")
    for name, n, sec in rows:
        print(f"{name:42s} {n:8d} {sec:8.2f} {n / sec:10.1f}")
    base1 = rows[0][1] / rows[0][2]
    baseN = rows[1][1] / rows[1][2]
    ours = rows[2][1] / rows[2][2]
    print(f"ratio PatchDataset / decode-per-patch (1 thread): {ours / base1:.2f}x")
    print(f"ratio PatchDataset / decode-per-patch ({args.workers} threads): {ours / baseN:.2f}x")
    print(f"ratio PatchDataset uint8 / decode-per-patch (1 thread): {rows[3][1] / rows[3][2] / base1:.2f}x")


if __name__ == "__main__":
    main()
