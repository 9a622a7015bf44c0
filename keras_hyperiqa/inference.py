"""Scoring images and datasets with a trained or converted HyperIQA model."""

from __future__ import annotations

import glob
import json
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


class Predictor:
    """Inference-mode scores for batches of patches, on torch or jax.

    torch: forwards under ``torch.no_grad`` of at most ``max_batch`` patches
    at a time (default 32 on the CPU, 64 on a GPU): Keras's functional graph
    keeps the intermediate tensors of a forward until it ends, so a large
    evaluation batch in one forward would hold them all at once; one
    25-patch image stays one forward, since every forward also costs Keras's
    per-layer Python overhead. jax: a jit-compiled ``stateless_call`` (compiled once per
    input shape; XLA frees intermediates itself), reading the model's
    current variable values at every call.
    """

    def __init__(self, model, strategy=None, max_batch=None):
        import keras

        from keras_hyperiqa.model.layout import use_torch_kernel_layout

        self.model = model
        self.backend = keras.backend.backend()
        self._jax_fn = None
        self.strategy = strategy
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = None if max_batch is None else int(max_batch)
        if self.backend == "torch":
            use_torch_kernel_layout(model.variables)

    def __call__(self, x):
        from keras import ops

        model = self.model
        if self.backend == "torch":
            import torch

            x = ops.convert_to_tensor(x, dtype="float32")
            step = self.max_batch or (32 if x.device.type == "cpu" else 64)
            parts = []
            with torch.no_grad():
                for start in range(0, max(1, x.shape[0]), step):
                    out = model(x[start:start + step], training=False)
                    parts.append(ops.convert_to_numpy(ops.cast(out, "float32")).reshape(-1))
            out = np.concatenate(parts)
        else:
            if self._jax_fn is None:
                import jax

                def forward(trainable, non_trainable, x):
                    out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
                    return ops.cast(out, "float32")

                self._jax_fn = jax.jit(forward)
            x = np.asarray(x, dtype=np.float32)
            if self.strategy is not None:  # data parallel: shard the batch
                (x,) = self.strategy.place(x)
            out = self._jax_fn(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                x,
            )
            out = (self.strategy.to_numpy(out) if self.strategy is not None
                   else np.asarray(out))
        return np.asarray(out, dtype=np.float32).reshape(-1)


class Scorer:
    """Scores images the way the model was trained: its resize, then crops averaged.

    Args:
        model: a HyperIQA model.
        patches: crops per image (a square number for ``grid``).
        crops: ``grid`` (deterministic k x k) or ``random`` (seeded).
        resize: ``"model"`` (the model's own preprocessing), ``None``, or (H, W).
    """

    def __init__(self, model, patches=None, crops=None, resize="model", seed=0, batch_size=25):
        # Unless told otherwise: the crops the model's weights are tested with.
        if patches is None:
            patches = getattr(model, "test_patches", None) or 25
        if crops is None:
            crops = getattr(model, "test_crops", None) or "grid"
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
        if crops == "grid":
            from keras_hyperiqa.data.pipeline import check_grid_count

            check_grid_count(patches, "--patches", "--crops random")

    @classmethod
    def from_file(cls, path, precision="fp32", **kwargs):
        # Before the model loads (seconds): an option given explicitly is checked at once.
        if kwargs.get("patches") is not None:
            cls.check_options(kwargs["patches"], kwargs.get("crops") or "grid",
                              kwargs.get("batch_size", 25))
        return cls(load_model(path, precision=precision), **kwargs)

    def describe(self):
        """One line on the scores' scale and the crops used, for ``predict``.

        Empty for a model that records neither a score range nor test crops.
        """
        low_high = getattr(self.model, "score_range", None)
        if not low_high and getattr(self.model, "test_patches", None) is None:
            return ""
        parts = []
        if low_high:
            parts.append(f"scores on the [{low_high[0]:g}, {low_high[1]:g}] scale of the "
                         f"labels the weights were trained on")
        parts.append(f"{self.patches} {self.crops} crops per image")
        return "; ".join(parts)

    def dataset(self, items, workers=0):
        from keras_hyperiqa.data.pipeline import PatchDataset

        return PatchDataset(items, train=False, crops=self.crops, patches_per_image=self.patches,
                            patch_size=self.model.patch_size, resize=self.resize,
                            short_side=self.short_side, seed=self.seed,
                            batch_size=self.batch_size, workers=workers)

    def score(self, path):
        """The image's score: the mean over its crops. UserError if unreadable."""
        return float(score_images(self.predict, self.dataset([(str(path), 0.0)]), 1)[0])


def score_images(predict, source, num_images=None):
    """Per-image scores of an evaluation source: ``predict`` on its patches, averaged per image.

    ``source.eval_batches()`` yields ``(patches, image_index)``; ``predict``
    maps patches to one score each (a :class:`Predictor`).
    """
    from keras_hyperiqa.data.pipeline import image_means

    scores, index = [], []
    for x, image_index in source.eval_batches():
        scores.append(predict(x))
        index.append(np.asarray(image_index).reshape(-1))
    return image_means(np.concatenate(scores), np.concatenate(index), num_images)


CHECKPOINT_SUFFIXES = (".pkl", ".pth", ".pt", ".bin", ".safetensors")


def load_model(path, precision="fp32"):
    """A HyperIQA model from a ``.keras`` file, a keras-hub preset (folder or
    ``hf://``), or an original / pyiqa checkpoint.

    Checkpoints (``koniq_pretrained.pkl``, pyiqa's ``.pth``) are converted in
    memory, as ``keras-hyperiqa convert`` would. ``precision``: ``fp32``
    (default) or ``bf16`` (backbone in bfloat16, scores still float32).
    """
    from keras_hyperiqa.model.hyperiqa import precision_scope
    from keras_hyperiqa.presets import is_preset, load_preset

    path = os.fspath(path)
    if is_preset(path):
        with precision_scope(precision):
            return load_preset(path)
    if path.lower().endswith(CHECKPOINT_SUFFIXES):
        from keras_hyperiqa.convert.original import load_checkpoint

        with precision_scope(precision):
            return load_checkpoint(path)
    return load_model_file(path, precision=precision)


def load_model_file(path, precision="fp32"):
    """Load a ``.keras`` HyperIQA file.

    What is the user's to fix is a one-line ``UserError``: a missing file, a
    file that is not a ``.keras`` archive (not a zip, a damaged zip, no
    ``config.json``) and the file of another model. Anything raised while
    Keras rebuilds a HyperIQA file is a bug and propagates unchanged.
    ``precision``: ``fp32`` (default, whatever precision the model was trained
    in) or ``bf16`` (backbone in bfloat16, scores still float32).
    """
    import zipfile

    import keras

    from keras_hyperiqa.model.hyperiqa import precision_scope

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable .keras model (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
            if zf.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its CRC check")
    except KeyError:
        raise UserError(f"{path}: not a readable .keras model (no config.json in the archive)") from None
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .keras model (damaged archive: {err})") from None
    name = config.get("registered_name") or config.get("class_name") if isinstance(config, dict) else None
    if name not in ("keras_hyperiqa>HyperIQA", "HyperIQA"):
        raise UserError(f"{path}: not a HyperIQA model ({name or 'unknown class'})")
    from keras_hyperiqa.compat import zeros_instead_of_random_init

    # every variable is read from the file: skip drawing random initial values
    with precision_scope(precision), zeros_instead_of_random_init():
        model = keras.saving.load_model(path, compile=False)
    if not hasattr(model, "hypernet_variables"):
        raise UserError(f"{path}: not a HyperIQA model ({type(model).__name__})")
    return model


def format_scores(results, fmt, higher_is_better=None):
    """``results`` [(path, score)] as text, csv or json, saying which way the scores point.

    ``higher_is_better`` is the model's (``None``: unknown): a ``# scores: ...``
    header line in text, a ``higher_is_better`` column in csv, a field of
    each entry in json.
    """
    if fmt == "json":
        return json.dumps([{"image": p, "score": s, "higher_is_better": higher_is_better}
                           for p, s in results], indent=2) + "\n"
    flag = "" if higher_is_better is None else str(bool(higher_is_better)).lower()
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "score", "higher_is_better"])
        w.writerows([(p, f"{s:.6f}", flag) for p, s in results])
        return buf.getvalue()
    header = f"# scores: {score_direction(higher_is_better)}\n"
    return header + "".join(f"{p}\t{s:.4f}\n" for p, s in results)


def score_direction(higher_is_better):
    """How to read a model's scores, in words."""
    if higher_is_better is None:
        return "direction unknown (the model does not record its training labels' direction)"
    if higher_is_better:
        return "higher is better (trained on MOS-like labels)"
    return "lower is better (trained on DMOS labels)"


def evaluate_dataset(model_path, dataset, root, label_column=None, splits_path=None, round_index=0,
                     patches=None, crops=None, resize="model", seed=0, skip_invalid=False,
                     csv_path="predictions.csv", scatter_path=None, precision="fp32"):
    """Image-level SRCC/PLCC/KRCC/RMSE of a model on a dataset (or a run's test split).

    Correlations are in the "higher score = better image" sense: when the
    model's scores and the dataset's labels point opposite ways (a MOS-trained
    model on a DMOS set, or the reverse), they are computed against the
    negated labels, RMSE (scores and labels on unrelated scales) is left out,
    and ``note`` says so. A model that records no direction is taken to point
    as the labels do. ``labels_flipped`` and ``note`` are in the result.
    Writes ``csv_path`` (image, label, prediction) and, with ``scatter_path``,
    a PNG of predictions against labels with SRCC/PLCC and a fitted line.
    """
    from keras_hyperiqa.data.readers import read_dataset
    from keras_hyperiqa.data.splits import load_splits
    from keras_hyperiqa.data.validate import validated
    from keras_hyperiqa.reports import write_csv
    from keras_hyperiqa.metrics import iqa_metrics

    Scorer.check_options(patches or 25, crops or "grid")
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
                              batch_size=max(patches or 25, 25), precision=precision)
    records = [info.records[i] for i in indices]
    data = scorer.dataset(records, workers=None)
    predictions = score_images(scorer.predict, data, len(records))
    labels = np.array([r.label for r in records])
    model_hib = scorer.model.higher_is_better
    flipped = model_hib is not None and model_hib != info.higher_is_better
    # The labels pointing the way the model's scores do (negated when the two disagree).
    signed_labels = -labels if flipped else labels
    metrics = iqa_metrics(predictions, signed_labels)
    rows = [{"image": info.relpath(r), "label": r.label, "prediction": float(p)}
            for r, p in zip(records, predictions)]
    write_csv(csv_path, rows, ["image", "label", "prediction"])
    if scatter_path:
        from keras_hyperiqa.reports import plot_scatter

        what = f"round {round_index} test split" if splits_path else "all images"
        if flipped:
            what += ", labels negated"
        plot_scatter(signed_labels, predictions, scatter_path,
                     f"{os.path.basename(model_path)} on {info.name}, {what}")
    metrics = {k: float(v) for k, v in metrics.items()}
    note = None
    if flipped:
        del metrics["rmse"]
        labels_word = "higher" if info.higher_is_better else "lower"
        scores_word = "higher" if model_hib else "lower"
        note = (f"note: {info.name} labels are {labels_word}-is-better, the model's scores "
                f"{scores_word}-is-better: correlations use the negated labels (higher score = "
                f"better image); RMSE not reported")
    metrics["images"] = len(records)
    metrics["labels_flipped"] = flipped
    metrics["note"] = note
    return metrics
