"""The ``keras-hyperiqa`` command line.

Only click and the standard library are imported at module level: keras (and
keras-hub, which imports TensorFlow) load inside the commands, so ``--help``
answers at once. Exit statuses: 0 success, 2 usage or input error (one line,
no traceback), 1 internal error (a bug: one line, the traceback with
``--debug`` or ``KERAS_HYPERIQA_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys

import click

from keras_hyperiqa import names
from keras_hyperiqa.errors import UserError, first_line, require_file

BACKENDS = ("torch", "jax")


class InputError(click.ClickException):
    """A user mistake: printed as one ``Error: ...`` line, exit status 2."""

    exit_code = 2


DEBUG_ENV = "KERAS_HYPERIQA_DEBUG"


class _Group(click.Group):
    def invoke(self, ctx):
        from keras_hyperiqa import backend as hb

        # Our commands never use TensorFlow; keras-hub would import it (seconds,
        # and C++ log lines on stderr). Blocked only while a command runs.
        hb.block_unused_frameworks()
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise InputError(str(err)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as err:  # a bug: exit 1, the traceback on request
            if ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            line = first_line(err, limit=300) if str(err).strip() else ""
            click.echo(f"Internal error (a bug, please report it): {type(err).__name__}"
                       f"{': ' + line if line else ''}; rerun with --debug or {DEBUG_ENV}=1 "
                       f"for the traceback", err=True)
            ctx.exit(1)
        finally:
            hb.unblock_imports()


def _use_backend(backend):
    """Select the Keras backend for this process (before keras is imported)."""
    from keras_hyperiqa import backend as hb
    from keras_hyperiqa.compat import check_versions

    check_versions()  # before any work, not only when keras loads
    if backend is not None:
        current = os.environ.get("KERAS_BACKEND")
        if "keras" in sys.modules and current != backend:
            raise UserError(f"--backend {backend}: keras is already running on {current}")
        os.environ["KERAS_BACKEND"] = backend
    if hb.check_backend() == "torch":
        hb.block_unused_frameworks("torch")  # Keras imports jax whenever it is installed


# --resize everywhere: HxW, none, or preset (the dataset's for fit, the
# model's own for predict/evaluate, which is its training set's); "model" is
# accepted as another spelling of preset.
RESIZE_METAVAR = "HxW|none|preset"
_PRESET_SPELLINGS = ("preset", "model")


def _require_model(path):
    """Like :func:`require_file` for a model: a file, a keras-hub preset folder or a URI."""
    if "://" in path or os.path.isdir(path):
        return  # a preset; loading it says what is wrong with it
    require_file(path, "model file")


def _parse_hw(value, option):
    if value is None or value.strip().lower() in _PRESET_SPELLINGS:
        return "preset"
    if value.strip().lower() == "none":
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"{option} {value!r}: expected HxW (e.g. 512x384), 'none' or 'preset'") from None
    return (h, w)


def _model_resize(value):
    """predict/evaluate: ``"model"`` (the model's own preprocessing), None or (H, W)."""
    size = _parse_hw(value, "--resize")
    return "model" if size == "preset" else size


backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default=None,
    help="Keras backend (default: $KERAS_BACKEND, else torch).")

precision_option = click.option(
    "--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
    help="bf16: the backbone in bfloat16 (GPUs); the head and scores stay float32.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keras-hyperiqa")
@click.option("--debug", is_flag=True,
              help=f"Show the traceback of an internal error (also {DEBUG_ENV}=1).")
def cli(debug):
    """HyperIQA blind image quality assessment on Keras 3 (torch or jax).

    \b
    keras-hyperiqa fit                       train on the embedded demo set
    keras-hyperiqa fit --dataset koniq --root DIR
    keras-hyperiqa predict model.keras photo.jpg photos/
    keras-hyperiqa evaluate model.keras --dataset livec --root DIR
    keras-hyperiqa convert koniq_pretrained.pkl koniq.keras
    keras-hyperiqa convert HyperIQA-resnet50-koniq10k.pth --preset hyperiqa_koniq
    keras-hyperiqa export koniq.keras --format onnx
    keras-hyperiqa ablate --dataset koniq --root DIR
    keras-hyperiqa compare                   torch vs jax, side by side
    """


def _fit_options(f):
    options = [
        click.option("--dataset", type=click.Choice(tuple(names.DATASETS)), default=None,
                     help="Dataset reader. Without it: the embedded demo set with the quick profile."),
        click.option("--root", type=click.Path(file_okay=False), default=None,
                     help="Dataset folder, as downloaded (csv: the folder of labels.csv)."),
        click.option("--label-column", default=None, help="Label column to read (KonIQ: MOS_zscore by default)."),
        click.option("--backbone", type=click.Choice(names.BACKBONES), default=None,
                     help="Backbone [resnet50; demo: resnet_tiny]."),
        click.option("--backbone-weights", default=None, metavar="PATH|PRESET|none",
                     help="ImageNet weights: a timm/torchvision state dict, a timm folder, a keras-hub "
                          "preset name (online), or none to train from scratch [with --dataset: the "
                          "backbone's ImageNet weights, ResNets hf://timm/resnetN.tv_in1k; demo: none]."),
        click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
                     help="Start from this .keras model (fine-tune a converted or earlier model)."),
        click.option("--multiscale", is_flag=True, help="Swin: feed all four stages to the head."),
        click.option("--attention", is_flag=True,
                     help="With --multiscale: the Swin fork's (SMART-IQA) attention-weighted stage fusion."),
        click.option("--dropout", type=float, default=0.0, show_default=True,
                     help="Dropout on the head's map and inside the target net, training only (the Swin fork: 0.3)."),
        click.option("--drop-path", type=float, default=0.0, show_default=True,
                     help="Swin stochastic depth rate, training only (the Swin fork: 0.2)."),
        click.option("--epochs", type=int, default=None, help="Epochs [16; demo 4]."),
        click.option("--batch-size", type=int, default=None, help="Patches per batch [96; demo 32]."),
        click.option("--lr", type=float, default=None, help="Backbone learning rate [2e-5; demo 5e-4]."),
        click.option("--lr-ratio", type=float, default=None, help="Hypernet lr / backbone lr [10; demo 4]."),
        click.option("--decay-every", type=int, default=None,
                     help="Divide the lr by 10 every N epochs (timed as the original) [6; demo 2]."),
        click.option("--weight-decay", type=float, default=None, help="Coupled L2, as torch Adam [5e-4]."),
        click.option("--train-patches", type=int, default=None, help="Random crops per image per epoch [25; demo 2]."),
        click.option("--test-patches", type=int, default=None, help="Test crops per image [25; demo 1]."),
        click.option("--test-crops", type=click.Choice(["grid", "random"]), default="grid", show_default=True,
                     help="Test crops: deterministic k x k grid, or random as in the original."),
        click.option("--resize", default=None, metavar=RESIZE_METAVAR,
                     help="Resize before cropping; preset: the dataset's (KonIQ 512x384, BID 512x512, "
                          "others none) [preset]."),
        click.option("--rounds", type=int, default=1, show_default=True,
                     help="Seeded train/test rounds; the median is reported (the paper used 10)."),
        click.option("--val-fraction", type=float, default=None,
                     help="Part of the training images held out for epoch selection [0.1; demo 0]."),
        click.option("--split", type=click.Choice(["random", "official"]), default="random", show_default=True,
                     help="KonIQ: 'official' uses koniq10k_distributions_sets.csv."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Fixes init, splits, crop positions and shuffling."),
        click.option("--skip-invalid", is_flag=True,
                     help="Drop invalid dataset items (listed in dropped.txt) instead of stopping."),
        click.option("--workers", type=int, default=None, help="Image decoding threads [CPU count]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                     help="bf16: the backbone computes in bfloat16 (GPU runs); the head, scores and loss "
                          "stay float32, and the saved model predicts in float32."),
        backend_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _fit_config(kw, out):
    from keras_hyperiqa.experiment import QUICK_PROFILE, FitConfig

    demo = kw["dataset"] is None
    if demo and kw["root"]:
        raise UserError("--root needs --dataset NAME (the demo needs no root)")
    base = dict(QUICK_PROFILE) if demo else {}
    explicit = {k: kw[k] for k in ("backbone", "backbone_weights", "epochs", "batch_size", "lr",
                                   "lr_ratio", "decay_every", "weight_decay", "train_patches", "test_patches",
                                   "val_fraction") if kw.get(k) is not None}
    options = {**base, **explicit}
    if kw["attention"] and not kw["multiscale"]:
        raise UserError("--attention weights the four stages of --multiscale: add --multiscale")
    if kw["drop_path"] and not names.is_swin(options.get("backbone", "resnet50")):
        raise UserError("--drop-path (stochastic depth) needs a Swin --backbone")
    for name in ("dropout", "drop_path"):
        if not 0.0 <= kw[name] < 1.0:
            raise UserError(f"--{name.replace('_', '-')} {kw[name]}: must be in [0, 1)")
    return FitConfig(
        dataset=kw["dataset"], root=kw["root"], label_column=kw["label_column"],
        init=kw["init"], multiscale=kw["multiscale"], attention=kw["attention"], dropout=kw["dropout"],
        drop_path=kw["drop_path"], resize=_parse_hw(kw["resize"], "--resize"),
        rounds=kw["rounds"], seed=kw["seed"], split=kw["split"], test_crops=kw["test_crops"],
        revert_fix=list(kw.get("revert_fix") or ()), skip_invalid=kw["skip_invalid"],
        workers=kw["workers"], precision=kw["precision"], out=out, **options,
    )


@cli.command()
@_fit_options
@click.option("--revert-fix", type=click.Choice(tuple(names.REVERT_FIXES)), multiple=True,
              help="Revert one of the three solver fixes (repeatable), for ablations.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory [runs/demo or runs/<dataset>-<backbone>].")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Resume the run in this directory (its own options are used).")
@click.option("--overwrite", is_flag=True,
              help="Replace the run already in --out (by default a run with other options is "
                   "refused and one with the same options resumes).")
@click.option("--distribute", is_flag=True,
              help="Data-parallel training. jax: over all local devices (multi-host after "
                   "keras.distribution.initialize, see README). torch: under torchrun, one process "
                   "per device (automatic when torchrun's WORLD_SIZE > 1).")
def fit(**kw):
    """Train HyperIQA and write a run directory.

    Without --dataset it trains on the embedded demo set (procedural scenes,
    generated on first use) with the quick profile: resnet_tiny from scratch
    (no ImageNet weights offline), 4 epochs, batch 32, lr 5e-4, ratio 4, lr /
    10 for the last epoch (--decay-every 2), 2 train patches and 1 test patch
    per image, no validation split (last epoch selected); its held-out SRCC
    and run time are in the README ("fit"). The demo model shows
    that training works; its scores on real photos mean nothing. With
    --dataset NAME --root DIR the defaults are the original's: resnet50 from
    torchvision's ImageNet weights (downloaded by keras-hub; offline, pass
    --backbone-weights PATH, or none to train from scratch), 16 epochs, batch
    96, lr 2e-5, ratio 10, weight decay 5e-4, 25 train and 25
    test patches of 224 (grid test crops: a square number, 1, 4, 9, 16, 25).

    Your own images: --dataset csv --root DIR reads DIR/labels.csv, a header
    and one row per image; image paths relative to DIR (or absolute), label
    a number read as higher is better (--label-column NAME for another
    column), optional ref: images with the same ref stay on one side of the
    split. Bad rows stop the run, listed; --skip-invalid drops them instead.

    \b
        image,label,ref
        photos/a_blur1.jpg,3.1,a
        photos/b.png,4.6,b

    The run directory holds config.json, splits.json, metrics.csv,
    model.keras (selected epoch), summary.json (srcc, plcc), curves.png,
    scatter.png and resumable checkpoints (rounds/rN/last.npz). Epochs and
    rounds are counted from 0.
    """
    _use_backend(kw.pop("backend"))
    _setup_distribution(kw.pop("distribute"))
    from keras_hyperiqa import experiment

    resume, overwrite = kw.pop("resume"), kw.pop("overwrite")
    if resume:
        experiment.fit(resume=resume, overwrite=overwrite)
        return
    out = kw.pop("out") or (f"runs/{kw['dataset']}-{kw['backbone'] or 'resnet50'}"
                            if kw["dataset"] else "runs/demo")
    config = _fit_config(kw, out)
    experiment.fit(config, overwrite=overwrite)


def _setup_distribution(distribute):
    """``--distribute`` (jax), or torchrun's environment (torch): before any model is built."""
    import keras_hyperiqa.backend as hb

    backend = hb.ensure_default_backend()
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    if not distribute and not (backend == "torch" and under_torchrun):
        return
    from keras_hyperiqa.training import distributed

    distributed.setup(backend)


@cli.command()
@_fit_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Parent folder of the five runs [runs/ablate-<dataset>].")
def ablate(**kw):
    """Train with all fixes, each fix reverted alone, and all reverted.

    The same data, splits and seed for the five runs; writes ablation.md (a
    side-by-side table), ablation.json and ablation.png (test SRCC per epoch).
    Interrupted? Run the same command again: finished runs are kept and the
    interrupted one resumes.
    """
    _use_backend(kw.pop("backend"))
    from keras_hyperiqa import ablation

    out = kw.pop("out") or f"runs/ablate-{kw['dataset'] or 'demo'}"
    config = _fit_config(dict(kw, revert_fix=()), out)
    ablation.run(config, out)


@cli.command()
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True)
@click.option("--patches", type=int, default=None,
              help="Crops per image (grid: a square number, 1, 4, 9, 16, 25, ...) "
                   "[the model's recommendation, else 25].")
@click.option("--crops", type=click.Choice(["grid", "random"]), default=None,
              help="[the model's recommendation, else grid]")
@click.option("--resize", default="preset", metavar=RESIZE_METAVAR,
              help="Resize before cropping; preset: the model's own preprocessing, stored "
                   "with it (its training set's preset) [preset].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random crops.")
@click.option("--format", "fmt", type=click.Choice(["text", "csv", "json"]), default="text", show_default=True)
@click.option("--batch-size", type=int, default=25, show_default=True)
@precision_option
@backend_option
def predict(model, paths, patches, crops, resize, seed, fmt, batch_size, precision, backend):
    """Score images: files, folders or glob patterns.

    MODEL: a .keras file, a keras-hub preset folder, or a checkpoint
    (koniq_pretrained.pkl, pyiqa's HyperIQA .pth) converted in memory.
    One score per image, deterministic by default (a grid of crops, the
    model's own resize). The scores' scale and the crops go to stderr. Unreadable inputs are reported on stderr while the
    rest are scored; the exit status is 2 when any input could not be scored.
    The output says which way the scores point (a model trained on DMOS
    labels scores lower for better images): a "# scores:" header line (text),
    a higher_is_better column (csv) or field (json).
    """
    _require_model(model)
    _use_backend(backend)
    from keras_hyperiqa import inference

    resize_opt = _model_resize(resize)
    files, problems = inference.expand_paths(paths)
    for line in problems:  # at once, not after the model has loaded
        click.echo(f"Error: {line}", err=True)
    if not files:
        sys.exit(2)
    scorer = inference.Scorer.from_file(model, patches=patches, crops=crops, resize=resize_opt,
                                        seed=seed, batch_size=batch_size, precision=precision)
    if scorer.describe():
        click.echo(f"# {scorer.describe()}", err=True)
    results, n_path_problems = [], len(problems)
    for path in files:
        try:
            results.append((path, scorer.score(path)))
        except UserError as err:
            problems.append(str(err))
    click.echo(inference.format_scores(results, fmt, scorer.model.higher_is_better), nl=False)
    for line in problems[n_path_problems:]:
        click.echo(f"Error: {line}", err=True)
    if problems:
        sys.exit(2)


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--dataset", type=click.Choice(tuple(names.DATASETS)), required=True)
@click.option("--root", type=click.Path(file_okay=False), required=True)
@click.option("--label-column", default=None)
@click.option("--splits", "splits_path", type=click.Path(dir_okay=False), default=None,
              help="A run's splits.json: score only its test images (round --round).")
@click.option("--round", "round_index", type=int, default=0, show_default=True,
              help="Which round of --splits (rounds are counted from 0).")
@click.option("--patches", type=int, default=None,
              help="Crops per image (grid: a square number) [the model's recommendation, else 25]")
@click.option("--crops", type=click.Choice(["grid", "random"]), default=None,
              help="[the model's recommendation, else grid]")
@click.option("--resize", default="preset", metavar=RESIZE_METAVAR,
              help="Resize before cropping; preset: the model's own preprocessing [preset].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-invalid", is_flag=True,
              help="Drop invalid dataset items instead of stopping (listed next to --csv, in NAME_dropped.txt).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default="predictions.csv",
              show_default=True, help="Per-image scores: image, label, prediction.")
@click.option("--scatter", "scatter_path", type=click.Path(dir_okay=False), default=None,
              help="Also write this PNG: predictions against labels, SRCC/PLCC, fitted line.")
@precision_option
@backend_option
def evaluate(model, dataset, root, label_column, splits_path, round_index, patches, crops, resize,
             seed, skip_invalid, csv_path, scatter_path, precision, backend):
    """SRCC, PLCC, KRCC and RMSE of a model on a dataset, and a per-image CSV.

    MODEL: a .keras file, a keras-hub preset folder, or a checkpoint
    (koniq_pretrained.pkl, pyiqa's HyperIQA .pth) converted in memory.
    Correlations are reported with higher score = better image: a model whose
    scores point the other way from the dataset's labels (MOS-trained on LIVE
    or CSIQ DMOS) is compared with the negated labels, and a note says so.
    """
    _require_model(model)
    require_file(splits_path, "splits file")
    _use_backend(backend)
    from keras_hyperiqa import inference

    resize_opt = _model_resize(resize)
    metrics = inference.evaluate_dataset(
        model, dataset, root, label_column=label_column, splits_path=splits_path,
        round_index=round_index, patches=patches, crops=crops, resize=resize_opt, seed=seed,
        skip_invalid=skip_invalid, csv_path=csv_path, scatter_path=scatter_path,
        precision=precision)
    click.echo(" ".join(f"{k.upper()} {metrics[k]:.4f}" for k in ("srcc", "plcc", "krcc", "rmse") if k in metrics)
               + f"  ({metrics['images']} images; per-image scores in {csv_path}"
               + (f", scatter plot in {scatter_path})" if scatter_path else ")"))
    if metrics["note"]:
        click.echo(metrics["note"])


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False), required=False)
@click.option("--preset", "preset_dir", type=click.Path(file_okay=False), default=None,
              help="Also (or instead) write a keras-hub preset folder.")
@click.option("--resize", default="preset", metavar=RESIZE_METAVAR,
              help="Preprocessing stored in the model; preset: the format's own (original and "
                   "SMART-IQA: KonIQ's 512x384, on which they were trained; pyiqa: none) [preset].")
@click.option("--lower-is-better", is_flag=True,
              help="The checkpoint was trained on DMOS labels (LIVE, CSIQ): its scores are lower for better "
                   "images [the released KonIQ checkpoints: higher is better].")
@backend_option
def convert(src, dst, preset_dir, resize, lower_is_better, backend):
    """Convert a HyperIQA checkpoint to .keras.

    SRC: the original's koniq_pretrained.pkl, pyiqa's HyperIQA .pth (its
    state dict under 'params') or a SMART-IQA (Swin fork) HyperNet state dict;
    the format is detected from the keys. The
    model records the weights' score range (original: KonIQ MOS_zscore,
    0-100; pyiqa: MOS normalised to 0-1) and test crops (25), which predict
    and evaluate use. DST.keras, --preset DIR (a keras-hub preset folder), or both.
    """
    require_file(src, "checkpoint file")
    _use_backend(backend)
    from keras_hyperiqa.convert.original import convert_original_checkpoint, load_checkpoint

    if dst is None and preset_dir is None:
        raise UserError("convert needs DST.keras, --preset DIR, or both")
    kwargs = {"higher_is_better": not lower_is_better}
    size = _parse_hw(resize, "--resize")
    if size != "preset":
        kwargs["resize"] = size
    if dst is not None:
        model = convert_original_checkpoint(src, dst, **kwargs)
        click.echo(f"wrote {dst}")
    else:
        model = load_checkpoint(src, **kwargs)
    if preset_dir is not None:
        from keras_hyperiqa.presets import save_preset

        save_preset(model, preset_dir)
        click.echo(f"wrote {preset_dir}")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [MODEL with the format's suffix].")
def export(model, fmt, out):
    """Export a model for inference without Keras (ONNX; runs on the torch backend).

    MODEL: a .keras file, a keras-hub preset folder or a checkpoint. The ONNX
    graph takes float32 NHWC patches in [0, 255] and returns one score per
    patch; the preprocessing is in the file's metadata (README: scoring with
    onnxruntime alone).
    """
    _require_model(model)
    _use_backend("torch")
    from keras_hyperiqa.export import export_onnx
    from keras_hyperiqa.inference import load_model

    if out is None:
        out = os.path.splitext(model.rstrip("/"))[0] + "." + fmt
    export_onnx(load_model(model), out)
    click.echo(f"wrote {out}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/compare", show_default=True)
@click.option("--backbone", type=click.Choice(names.BACKBONES), default="resnet_tiny", show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tolerance", type=float, default=None,
              help="Largest allowed forward difference between the backends, relative to the largest "
                   "score [float32 rounding bound of the model: 4 sqrt(2 n) 2^-24, n its summed "
                   "reduction lengths; resnet50 8.7e-5, resnet_tiny 3.9e-5].")
@click.option("--patch-size", type=int, default=224, show_default=True)
@click.option("--scenes", type=int, default=3, show_default=True,
              help="Demo-style scenes of 13 images (the last is the test set).")
@click.option("--image-size", type=int, default=256, show_default=True)
@click.option("--train-patches", type=int, default=2, show_default=True)
@click.option("--test-patches", type=int, default=1, show_default=True)
@click.option("--parity-patches", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--lr-ratio", type=float, default=4.0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
def compare(out, **kw):
    """Run one configuration under torch and jax and compare them.

    Same seed, data and initial weights on both backends (each in its own
    subprocess): forward parity, per-epoch loss and SRCC/PLCC side by side,
    step time and peak memory. Writes OUT/comparison.md and
    OUT/comparison.json; exit status 1 when parity breaks --tolerance.
    """
    from pathlib import Path

    from keras_hyperiqa.compare import compare_backends

    result = compare_backends(out, verbose=True, **kw)
    click.echo((Path(out) / "comparison.md").read_text(), nl=False)
    if not result["parity_ok"]:
        sys.exit(1)


def main(argv=None):
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="keras-hyperiqa", standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
