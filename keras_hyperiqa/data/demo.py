"""A small synthetic IQA dataset, generated on first use, for ``keras-hyperiqa fit`` demos.

Design
------
* ``N_SCENES`` (24) procedural base scenes of ``SIZE`` x ``SIZE`` (256x256)
  pixels, each drawn from ``numpy.random.default_rng([seed, scene])``: a
  two-colour gradient at a random angle, fractal value noise summed over five
  octaves (detail from 4 px to the whole image), a sinusoidal grating and a
  checkerboard patch, and 8-16 filled ellipses / rectangles / polygons with
  sharp edges. So every scene has flat areas, edges and texture at several
  scales, which is what the distortions below destroy.
* Four distortion types at five levels each, plus the pristine scene:
  Gaussian blur (sigma 0.8 ... 5), additive Gaussian noise (sigma 6 ... 48 on
  0-255), JPEG (quality 40 ... 4) and contrast reduction towards the mean
  (factor 0.72 ... 0.12). 24 x (1 + 4 x 5) = 504 PNG images.
* MOS on 0-100, higher is better, a function of the level only, the same
  for every type so the scale is comparable across types:
  ``MOS_BY_LEVEL = (92, 76, 60, 44, 28, 12)`` for level 0 (pristine) ... 5.
  (The level parameters above were picked so that equal levels look about
  equally bad; no rater noise is added, so the labels are exact.)
* ``labels.csv`` in the generic CSV format (``image,label,ref``) with
  ``ref`` = scene id, so ``make_splits`` keeps every scene on one side.

Generation takes a few seconds on two cores and is deterministic for a
``seed``. It happens once: the folder is built in a temporary sibling and
renamed into place, and a ``COMPLETE`` marker (written last) makes later calls
reuse it. Default location: ``$KERAS_HYPERIQA_CACHE/demo-v1`` or
``~/.cache/keras-hyperiqa/demo-v1`` (``-seed<N>`` appended for seed != 0).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from keras_hyperiqa.atomic import atomic_dir

VERSION = "demo-v1"
SIZE = 256
N_SCENES = 24
LEVELS = 5
MOS_BY_LEVEL = (92.0, 76.0, 60.0, 44.0, 28.0, 12.0)
BLUR_SIGMA = (0.8, 1.4, 2.2, 3.4, 5.0)
NOISE_SIGMA = (6.0, 12.0, 20.0, 32.0, 48.0)
JPEG_QUALITY = (40, 20, 11, 7, 4)
CONTRAST = (0.72, 0.52, 0.36, 0.22, 0.12)
DISTORTIONS = ("blur", "noise", "jpeg", "contrast")
MARKER = "COMPLETE"


def default_cache_dir(seed: int = 0) -> Path:
    base = os.environ.get("KERAS_HYPERIQA_CACHE")
    parent = Path(base).expanduser() if base else Path.home() / ".cache" / "keras-hyperiqa"
    return parent / (VERSION if seed == 0 else f"{VERSION}-seed{seed}")


# ---------------------------------------------------------------- scenes


def _value_noise(rng, size: int) -> np.ndarray:
    """Fractal noise in [0, 1]: bilinear-upsampled random grids, 5 octaves."""
    total = np.zeros((size, size), np.float32)
    amp, weight = 1.0, 0.0
    for cells in (3, 7, 16, 36, 80):
        grid = rng.random((cells, cells)).astype(np.float32)
        up = Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR)
        total += amp * np.asarray(up, np.float32)
        weight += amp
        amp *= 0.6
    total /= weight
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def make_scene(seed: int, scene: int, size: int = SIZE) -> np.ndarray:
    """One procedural base scene as uint8 (size, size, 3)."""
    rng = np.random.default_rng([seed, scene])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    img = c0 + ramp[..., None] * (c1 - c0)
    tex = _value_noise(rng, size)
    tint = rng.uniform(-90, 90, 3)
    img = img + (tex[..., None] - 0.5) * tint * rng.uniform(0.6, 1.4)
    # a grating and a checkerboard in random windows
    for kind in ("grating", "checker"):
        h, w = rng.integers(size // 5, size // 2, 2)
        t, l = rng.integers(0, size - h), rng.integers(0, size - w)
        if kind == "grating":
            freq, theta = rng.uniform(0.04, 0.25), rng.uniform(0, np.pi)
            pat = 0.5 + 0.5 * np.sin(2 * np.pi * freq * size * (np.cos(theta) * xx + np.sin(theta) * yy))
        else:
            cell = int(rng.integers(3, 14))
            pat = (((yy * size) // cell + (xx * size) // cell) % 2).astype(np.float32)
        ca, cb = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        region = ca + pat[..., None] * (cb - ca)
        img[t:t + h, l:l + w] = region[t:t + h, l:l + w]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(8, 17))):
        x0, y0 = rng.integers(-size // 8, size, 2)
        wh = rng.integers(size // 16, size // 3, 2)
        box = [int(x0), int(y0), int(x0 + wh[0]), int(y0 + wh[1])]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        outline = tuple(int(v) for v in rng.integers(0, 256, 3)) if rng.random() < 0.5 else None
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse(box, fill=fill, outline=outline, width=2)
        elif shape == 1:
            draw.rectangle(box, fill=fill, outline=outline, width=2)
        else:
            pts = [(int(x0 + rng.integers(0, wh[0] + 1)), int(y0 + rng.integers(0, wh[1] + 1))) for _ in range(3)]
            draw.polygon(pts, fill=fill, outline=outline)
    return np.asarray(canvas, dtype=np.uint8)


# ---------------------------------------------------------------- distortions


def distort(img: np.ndarray, kind: str, level: int, rng) -> np.ndarray:
    """Apply distortion ``kind`` at ``level`` (1..5) to a uint8 RGB image."""
    i = level - 1
    if kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(BLUR_SIGMA[i])), np.uint8)
    if kind == "noise":
        noisy = img.astype(np.float32) + rng.normal(0.0, NOISE_SIGMA[i], img.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY[i])
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    if kind == "contrast":
        f = np.float32(CONTRAST[i])
        mean = img.reshape(-1, 3).mean(axis=0).astype(np.float32)
        return np.clip(np.rint(mean + (img.astype(np.float32) - mean) * f), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown distortion {kind!r}")


def _scene_rows(seed: int, scene: int, out: Path):
    base = make_scene(seed, scene)
    ref = f"scene{scene:02d}"
    rng = np.random.default_rng([seed, scene, 1])
    rows = []
    items = [("pristine", 0, base)]
    for kind in DISTORTIONS:
        for level in range(1, LEVELS + 1):
            items.append((kind, level, distort(base, kind, level, rng)))
    for kind, level, img in items:
        name = f"{ref}_{kind}{level}.png" if level else f"{ref}.png"
        Image.fromarray(img).save(out / "images" / name, compress_level=1)
        rows.append((f"images/{name}", MOS_BY_LEVEL[level], ref))
    return rows


def generate(folder, seed: int = 0, n_scenes: int = N_SCENES, workers: int | None = None) -> Path:
    """Write the dataset into ``folder`` (which must not exist yet, or be empty)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        per_scene = list(pool.map(lambda s: _scene_rows(seed, s, folder), range(n_scenes)))
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "ref"])
        for rows in per_scene:
            for path, mos, ref in rows:
                writer.writerow([path, f"{mos:.1f}", ref])
    meta = {"version": VERSION, "seed": seed, "scenes": n_scenes, "images": sum(len(r) for r in per_scene)}
    (folder / MARKER).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return folder


def demo_root(cache_dir=None, seed: int = 0) -> Path:
    """The demo dataset folder (``images/*.png`` + ``labels.csv``), generated on first use."""
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(seed)
    if (target / MARKER).is_file():
        return target
    try:
        with atomic_dir(target) as tmp:
            generate(Path(tmp), seed=seed)
            if target.exists() and not (target / MARKER).is_file():
                shutil.rmtree(target)  # a half-built folder from an older, interrupted layout
    except OSError:
        if not (target / MARKER).is_file():  # lost a race and the winner is not complete
            raise
    return target
