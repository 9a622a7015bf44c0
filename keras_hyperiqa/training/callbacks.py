"""The callbacks of a ``fit`` run: epoch selection, the console, the metrics table.

``keras_hyperiqa.experiment`` adds these to the trainer's callbacks (beside
the schedule, :class:`~keras_hyperiqa.training.checkpoint.CheckpointCallback`
and :class:`~keras_hyperiqa.training.trainer.HistoryCSVLogger`); it imports
this module when a round starts, since importing Keras takes seconds.
"""

import csv
import math
import time
from pathlib import Path

import keras
import numpy as np

from keras_hyperiqa.atomic import atomic_path
from keras_hyperiqa.reports import fmt, write_csv


class SelectEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch selected on validation SRCC.

    Without a validation split the last epoch is selected (never the test
    split: that is the optimistic protocol, reported separately).
    """

    def __init__(self, trainer, path):
        super().__init__()
        self.trainer, self.path = trainer, Path(path)

    def on_epoch_end(self, epoch, logs=None):
        history = self.trainer.history
        key = "val_srcc" if any("val_srcc" in r for r in history) else None
        if key is None:
            best = len(history) - 1
        else:
            values = [r.get(key, -math.inf) for r in history]
            values = [-math.inf if (v is None or math.isnan(v)) else v for v in values]
            best = int(np.argmax(values))
        if best == len(history) - 1:
            with atomic_path(self.path) as tmp:
                self.trainer.model.save_weights(tmp)


class EpochProgress(keras.callbacks.Callback):
    """A progress bar with loss and throughput, and a one-line epoch summary."""

    def __init__(self, steps, epochs, round_index, rounds, verbose=1):
        super().__init__()
        self.steps, self.epochs = steps, epochs
        self.round_index, self.rounds, self.verbose = round_index, rounds, verbose

    def on_epoch_begin(self, epoch, logs=None):
        self.seen, self.start = 0, time.perf_counter()
        if self.verbose:
            tag = f", round {self.round_index} of 0-{self.rounds - 1}" if self.rounds > 1 else ""
            print(f"Epoch {epoch} (epochs 0-{self.epochs - 1}{tag})", flush=True)
            # loss: the epoch's running mean, which the trainer logs every
            # log_every_steps steps (shown as it is, not averaged again)
            self.bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss", "patches/s"])

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.seen += logs.get("size", 0)
        if self.verbose:
            rate = self.seen / max(time.perf_counter() - self.start, 1e-9)
            values = [("loss", logs["loss"])] if "loss" in logs else []
            self.bar.update(batch + 1, values + [("patches/s", rate)])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.verbose:
            print(epoch_summary(epoch, logs), flush=True)


def epoch_summary(epoch, logs):
    """``epoch 3: loss 12.3 | lr backbone 2e-05 hypernet 0.0002 | train SRCC ... | val ... | test ...``"""
    parts = [f"epoch {epoch}: loss {fmt(logs.get('loss'), '.4g')}",
             f"lr backbone {fmt(logs.get('backbone_lr'), '.3g')} hypernet {fmt(logs.get('hypernet_lr'), '.3g')}",
             f"train SRCC {fmt(logs.get('train_srcc'))}"]
    for prefix, name in (("val_", "val"), ("test_", "test")):
        if prefix + "srcc" in logs:
            parts.append(f"{name} SRCC {fmt(logs.get(prefix + 'srcc'))} PLCC {fmt(logs.get(prefix + 'plcc'))}")
    return " | ".join(parts)


class MetricsTable(keras.callbacks.Callback):
    """Rewrites ``out/metrics.csv`` (every round's epochs) after each epoch, atomically.

    The rows of other rounds are kept as they are in the file; this round's
    are ``trainer.history``, so a resumed round rewrites its own rows whole.
    """

    def __init__(self, out, round_index, trainer):
        super().__init__()
        self.path, self.round_index, self.trainer = Path(out) / "metrics.csv", round_index, trainer

    def on_epoch_end(self, epoch, logs=None):
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["round"]) != self.round_index]
        rows += [{"round": self.round_index, **r} for r in self.trainer.history]
        rows.sort(key=lambda r: (int(r["round"]), int(r["epoch"])))
        write_csv(self.path, rows)
