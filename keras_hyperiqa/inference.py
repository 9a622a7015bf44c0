"""Scoring images and datasets with a trained or converted HyperIQA model."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import numpy as np

from keras_hyperiqa.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def expand_paths(paths):
    """Files, folders (their images, sorted) and glob patterns -> (files, problems)."""
    files, problems = [], []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*")
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: no images in this folder")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                problems.append(f"{p}: no file matches this pattern")
            files.extend(found)
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


class Scorer:
    """Scores images the way the model was trained: its resize, then crops averaged.

    Args:
        model: a HyperIQA model.
        patches: crops per image (a square number for ``grid``).
        crops: ``grid`` (deterministic k x k) or ``random`` (seeded).
        resize: ``"model"`` (the model's own preprocessing), ``None``, or (H, W).
    """

    def __init__(self, model, patches=25, crops="grid", resize="model", seed=0, batch_size=25):
        from keras_hyperiqa.training.trainer import Predictor

        self.check_options(patches, crops, batch_size)
        self.model = model
        self.patches, self.crops, self.seed, self.batch_size = patches, crops, seed, batch_size
        if resize == "model":
            self.resize, self.short_side = model.resize, getattr(model, "short_side", None)
        else:
            self.resize, self.short_side = resize, None
        self.predict = Predictor(model)

    @staticmethod
    def check_options(patches=25, crops="grid", batch_size=25):
        if patches < 1 or batch_size < 1:
            raise UserError("--patches and --batch-size must be at least 1")
        if crops == "grid" and round(math.sqrt(patches)) ** 2 != patches:
            raise UserError(f"--patches {patches} must be a square number for grid crops "
                            "(a k x k grid: 1, 4, 9, 16, 25, ...), or use --crops random")

    @classmethod
    def from_file(cls, path, **kwargs):
        from keras_hyperiqa.experiment import load_model_file

        # Before the model loads (seconds): a bad option is reported at once.
        cls.check_options(**{k: kwargs[k] for k in ("patches", "crops", "batch_size") if k in kwargs})
        return cls(load_model_file(path), **kwargs)

    def dataset(self, items, workers=0):
        from keras_hyperiqa.data.pipeline import PatchDataset

        return PatchDataset(items, train=False, crops=self.crops, patches_per_image=self.patches,
                            patch_size=self.model.patch_size, resize=self.resize,
                            short_side=self.short_side, seed=self.seed,
                            batch_size=self.batch_size, workers=workers)

    def score(self, path):
        """The image's score: the mean over its crops. UserError if unreadable."""
        data = self.dataset([(str(path), 0.0)])
        scores = [self.predict(x) for x, _ in data.eval_batches()]
        return float(np.mean(np.concatenate(scores)))


def format_scores(results, fmt):
    if fmt == "json":
        return json.dumps([{"image": p, "score": s} for p, s in results], indent=2) + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "score"])
        w.writerows([(p, f"{s:.6f}") for p, s in results])
        return buf.getvalue()
    return "".join(f"{p}\t{s:.4f}\n" for p, s in results)


def evaluate_dataset(model_path, dataset, root, label_column=None, splits_path=None, round_index=0,
                     patches=25, crops="grid", resize="model", seed=0, skip_invalid=False,
                     csv_path="predictions.csv", scatter_path=None):
    """Image-level SRCC/PLCC/KRCC/RMSE of a model on a dataset (or a run's test split).

    Writes ``csv_path`` (image, label, prediction) and, with ``scatter_path``,
    a PNG of predictions against labels with SRCC/PLCC and a fitted line.
    """
    from keras_hyperiqa.data.readers import read_dataset
    from keras_hyperiqa.data.splits import load_splits
    from keras_hyperiqa.data.validate import validated
    from keras_hyperiqa.experiment import write_csv
    from keras_hyperiqa.training.metrics import iqa_metrics

    Scorer.check_options(patches, crops)
    info = read_dataset(dataset, root, label_column=label_column)
    report = Path(csv_path).with_name(Path(csv_path).stem + "_dropped.txt")
    info = validated(info, skip_invalid=skip_invalid, report_path=report)
    indices = list(range(len(info.records)))
    if splits_path:
        splits = load_splits(splits_path, info)
        if not 0 <= round_index < len(splits):
            raise UserError(f"{splits_path}: has {len(splits)} rounds, no round {round_index}")
        indices = list(splits[round_index].test)
    # The dataset is checked before the model loads (seconds).
    scorer = Scorer.from_file(model_path, patches=patches, crops=crops, resize=resize, seed=seed,
                              batch_size=max(patches, 25))
    records = [info.records[i] for i in indices]
    data = scorer.dataset(records, workers=None)
    scores, index = [], []
    for x, idx in data.eval_batches():
        scores.append(scorer.predict(x))
        index.append(np.asarray(idx))
    predictions = data.image_means(np.concatenate(scores), np.concatenate(index))
    labels = np.array([r.label for r in records])
    metrics = iqa_metrics(predictions, labels)
    rows = [{"image": info.relpath(r), "label": r.label, "prediction": float(p)}
            for r, p in zip(records, predictions)]
    write_csv(csv_path, rows, ["image", "label", "prediction"])
    if scatter_path:
        from keras_hyperiqa.experiment import plot_scatter

        what = f"round {round_index} test split" if splits_path else "all images"
        plot_scatter(labels, predictions, scatter_path,
                     f"{os.path.basename(model_path)} on {info.name}, {what}")
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["images"] = len(records)
    return metrics
