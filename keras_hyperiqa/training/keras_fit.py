"""HyperIQA in Keras's own ``model.compile`` / ``model.fit``.

For users who prefer Keras's loop to :class:`~keras_hyperiqa.training.Trainer`::

    model.compile(optimizer=HyperAdam(learning_rate=2e-5, weight_decay=5e-4),
                  loss="mean_absolute_error")
    train = PatchPyDataset(PatchDataset(records, train=True, ...))
    model.fit(train, epochs=16, shuffle=False, callbacks=[
        HyperIQASchedule(lr=2e-5, lr_ratio=10),   # reads model.optimizer
        train.epoch_callback(),                    # the epoch's crops
        ImageCorrelation(PatchDataset(val_records, train=False, ...)),
    ])

``shuffle=False`` because the pipeline already shuffles patches within each
epoch from ``(seed, epoch)``; Keras's own shuffle would reorder whole batches
and force the pipeline to start over.

Keras's loop and the trainer take the same steps: on the same data order the
weights after ``model.fit`` equal ``Trainer.fit``'s (``tests/test_keras_fit.py``).
"""

import warnings

import keras

from keras_hyperiqa.metrics import iqa_metrics


class PatchPyDataset(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` over a train source's ``train_batches(epoch)``.

    ``source``: a :class:`~keras_hyperiqa.data.pipeline.PatchDataset` with
    ``train=True`` (or any object with ``train_batches(epoch)`` and
    ``steps_per_epoch``). Batch ``i`` of epoch ``e`` is the ``i``-th batch of
    ``source.train_batches(e)``, so ``model.fit`` sees exactly the batches the
    trainer would.

    The epoch: Keras does not tell a PyDataset which epoch it is in. Put
    :meth:`epoch_callback` in ``model.fit``'s callbacks (needed with
    ``initial_epoch``); without it the dataset moves to the next epoch after
    serving every batch of one.
    """

    def __init__(self, source, initial_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.epoch = int(initial_epoch)
        self._batches = None  # (epoch, generator, index of its next batch)
        self._served = set()
        self._warned = False

    def __len__(self):
        return int(self.source.steps_per_epoch)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def epoch_callback(self):
        """A callback that sets this dataset's epoch at ``on_epoch_begin``."""
        dataset = self

        class _SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                dataset.set_epoch(epoch)

        return _SetEpoch()

    def __getitem__(self, index):
        index = int(index)
        if index < 0 or index >= len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        state = self._batches
        if state is None or state[0] != self.epoch or state[2] != index:
            if state is not None and state[0] == self.epoch and index != 0 and not self._warned:
                warnings.warn("PatchPyDataset: batches requested out of order; pass shuffle=False "
                              "to model.fit (the patches are already shuffled per epoch)",
                              stacklevel=2)
                self._warned = True
            generator = iter(self.source.train_batches(self.epoch))
            for _ in range(index):
                next(generator)
            state = (self.epoch, generator, index)
        x, y = next(state[1])
        self._batches = (state[0], state[1], index + 1)
        self._served.add(index)
        return x, y

    def on_epoch_end(self):
        if len(self._served) == len(self):
            self.epoch += 1
        self._served = set()
        self._batches = None


class ImageCorrelation(keras.callbacks.Callback):
    """Image-level SRCC / PLCC (and KRCC, RMSE) on an eval source after each epoch.

    Adds ``{prefix}srcc``, ``{prefix}plcc``, ``{prefix}krcc``,
    ``{prefix}rmse`` to the epoch logs, so callbacks after it (EarlyStopping,
    ModelCheckpoint, CSVLogger, TensorBoard) and ``History`` see them. Each
    image's score is the mean over its patches, as in :class:`Trainer`.

    Args:
        source: an eval source (``PatchDataset(train=False)``:
            ``eval_batches()`` and ``labels``).
        prefix: log key prefix, ``"val_"`` by default.
    """

    def __init__(self, source, prefix="val_"):
        super().__init__()
        self.source = source
        self.prefix = prefix
        self._predictor = None

    def on_epoch_end(self, epoch, logs=None):
        from keras_hyperiqa.inference import Predictor, score_images

        model = self.model  # on jax, this writes the training state back first
        if self._predictor is None or self._predictor.model is not model:
            self._predictor = Predictor(model)
        means = score_images(self._predictor, self.source, len(self.source.labels))
        metrics = iqa_metrics(means, self.source.labels)
        if logs is not None:
            logs.update({self.prefix + k: v for k, v in metrics.items()})
