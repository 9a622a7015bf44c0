"""Custom training loop for HyperIQA (not ``model.fit``).

Everything is backend-neutral except the train step and the eval forward:

* torch: forward under autograd, ``torch.autograd.grad`` on the trainable
  variables, then ``optimizer.apply`` under ``torch.no_grad()``;
* jax: one ``jax.jit``-compiled step over ``model.stateless_call`` (which also
  returns the updated non-trainable variables, e.g. BatchNorm statistics) and
  ``optimizer.stateless_apply`` (moments, step count, learning rate and
  multipliers all flow through it). The new values are written back into the
  Keras variables after every step, before any callback runs, and the next
  step reads them again, so callbacks may change rates or reset slots at any
  time.

Data sources are duck-typed:

* train source: ``train_batches(epoch)`` yields ``(x, y)`` with ``x`` float32
  ``(B, P, P, 3)`` in [0, 255] and ``y`` float32 ``(B,)``, deterministic
  given its seed and ``epoch``; ``steps_per_epoch`` (int or None).
* eval source: ``eval_batches()`` yields ``(x, image_index)`` with
  ``image_index`` int ``(B,)``; ``labels`` holds one label per image.

The loss is the mean L1 distance between per-patch scores and labels.

Data parallelism: a ``strategy`` from :mod:`keras_hyperiqa.training.distributed`
(``JaxDataParallel`` or ``TorchDataParallel``; by default the one installed
with ``distributed.set_current``) places or slices each global batch, reduces
the gradients and gathers predictions; the optimizer and callbacks are the
same as on one device.
"""

import csv
import math
import os

import keras
import numpy as np
from keras import ops

from keras_hyperiqa import compat
from keras_hyperiqa.atomic import atomic_file
from keras_hyperiqa.data.pipeline import image_means, prefetch
from keras_hyperiqa.inference import Predictor
from keras_hyperiqa.model.layout import use_torch_kernel_layout
from keras_hyperiqa.training import checkpoint as ckpt
from keras_hyperiqa.metrics import iqa_metrics
from keras_hyperiqa.training.optimizer import HyperAdam


def l1_loss(predictions, labels):
    """Mean absolute error between per-patch scores and labels (float32)."""
    predictions = ops.reshape(ops.cast(predictions, "float32"), (-1,))
    labels = ops.reshape(ops.cast(labels, "float32"), (-1,))
    return ops.mean(ops.abs(predictions - labels))


class Trainer:
    """Trains a HyperIQA-like model with :class:`HyperAdam` and callbacks.

    Args:
        model: a built ``keras.Model`` mapping ``(N, P, P, 3)`` to ``(N,)``
            scores. If it has ``backbone_variables`` and ``hypernet_variables``
            the epoch logs report ``backbone_lr`` and ``hypernet_lr``.
        optimizer: a ``HyperAdam`` (default ``HyperAdam()``); built here on
            ``model.trainable_variables`` if it is not built yet.
        strategy: ``"auto"`` (default: ``distributed.current()``, ``None`` on
            one device), ``None``, or a ``JaxDataParallel`` /
            ``TorchDataParallel`` matching the backend. On torch, model and
            optimizer state are broadcast from rank 0 here.

    Attributes:
        history: list of dicts, one per completed epoch: ``epoch``, ``loss``,
            ``backbone_lr``, ``hypernet_lr``, ``val_*``, ``test_*`` metrics.
            Restored by :meth:`restore`, saved by ``CheckpointCallback``.
    """

    #: Steps between two reads of the running loss for the progress bar and
    #: ``on_train_batch_end`` (other steps log only ``size``): each read waits
    #: for the device to finish the step.
    log_every_steps = 10
    #: Training batches prepared ahead by a background thread (decode, crop,
    #: pinning) while the current step runs.
    prefetch_batches = 2

    def __init__(self, model, optimizer=None, strategy="auto"):
        self.model = model
        self.optimizer = optimizer if optimizer is not None else HyperAdam()
        self.backend = keras.backend.backend()
        if self.backend not in ("torch", "jax"):
            raise ValueError(
                f"Trainer supports the torch and jax backends, not "
                f"{self.backend!r}"
            )
        trainable = list(model.trainable_variables)
        if not trainable:
            raise ValueError("The model has no trainable variables (built?)")
        if not self.optimizer.built:
            self.optimizer.build(trainable)
        built_on = [id(v) for v in compat.optimizer_built_variables(self.optimizer)]
        if built_on != [id(v) for v in trainable]:
            raise ValueError(
                "The optimizer was built on other variables than "
                "model.trainable_variables (same order required)."
            )
        if self.backend == "torch":
            use_torch_kernel_layout(list(model.variables) + list(self.optimizer.variables))
        self.history = []
        self.stop_training = False
        self._jax_train_fn = None
        self._predictor = None
        if isinstance(strategy, str) and strategy == "auto":
            from keras_hyperiqa.training import distributed

            strategy = distributed.current()
        if strategy is not None and strategy.backend != self.backend:
            raise ValueError(
                f"A {strategy.backend} strategy cannot drive the {self.backend} backend")
        self.strategy = strategy
        if strategy is not None and self.backend == "torch":
            strategy.broadcast_state(self.model, self.optimizer)

    # ------------------------------------------------------------ train step
    def train_step(self, x, y):
        """One optimizer step on a batch; returns the loss as a float (waits for the step)."""
        return float(ops.convert_to_numpy(self._train_step(x, y)))

    def _train_step(self, x, y):
        """One optimizer step; returns the loss as a device scalar, without
        waiting for the step (no device-to-host read)."""
        if self.backend == "torch":
            return self._torch_train_step(x, y)
        return self._jax_train_step(x, y)

    def _torch_train_step(self, x, y):
        import torch

        model, optimizer = self.model, self.optimizer
        trainable = compat.optimizer_built_variables(optimizer)
        strategy = self.strategy
        if strategy is not None:  # this rank's contiguous slice of the batch
            x, y = strategy.local_batch(x, y)
        count = int(np.shape(y)[0])
        values = [v.value for v in trainable]
        # A batch pinned by the prefetch thread (_host_batch) is copied
        # without blocking the host; numpy batches go through Keras.
        self._host_labels = y
        x, y = (t.to(values[0].device, non_blocking=True) if isinstance(t, torch.Tensor)
                else t for t in (x, y))
        x = ops.convert_to_tensor(x, dtype="float32")
        y = ops.convert_to_tensor(y, dtype="float32")
        if count:
            with torch.enable_grad():
                predictions = model(x, training=True)
                loss = l1_loss(predictions, y)
                grads = torch.autograd.grad(loss, values, allow_unused=True)
        else:  # an empty shard (partial last batch): contributes nothing
            predictions = ops.zeros((0,), dtype="float32")
            loss, grads = ops.zeros((), dtype="float32"), [None] * len(values)
        grads = [
            torch.zeros_like(value) if g is None else g
            for g, value in zip(grads, values)
        ]
        loss = loss.detach()
        if strategy is not None:
            # count-weighted all-reduce: the global batch's mean gradient/loss
            grads, loss, _ = strategy.reduce_gradients(grads, loss, count)
        with torch.no_grad():
            optimizer.apply(grads, trainable)
        if strategy is not None:
            strategy.after_step(model)
        self.last_predictions = predictions.detach()
        self.last_labels = y
        return loss

    def _make_jax_train_fn(self):
        import jax

        model, optimizer = self.model, self.optimizer
        out_shardings = None
        if self.strategy is not None:
            # Pin the new state to the variables' (replicated) shardings, as
            # Keras's JAXTrainer does; loss/predictions are left to XLA.
            out_shardings = (
                None, None,
                [v.value.sharding for v in compat.optimizer_built_variables(optimizer)],
                [v.value.sharding for v in model.non_trainable_variables],
                [v.value.sharding for v in optimizer.variables],
            )

        def loss_fn(trainable, non_trainable, x, y):
            predictions, non_trainable = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return l1_loss(predictions, y), (non_trainable, predictions)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def step(trainable, non_trainable, optimizer_vars, x, y):
            (loss, (non_trainable, predictions)), grads = grad_fn(
                trainable, non_trainable, x, y
            )
            trainable, optimizer_vars = optimizer.stateless_apply(
                optimizer_vars, grads, trainable
            )
            return loss, predictions, trainable, non_trainable, optimizer_vars

        # The old state is replaced by the step's outputs (written back into
        # the variables at once), so its buffers are donated: XLA updates the
        # weights, batch-norm statistics and Adam slots in place instead of
        # holding two copies of the whole state.
        return jax.jit(step, out_shardings=out_shardings, donate_argnums=(0, 1, 2))

    def _jax_train_step(self, x, y):
        if self._jax_train_fn is None:
            self._jax_train_fn = self._make_jax_train_fn()
        model, optimizer = self.model, self.optimizer
        trainable_vars = compat.optimizer_built_variables(optimizer)
        non_trainable_vars = model.non_trainable_variables
        optimizer_vars = optimizer.variables
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
        labels = self._host_labels = y
        if self.strategy is not None:  # the global batch, sharded on axis 0
            x, y = self.strategy.place(x, y)
        loss, predictions, trainable, non_trainable, opt_values = self._jax_train_fn(
            [v.value for v in trainable_vars],
            [v.value for v in non_trainable_vars],
            [v.value for v in optimizer_vars],
            x,
            y,
        )
        # Write the state back before any callback can look at it.
        for variable, value in zip(trainable_vars, trainable):
            variable.assign(value)
        for variable, value in zip(non_trainable_vars, non_trainable):
            variable.assign(value)
        for variable, value in zip(optimizer_vars, opt_values):
            variable.assign(value)
        self.last_predictions = predictions
        self.last_labels = labels
        return loss

    def _host_batch(self, batch):
        """Runs in the prefetch thread: on a CUDA device, the batch's arrays in
        page-locked memory, so that the step's host-to-device copy does not
        block the host; elsewhere the batch unchanged."""
        if self.backend != "torch":
            return batch
        import torch

        if compat.optimizer_built_variables(self.optimizer)[0].value.device.type != "cuda":
            return batch
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).pin_memory()
                     if isinstance(a, np.ndarray) else a for a in batch)

    def _predictions_to_numpy(self, predictions):
        """An epoch's per-step device predictions as host arrays (one read
        per device array at most)."""
        if not predictions:
            return []
        if self.backend == "jax" and self.strategy is not None:
            return [self.strategy.to_numpy(p) for p in predictions]
        return [np.asarray(ops.convert_to_numpy(ops.concatenate(predictions)))]

    # -------------------------------------------------------------- predict
    def predict_on_batch(self, x):
        """Per-patch scores (numpy float32, shape (N,)) in inference mode."""
        if self._predictor is None:
            jax_strategy = self.strategy if self.backend == "jax" else None
            self._predictor = Predictor(self.model, strategy=jax_strategy)
        return self._predictor(x)

    def predict(self, source, callbacks=None):
        """Per-image mean score over the source's patches (numpy float64).

        ``callbacks``: a ``keras.callbacks.CallbackList`` whose
        ``on_test_batch_begin/end`` hooks run around each batch.
        """
        scores, index = [], []
        torch_dp = self.strategy if self.backend == "torch" else None
        for i, (x, image_index) in enumerate(prefetch(source.eval_batches())):
            if torch_dp is not None and not torch_dp.owns_eval_batch(i):
                continue  # round-robin: another rank scores this batch
            if callbacks is not None:
                callbacks.on_test_batch_begin(i)
            scores.append(self.predict_on_batch(x))
            index.append(np.asarray(image_index).reshape(-1))
            if callbacks is not None:
                callbacks.on_test_batch_end(i, {"size": len(index[-1])})
        if torch_dp is not None:
            gathered = torch_dp.gather_objects((scores, index))
            scores = [s for part, _ in gathered for s in part]
            index = [k for _, part in gathered for k in part]
        if not scores:
            scores, index = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
        num_images = len(source.labels) if hasattr(source, "labels") else None
        return image_means(np.concatenate(scores), np.concatenate(index), num_images)

    def evaluate(self, source, callbacks=None):
        """Image-level ``{"srcc", "plcc", "krcc", "rmse"}`` on an eval source."""
        return iqa_metrics(self.predict(source, callbacks), source.labels)

    # ------------------------------------------------------------------ fit
    def group_learning_rates(self):
        """``{"backbone_lr", "hypernet_lr"}`` currently set in the optimizer.

        Falls back to ``{"lr": base learning rate}`` when the model has no
        ``backbone_variables`` / ``hypernet_variables``.
        """
        rates = {}
        for name in ("backbone", "hypernet"):
            variables = getattr(self.model, f"{name}_variables", None)
            if variables:
                rate = self.optimizer.effective_learning_rate(variables[0])
                # float32 storage: report 2e-05, not 1.9999999494757503e-05.
                rates[f"{name}_lr"] = float(f"{rate:.7g}")
        if not rates:
            rates["lr"] = float(ops.convert_to_numpy(self.optimizer.learning_rate))
        return rates

    def restore(self, path):
        """Load a checkpoint into model + optimizer; return the next epoch.

        Also restores :attr:`history`, so model selection and the CSV log
        cover the epochs run before the interruption.
        """
        state = ckpt.load_checkpoint(path, self.model, self.optimizer)
        if self.strategy is not None and self.backend == "torch":
            self.strategy.broadcast_state(self.model, self.optimizer)
        self.history = list(state.get("history", []))
        return int(state["next_epoch"])

    def fit(self, train, epochs, val=None, test=None, callbacks=None,
            initial_epoch=0, verbose=1):
        """Train 0-based epochs ``initial_epoch .. epochs - 1``.

        Each epoch: ``train.train_batches(epoch)`` steps, then image-level
        evaluation on ``val`` and ``test`` (when given), then
        ``on_epoch_end`` with logs ``loss`` (mean over steps), the rates that
        trained this epoch (``backbone_lr``, ``hypernet_lr``) and
        ``val_srcc``, ``val_plcc``, ``val_krcc``, ``val_rmse``, ``test_*``.
        The row (plus ``epoch``) is appended to :attr:`history` *before* the
        callbacks run, so checkpoint and CSV callbacks see it.

        Callbacks run through ``keras.callbacks.CallbackList`` in the given
        order (put the schedule first); a Keras progress bar is added when
        ``verbose``. As in ``model.fit``: ``model.optimizer`` is this
        trainer's optimizer while ``fit`` runs (TensorBoard,
        ReduceLROnPlateau, LearningRateScheduler, BackupAndRestore read it;
        the previous value is put back afterwards, so a ``.keras`` file saved
        after training holds no optimizer state), each evaluation runs
        between ``on_test_begin`` and ``on_test_end`` (logs: the metrics,
        unprefixed for ``val``, ``test_``-prefixed for ``test``) with
        ``on_test_batch_*`` per batch, ``model.stop_training`` ends the loop
        after the epoch (EarlyStopping), and an epoch that BackupAndRestore
        restores in ``on_train_begin`` overrides ``initial_epoch``.

        Returns:
            :attr:`history`.
        """
        steps = getattr(train, "steps_per_epoch", None)
        callback_list = keras.callbacks.CallbackList(
            list(callbacks or []),
            add_history=False,
            add_progbar=bool(verbose),
            model=self.model,
            verbose=verbose,
            epochs=epochs,
            steps=steps,
        )
        previous_optimizer = getattr(self.model, "optimizer", None)
        self.model.optimizer = self.optimizer
        try:
            return self._fit(train, epochs, val, test, callback_list, initial_epoch)
        finally:
            self.model.optimizer = previous_optimizer

    def _fit(self, train, epochs, val, test, callback_list, initial_epoch):
        self.stop_training = False
        self.model.stop_training = False
        compat.clear_restored_initial_epoch(self.model)
        callback_list.on_train_begin()
        restored = compat.restored_initial_epoch(self.model)
        if restored is not None:  # BackupAndRestore found a backup
            initial_epoch = restored
        logs = {}
        for epoch in range(int(initial_epoch), int(epochs)):
            callback_list.on_epoch_begin(epoch)
            total, count = 0.0, 0
            rates = self.group_learning_rates()
            train_pred, train_true = [], []
            # The loss and predictions stay on the device during the epoch:
            # reading one back waits for the step, which would stop the host
            # from queueing the next one (one read every log_every_steps).
            self.batch_waits = []
            batches = prefetch(train.train_batches(epoch), self.prefetch_batches,
                               self._host_batch, waits=self.batch_waits)
            for step, (x, y) in enumerate(batches):
                callback_list.on_train_batch_begin(step)
                total = total + self._train_step(x, y)
                count += 1
                train_pred.append(ops.reshape(ops.cast(self.last_predictions, "float32"), (-1,)))
                # this rank's labels on torch data parallel, like its predictions
                train_true.append(np.asarray(self._host_labels, dtype=np.float32).reshape(-1))
                batch_logs = {"size": int(np.shape(y)[0])}
                if count % self.log_every_steps == 0:  # running mean of the epoch
                    batch_logs["loss"] = float(ops.convert_to_numpy(total)) / count
                callback_list.on_train_batch_end(step, batch_logs)
            total = float(ops.convert_to_numpy(total))
            train_pred = self._predictions_to_numpy(train_pred)
            if self.strategy is not None and self.backend == "torch":
                # every rank's (prediction, label) pairs, for train SRCC
                gathered = self.strategy.gather_objects((train_pred, train_true))
                train_pred = [p for part, _ in gathered for p in part]
                train_true = [t for _, part in gathered for t in part]
            logs = {"loss": total / count if count else math.nan}
            # Patch-level SRCC over the epoch's training predictions, as the
            # original solver reports it (the weights change during the epoch).
            logs["train_srcc"] = train_srcc(train_pred, train_true)
            logs.update(rates)
            for prefix, source in (("val_", val), ("test_", test)):
                if source is not None:
                    callback_list.on_test_begin()
                    metrics = self.evaluate(source, callback_list)
                    tag = "" if prefix == "val_" else prefix
                    callback_list.on_test_end({tag + k: v for k, v in metrics.items()})
                    for key, value in metrics.items():
                        logs[prefix + key] = value
            self.history.append({"epoch": epoch, **logs})
            callback_list.on_epoch_end(epoch, dict(logs))
            if self.stop_training or getattr(self.model, "stop_training", False):
                break
        callback_list.on_train_end(logs)
        return self.history


def train_srcc(predictions, labels):
    """Spearman correlation of concatenated per-patch predictions and labels."""
    if not predictions:
        return math.nan
    from scipy import stats

    p, t = np.concatenate(predictions), np.concatenate(labels)
    if len(p) < 2 or np.all(p == p[0]) or np.all(t == t[0]):
        return math.nan
    return float(stats.spearmanr(p, t)[0])


class HistoryCSVLogger(keras.callbacks.Callback):
    """Rewrites a CSV of ``trainer.history`` atomically after every epoch.

    Unlike ``keras.callbacks.CSVLogger`` (append per row) the file always
    equals the history of the last checkpointed state after a resume, with no
    duplicated or missing rows. Columns: ``epoch`` then the log keys in first
    appearance order.
    """

    def __init__(self, path, trainer):
        super().__init__()
        self.path = os.fspath(path)
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs=None):
        rows = self.trainer.history
        keys = []
        for row in rows:
            for key in row:
                if key not in keys:
                    keys.append(key)
        with atomic_file(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
