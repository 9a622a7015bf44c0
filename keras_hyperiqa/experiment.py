"""Training runs end to end: dataset, splits, rounds, the run directory, resume.

``fit(FitConfig(...))`` is what ``keras-hyperiqa fit`` runs. The run directory::

    config.json        every resolved option, package versions, backend
    splits.json        the partition of every round (reload with --resume)
    metrics.csv        one row per (round, epoch)
    dropped.txt        items dropped by --skip-invalid (only then)
    rounds/rN/         last.npz (resumable checkpoint), selected.weights.h5,
                       history.csv, test_predictions.csv, model.keras, done.json
    model.keras        the selected epoch's model (round 0)
    summary.json       srcc / plcc: test metrics at the selected epoch
                       (medians over rounds), per-round numbers, and the
                       optimistic best-test-epoch numbers, labelled as such
    curves.png, scatter.png

Every file is written atomically (temporary name, then rename) with the
umask's mode; a killed run resumes from its last completed epoch with
``fit(resume=DIR)``, or ``fit(config)`` with the same options (other options
are refused unless ``overwrite``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path

from keras_hyperiqa.atomic import atomic_path, write_atomic
from keras_hyperiqa.errors import UserError, require_file
from keras_hyperiqa.inference import load_model_file
from keras_hyperiqa.names import DATASETS, REVERT_FIXES
from keras_hyperiqa.reports import fmt as _fmt
from keras_hyperiqa.reports import plot_scatter, save_fig, write_csv


def _dist():
    """[distributed] keras_hyperiqa.training.distributed, imported lazily (it loads keras)."""
    from keras_hyperiqa.training import distributed

    return distributed

# The demo's quick profile: a small ResNet trained from scratch on the
# embedded demo set, sized to finish in under 4 minutes on a 2-core CPU with
# a held-out SRCC of at least 0.7 (README, "fit"). The lr drops tenfold for the last epoch
# (decay_every=2): from-scratch training at the high rate ends noisy, the
# decayed epoch settles it.
QUICK_PROFILE = dict(
    backbone="resnet_tiny", backbone_weights="none", epochs=4, batch_size=32,
    lr=5e-4, lr_ratio=4.0, decay_every=2, train_patches=2, test_patches=1,
    val_fraction=0.0,
)


@dataclass
class FitConfig:
    """Every option of a training run (the CLI's ``fit`` options)."""

    dataset: str | None = None  # None: the embedded demo set
    root: str | None = None
    label_column: str | None = None
    backbone: str = "resnet50"
    backbone_weights: str | None = None  # path, preset name or "none"
    init: str | None = None  # a .keras model to fine-tune
    multiscale: bool = False
    attention: bool = False  # the Swin fork's attention fusion (needs multiscale)
    dropout: float = 0.0
    drop_path: float = 0.0
    epochs: int = 16
    batch_size: int = 96
    lr: float = 2e-5
    lr_ratio: float = 10.0
    decay_every: int = 6  # lr / 10 every this many epochs (the original's 6)
    weight_decay: float = 5e-4
    train_patches: int = 25
    test_patches: int = 25
    patch_size: int = 224
    resize: tuple | None | str = "preset"  # (H, W), None, or "preset"
    rounds: int = 1
    seed: int = 0
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    split: str = "random"  # or "official" (KonIQ)
    test_crops: str = "grid"
    revert_fix: list = field(default_factory=list)
    skip_invalid: bool = False
    workers: int | None = None
    cache_mb: int = 2048
    precision: str = "fp32"
    out: str = "runs/hyperiqa"
    verbose: int = 1

    def to_json(self):
        d = dataclasses.asdict(self)
        d["revert_fix"] = list(self.revert_fix)
        return d

    @classmethod
    def from_json(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("resize"), list):
            d["resize"] = tuple(d["resize"])
        return cls(**d)


def quick_profile(**overrides):
    """The demo's quick profile as a ``FitConfig`` (``overrides`` win)."""
    return FitConfig(**{**QUICK_PROFILE, **overrides})


# --------------------------------------------------------------------- files
def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def versions():
    from keras_hyperiqa.compat import installed_versions

    return {"python": platform.python_version(), **installed_versions(
        ("keras-hyperiqa", "keras", "keras-hub", "torch", "jax", "numpy", "scipy", "pillow"))}


# ---------------------------------------------------------------------- data
def load_dataset(config, report_dir=None):
    """Read, validate and (with ``skip_invalid``) clean the dataset of a config."""
    from keras_hyperiqa.data.demo import demo_root
    from keras_hyperiqa.data.readers import read_dataset
    from keras_hyperiqa.data.validate import validated

    if config.dataset is None:
        name, root = "csv", demo_root(seed=0)
    else:
        if config.root is None:
            raise UserError(f"--root is required with --dataset {config.dataset}")
        name, root = config.dataset, config.root
    info = read_dataset(name, root, label_column=config.label_column)
    report = None if report_dir is None else Path(report_dir) / "dropped.txt"
    return validated(info, skip_invalid=config.skip_invalid, report_path=report)


def resolved_resize(config, info):
    """(resize, short_side) for the config: the dataset preset unless overridden."""
    if config.resize == "preset":
        return info.resize, info.short_side
    return (None if config.resize is None else tuple(config.resize)), None


def make_round_splits(config, info):
    from keras_hyperiqa.data.splits import make_splits, official_split

    if config.split == "official":
        if not info.official_split:
            raise UserError(f"{info.name}: no official split found under {info.root}")
        return [official_split(info)]
    return make_splits(info.records, rounds=config.rounds, seed=config.seed,
                       train_fraction=config.train_fraction, val_fraction=config.val_fraction,
                       group_by_ref=DATASETS[info.name].by_reference)


def patch_sources(config, info, split, resize, short_side):
    from keras_hyperiqa.data.pipeline import PatchDataset

    records = info.records
    common = dict(patch_size=config.patch_size, resize=resize, short_side=short_side,
                  workers=config.workers)
    cache = int(config.cache_mb) * (1 << 20)
    train = PatchDataset([records[i] for i in split.train], train=True,
                         patches_per_image=config.train_patches, seed=config.seed + 1000 * split.round,
                         batch_size=config.batch_size, cache_bytes=cache // 2, **common)

    def eval_source(idx, stream):
        if not len(idx):
            return None
        return PatchDataset([records[i] for i in idx], train=False, crops=config.test_crops,
                            patches_per_image=config.test_patches,
                            seed=config.seed + 1000 * split.round + stream,
                            batch_size=config.batch_size, cache_bytes=cache // 4, **common)

    return train, eval_source(split.val, 1), eval_source(split.test, 2)


# --------------------------------------------------------------------- model
def build_model(config, resize, short_side, higher_is_better=None):
    """The run's model, under its precision; its scores point as the training labels do."""
    from keras_hyperiqa.model.hyperiqa import HyperIQA, precision_scope

    if config.init:
        model = load_model_file(config.init, precision=config.precision)
        # Fine-tuning keeps the architecture but adopts this run's preprocessing
        # and, trained on the raw labels, their direction.
        model.resize, model.short_side = resize, short_side
        model.higher_is_better = higher_is_better
        return model
    with precision_scope(config.precision):
        model = HyperIQA(backbone=config.backbone, multiscale=config.multiscale,
                         attention=config.attention, dropout=config.dropout,
                         drop_path=config.drop_path, patch_size=config.patch_size,
                         resize=resize, short_side=short_side, higher_is_better=higher_is_better)
        model.build((None, config.patch_size, config.patch_size, 3))
    weights = config.backbone_weights
    if weights and weights.lower() != "none":
        from keras_hyperiqa.convert.backbone import load_backbone_weights

        load_backbone_weights(model, weights)
    return model


# ----------------------------------------------------------------------- fit
def fit(config: FitConfig | None = None, resume: str | None = None, overwrite: bool = False):
    """Train (or resume) a run; returns the summary dict (also in summary.json).

    A ``config`` whose ``out`` already holds a run resumes it when the options
    are the same, and is refused (``UserError``) when they differ, unless
    ``overwrite`` (the old run's files are deleted first). A finished run's
    files are never rewritten.
    """
    if resume is not None:
        if overwrite:
            raise UserError("--overwrite starts a new run; it cannot be combined with --resume")
        out = Path(resume)
        if not (out / "config.json").is_file():
            raise UserError(f"{resume}: not a run directory (no config.json)")
        config = _saved_config(out)
        config.out = str(out)
    config = config or FitConfig()
    _check_config(config)
    _dist().check_batch_size(config.batch_size)  # [distributed] divides by the replicas
    out = Path(config.out)
    primary = _dist().is_primary()  # [distributed] only rank / process 0 writes files
    if resume is None and (out / "config.json").is_file():
        if overwrite:
            if primary:
                _remove_run_files(out)
        else:
            _refuse_other_options(config, out)
            resume = str(out)  # the same options: a plain rerun continues the run
    _dist().barrier()  # [distributed] every rank decided before rank 0 writes
    if primary:
        out.mkdir(parents=True, exist_ok=True)

    import keras

    from keras_hyperiqa.data.splits import load_splits, save_splits

    info = load_dataset(config, report_dir=out if primary and resume is None else None)
    resize, short_side = resolved_resize(config, info)
    splits_path = out / "splits.json"
    new_splits = not (resume is not None and splits_path.is_file())
    splits = make_round_splits(config, info) if new_splits else load_splits(splits_path, info)
    _check_splits(config, splits)
    # After the dataset and splits (a wrong --root or a split too small is
    # reported before any download), before the run's files.
    config.backbone_weights = resolve_backbone_weights(config)
    if config.verbose and primary and not info.higher_is_better:
        print(f"{info.name}: DMOS labels (lower is better), trained on as they are: the model's "
              f"scores are lower-is-better, and it records so", flush=True)
    if new_splits and primary:
        save_splits(splits_path, splits, info)
    if primary and resume is None:
        write_json(out / "config.json", {
            "options": config.to_json(),
            "resolved": {"dataset": info.name, "root": str(info.root), "images": len(info.records),
                         "higher_is_better": info.higher_is_better, "resize": resize,
                         "short_side": short_side, "rounds": len(splits)},
            "backend": keras.backend.backend(),
            "versions": versions(),
        })

    finished = all((out / "rounds" / f"r{s.round}" / "done.json").is_file() for s in splits)
    # The rounds: one per split, seed ``seed + round``; a finished round is read back.
    reports = [_train_round(config, info, split, len(splits), resize, short_side, out)
               for split in splits]
    if finished and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())  # finished before: kept as is
        if config.verbose and primary:
            print(f"held-out test SRCC {_fmt(summary.get('srcc'))}  PLCC {_fmt(summary.get('plcc'))}; "
                  f"run directory: {out} (complete, unchanged)", flush=True)
        return summary
    return _finish(config, out, reports)


# Options that change neither the data, the model nor the numbers of a run.
_RUN_NEUTRAL_OPTIONS = ("out", "verbose", "workers", "cache_mb")
# The files a run writes in its directory (``--overwrite`` deletes these only).
_RUN_FILES = ("config.json", "splits.json", "metrics.csv", "dropped.txt", "model.keras",
              "summary.json", "curves.png", "scatter.png", "rounds")


def _saved_config(out):
    path = Path(out) / "config.json"
    try:
        return FitConfig.from_json(json.loads(path.read_text())["options"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: unreadable run config ({err})") from None


def _refuse_other_options(config, out):
    """UserError naming the first option that differs from the run in ``out``."""
    try:
        saved = _saved_config(out)
    except UserError as err:
        raise UserError(f"{err}; use another --out, or --overwrite to replace it") from None
    ours = json.loads(json.dumps(config.to_json(), default=_json_default))
    if ours.get("backbone_weights") is None and not config.init:
        # The saved run holds its resolved default (the ImageNet weights, or none).
        ours["backbone_weights"] = default_backbone_weights(config)
    theirs = json.loads(json.dumps(saved.to_json(), default=_json_default))
    for name in ours:
        if name not in _RUN_NEUTRAL_OPTIONS and ours[name] != theirs.get(name):
            raise UserError(
                f"{out} holds a run with other options (--{name.replace('_', '-')} "
                f"{_option_text(theirs.get(name))} there, {_option_text(ours[name])} here); "
                f"use --resume {out} to continue it, another --out, or --overwrite to replace it")


def _option_text(value):
    if value is None:
        return "none"
    if isinstance(value, list):
        return "x".join(map(str, value)) if value and all(isinstance(v, int) for v in value) \
            else ",".join(map(str, value)) or "none"
    return str(value)


def _remove_run_files(out):
    import shutil

    for name in _RUN_FILES:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def default_backbone_weights(config):
    """``none`` for the demo's from-scratch quick profile, else the backbone's ImageNet weights."""
    from keras_hyperiqa.convert.backbone import imagenet_weights

    return "none" if config.dataset is None else imagenet_weights(config.backbone)


def resolve_backbone_weights(config):
    """The run's ``backbone_weights``, checked before the run's files are written.

    Unset: the backbone's ImageNet weights with a dataset (as the original
    starts from), ``none`` for the demo's from-scratch quick profile; a
    one-line error when they cannot be had (offline, no such file). Says on
    the console where the backbone starts from.
    """
    from keras_hyperiqa.convert.backbone import check_backbone_weights

    weights = config.backbone_weights
    if config.init:
        return weights  # the --init model brings its own backbone
    if weights is None:
        weights = default_backbone_weights(config)
    check_backbone_weights(weights)
    if config.verbose and _dist().is_primary():
        if weights.lower() != "none":
            print(f"backbone {config.backbone}: ImageNet weights from {weights}", flush=True)
        elif config.dataset is None:
            print(f"demo set, quick profile: backbone {config.backbone} trained from scratch "
                  f"(no ImageNet weights; with --dataset, fit starts from them)", flush=True)
        else:
            print(f"backbone {config.backbone}: trained from scratch (--backbone-weights none)", flush=True)
    return weights


def _check_config(config):
    bad = [f for f in config.revert_fix if f not in REVERT_FIXES]
    if bad:
        raise UserError(f"unknown fix {bad[0]!r} for --revert-fix; choose from {', '.join(REVERT_FIXES)}")
    for name in ("epochs", "batch_size", "train_patches", "test_patches", "rounds", "decay_every"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if config.test_crops == "grid":
        from keras_hyperiqa.data.pipeline import check_grid_count

        check_grid_count(config.test_patches, "--test-patches", "--test-crops random")
    if not 0 <= config.val_fraction < 1:
        raise UserError("--val-fraction must be in [0, 1)")
    require_file(config.init, "--init model file")


def _check_splits(config, splits):
    """One-line errors, before any training, for splits the run could not score."""
    for split in splits:
        where = f"round {split.round}: " if len(splits) > 1 else ""
        n_train, n_val, n_test = len(split.train), len(split.val), len(split.test)
        if n_train < 1:
            raise UserError(f"{where}the training split is empty; the dataset is too small")
        if config.val_fraction > 0 and n_val == 0:
            raise UserError(f"{where}--val-fraction {config.val_fraction} leaves no validation image "
                            f"({n_train} training images); use --val-fraction 0 (last epoch selected)")
        if n_val == 1:
            raise UserError(f"{where}the validation split has 1 image, correlations need at least 2; "
                            f"raise --val-fraction (now {config.val_fraction}) or use --val-fraction 0")
        if n_test < 2:
            raise UserError(f"{where}the test split has {n_test} image(s), correlations need at least 2; "
                            f"the dataset is too small")


SELECTED_WEIGHTS = "selected.weights.h5"  # in rounds/rN: the selected epoch's weights


def _train_round(config, info, split, n_rounds, resize, short_side, out):
    """Train round ``split.round`` in ``out/rounds/rN``, or resume it; its report (``done.json``)."""
    rdir = out / "rounds" / f"r{split.round}"
    done = rdir / "done.json"
    _dist().barrier()  # [distributed] rank 0's files are complete before anyone reads them
    primary = _dist().is_primary()
    if done.is_file():
        report = json.loads(done.read_text())
        if config.verbose:
            print(f"round {split.round}: already complete, skipped", flush=True)
        return report
    if primary:
        rdir.mkdir(parents=True, exist_ok=True)
    seed = config.seed + split.round
    trainer, schedule = _round_trainer(config, info, seed, resize, short_side)
    train, val, test = patch_sources(config, info, split, resize, short_side)
    initial_epoch = _resume(trainer, rdir, split.round, config.verbose)
    if initial_epoch < config.epochs:
        if primary:
            callbacks = _round_callbacks(config, trainer, schedule, rdir, out, split.round, n_rounds,
                                         train.steps_per_epoch)
        else:  # [distributed] the schedule only; no files, no progress
            callbacks = [schedule]
        trainer.fit(train, config.epochs, val=val, test=test, callbacks=callbacks,
                    initial_epoch=initial_epoch, verbose=0)
    report = _selected_epoch_report(trainer.history, has_val=val is not None)
    report.update(round=split.round, seed=seed)
    _save_selected(trainer, info, split, test, rdir, primary)
    if primary:
        write_json(done, report)
    return report


def _round_trainer(config, info, seed, resize, short_side):
    """A seeded new model with its optimizer, trainer and learning-rate schedule."""
    import keras

    from keras_hyperiqa.training import Fixes, HyperAdam, HyperIQASchedule, Trainer

    keras.utils.set_random_seed(seed)
    model = build_model(config, resize, short_side, higher_is_better=info.higher_is_better)
    optimizer = HyperAdam(learning_rate=config.lr, weight_decay=config.weight_decay)
    trainer = Trainer(model, optimizer)
    schedule = HyperIQASchedule(optimizer, model.backbone_variables, model.hypernet_variables,
                                lr=config.lr, lr_ratio=config.lr_ratio,
                                fixes=Fixes.from_reverted(config.revert_fix),
                                decay_every=config.decay_every)
    return trainer, schedule


def _resume(trainer, rdir, round_index, verbose):
    """Restore the round's last checkpoint, if any; the epoch to train next."""
    from keras_hyperiqa.training import latest_checkpoint

    last = latest_checkpoint(rdir)
    if not last:
        return 0
    initial_epoch = trainer.restore(last)
    if verbose:
        print(f"round {round_index}: resuming at epoch {initial_epoch}", flush=True)
    return initial_epoch


def _round_callbacks(config, trainer, schedule, rdir, out, round_index, n_rounds, steps_per_epoch):
    """The schedule, then the run directory's writers and the console (rank 0's)."""
    from keras_hyperiqa.training import CheckpointCallback, HistoryCSVLogger
    from keras_hyperiqa.training.callbacks import EpochProgress, MetricsTable, SelectEpoch

    return [
        schedule,
        SelectEpoch(trainer, rdir / SELECTED_WEIGHTS),
        CheckpointCallback(rdir, trainer),
        HistoryCSVLogger(rdir / "history.csv", trainer),
        MetricsTable(out, round_index, trainer),
        EpochProgress(steps_per_epoch, config.epochs, round_index, n_rounds, config.verbose),
    ]


def _selected_epoch_report(history, has_val):
    """The round's numbers at the epoch selected on validation SRCC (the last one without
    a validation split), and the optimistic best-test epoch's."""
    from keras_hyperiqa.training import round_report

    select_on = "val_srcc" if has_val else None
    report = round_report(history, select_on=select_on)
    if select_on is None:
        last_row = history[-1]
        report.update({k: v for k, v in last_row.items() if k.startswith("test_")},
                      selected_epoch=last_row["epoch"], selected_on="last epoch")
    return report


def _save_selected(trainer, info, split, test, rdir, primary):
    """The selected epoch's model (``model.keras``) and its per-image test predictions."""
    from keras_hyperiqa.convert.original import save_model_atomic

    _dist().barrier()  # [distributed] rank 0 has written selected.weights.h5
    trainer.model.load_weights(rdir / SELECTED_WEIGHTS)
    if primary:
        save_model_atomic(trainer.model, rdir / "model.keras")
    if test is None:
        return
    scores = trainer.predict(test)  # collective under torch.distributed
    if primary:
        rows = [{"image": info.relpath(r), "label": r.label, "prediction": float(s)}
                for r, s in zip((info.records[i] for i in split.test), scores)]
        write_csv(rdir / "test_predictions.csv", rows, ["image", "label", "prediction"])


def _finish(config, out, reports):
    from keras_hyperiqa.training import summarize_rounds

    summary = summarize_rounds(reports)
    summary["srcc"] = summary.pop("median_test_srcc")
    summary["plcc"] = summary.pop("median_test_plcc")
    summary["optimistic_srcc"] = summary.pop("median_optimistic_test_srcc")
    summary["optimistic_plcc"] = summary.pop("median_optimistic_test_plcc")
    summary["selection"] = ("epoch with the best validation SRCC" if config.val_fraction > 0
                            else "last epoch (no validation split)")
    summary["optimistic_note"] = ("best test SRCC over epochs, selected on the test split "
                                  "as in the original code: optimistic")
    summary["rounds_run"] = len(reports)
    if not _dist().is_primary():  # [distributed] rank 0 writes the run directory
        return summary
    import shutil

    with atomic_path(out / "model.keras") as tmp:
        shutil.copyfile(out / "rounds" / f"r{reports[0]['round']}" / "model.keras", tmp)
    write_json(out / "summary.json", summary)
    plot_run(out)
    if config.verbose:
        label = ("median over %d rounds" % len(reports) if len(reports) > 1
                 else f"epoch {reports[0].get('selected_epoch')}, {summary['selection']}")
        print(f"held-out test SRCC {_fmt(summary['srcc'])}  PLCC {_fmt(summary['plcc'])}  ({label}); "
              f"run directory: {out}", flush=True)
    return summary


# --------------------------------------------------------------------- plots
def plot_run(out):
    """curves.png (loss and SRCC/PLCC per epoch) and scatter.png (test predictions vs labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = sorted({int(r["round"]) for r in rows})
    for rnd in rounds:
        rr = [r for r in rows if int(r["round"]) == rnd]
        ep = [int(r["epoch"]) for r in rr]
        tag = f" r{rnd}" if len(rounds) > 1 else ""
        ax1.plot(ep, [_float(r.get("loss")) for r in rr], marker="o", label="train loss" + tag)
        for key, style in (("train_srcc", ":"), ("val_srcc", "--"), ("test_srcc", "-"), ("test_plcc", "-.")):
            values = [_float(r.get(key)) for r in rr]
            if any(not math.isnan(v) for v in values):
                ax2.plot(ep, values, style, marker=".", label=key.replace("_", " ") + tag)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set(xlabel="epoch (from 0)", ylabel="L1 loss", title="training loss")
    ax2.set(xlabel="epoch (from 0)", ylabel="correlation", title="SRCC / PLCC")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_fig(fig, out / "curves.png")
    plt.close(fig)

    pred = out / "rounds" / "r0" / "test_predictions.csv"
    if pred.is_file():
        with open(pred, newline="") as f:
            pr = list(csv.DictReader(f))
        plot_scatter([float(r["label"]) for r in pr], [float(r["prediction"]) for r in pr],
                     out / "scatter.png", "test split, selected epoch, round 0")


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
