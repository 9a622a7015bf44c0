"""The training loop on an accelerator: host syncs per step and batch prefetch.

On a GPU every read of a device value by the host (``.item()``,
``float(t)``, ``.cpu()``, ``np.asarray(t)``, ...) waits until the device has
run everything queued so far, so a loop that reads the loss after each step
cannot queue step t+1 while step t runs. CUDA is absent here, so the reads
are counted on the CPU instead: every top-level call of those ``torch.Tensor``
methods is one sync (the same calls are the synchronising ones on a GPU).
"""

import threading

import keras
import numpy as np
import pytest

from keras_hyperiqa.training.optimizer import HyperAdam
from doubles import ArrayTrainSource, TinyIQA, toy_dataset
from keras_hyperiqa.training.trainer import Trainer

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch host syncs")

# Methods through which the host reads a tensor's value (``np.asarray(t)``
# goes through ``Tensor.__array__``, which calls ``numpy``).
_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


class SyncCounter:
    """Counts host reads of torch tensors (nested calls, e.g. ``__array__``
    calling ``numpy``, count once)."""

    def __init__(self, monkeypatch):
        import torch

        self.count = 0
        self.trace = None
        self._depth = threading.local()
        for name in _READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def _wrap(self, original):
        counter = self

        def read(tensor, *args, **kwargs):
            depth = getattr(counter._depth, "value", 0)
            if depth == 0 and threading.current_thread() is threading.main_thread():
                counter.count += 1
                if counter.trace is not None:
                    import traceback
                    counter.trace.append("".join(traceback.format_stack(limit=6)))
            counter._depth.value = depth + 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                counter._depth.value = depth

        return read


class PerStep(keras.callbacks.Callback):
    """Host reads between consecutive ``on_train_batch_end`` calls, and the logs."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.syncs, self.logs = [], []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:  # the epoch's set-up (reading the rates) is not a step
            self._last = self.counter.count

    def on_train_batch_end(self, batch, logs=None):
        self.syncs.append(self.counter.count - self._last)
        self.logs.append(dict(logs or {}))
        self._last = self.counter.count


def _trainer(batchnorm):
    keras.utils.set_random_seed(0)
    model = TinyIQA(batchnorm=batchnorm)
    trainer = Trainer(model, HyperAdam(learning_rate=1e-2, weight_decay=5e-4), strategy=None)
    images, labels = toy_dataset(n_images=10)
    # 10 images x 2 patches in batches of 2: 10 steps
    return trainer, ArrayTrainSource(images, labels, patches_per_image=2, batch_size=2, seed=1)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_train_step_reads_nothing_back_between_progress_updates(monkeypatch, batchnorm):
    trainer, train = _trainer(batchnorm)
    trainer.log_every_steps = 4
    trainer.fit(train, 1, verbose=0)  # warm-up: first-call work is not per step
    counter = SyncCounter(monkeypatch)
    per_step = PerStep(counter)
    history = trainer.fit(train, 2, initial_epoch=1, callbacks=[per_step], verbose=0)
    assert len(per_step.syncs) == train.steps_per_epoch == 10
    # one read every log_every_steps (the running loss for the progress bar), none otherwise
    assert per_step.syncs == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0], per_step.syncs
    assert [("loss" in logs) for logs in per_step.logs] == [False, False, False, True] * 2 + [False] * 2
    assert all(logs["size"] == 2 for logs in per_step.logs)
    assert np.isfinite(history[-1]["loss"]) and np.isfinite(history[-1]["train_srcc"])


def test_progress_loss_is_the_running_mean_and_the_epoch_loss_the_mean():
    trainer, train = _trainer(False)
    steps = []

    class Losses(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(logs.get("loss"))

    # the same steps one at a time: the loss of each
    reference, _ = _trainer(False)
    losses = [reference.train_step(x, y) for x, y in train.train_batches(0)]
    trainer.log_every_steps = 5
    history = trainer.fit(train, 1, callbacks=[Losses()], verbose=0)
    assert steps[4] == pytest.approx(np.mean(losses[:5]), rel=1e-6)
    assert steps[9] == pytest.approx(np.mean(losses), rel=1e-6)
    assert history[0]["loss"] == pytest.approx(np.mean(losses), rel=1e-6)


def test_fit_prepares_batches_in_a_background_thread():
    trainer, train = _trainer(False)
    producers = []
    batches = train.train_batches

    def recorded(epoch):
        for batch in batches(epoch):
            producers.append(threading.get_ident())
            yield batch

    train.train_batches = recorded
    trainer.fit(train, 1, verbose=0)
    assert len(producers) == 10 and threading.get_ident() not in producers
    assert len(trainer.batch_waits) == 10 and all(w >= 0 for w in trainer.batch_waits)
    assert not [t for t in threading.enumerate() if t.name == "keras-hyperiqa-prefetch"]


def test_producer_error_surfaces_in_fit():
    from keras_hyperiqa.errors import UserError

    trainer, train = _trainer(False)
    batches = train.train_batches

    def failing(epoch):
        for i, batch in enumerate(batches(epoch)):
            if i == 3:
                raise UserError("img/03.png: cannot read image")
            yield batch

    train.train_batches = failing
    with pytest.raises(UserError, match="03.png"):
        trainer.fit(train, 1, verbose=0)
    assert not [t for t in threading.enumerate() if t.name == "keras-hyperiqa-prefetch"]


def test_train_step_copies_no_host_values_to_the_device(monkeypatch):
    """On CUDA a device tensor made from host data (a numpy batch, a Python
    number in a keras op) is a pageable copy that waits for the device. With
    the batch handed over as a CPU tensor (what the prefetch thread pins on
    CUDA, copied without blocking), the step's own code, the input
    normalisation and the batch norm make none; the one left is Keras's (listed)."""
    import traceback

    import torch

    from keras_hyperiqa.model.hyperiqa import HyperIQA

    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny", patch_size=32)  # batch norm in every block
    model.build((None, 32, 32, 3))
    trainer = Trainer(model, HyperAdam(learning_rate=1e-3, weight_decay=5e-4), strategy=None)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = np.array([20.0, 60.0], "float32")
    x, y = trainer._host_batch((x, y))
    trainer._train_step(torch.from_numpy(x), torch.from_numpy(y))  # warm-up
    copies = []

    def recording(make):
        def made(data, *args, **kwargs):
            if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                ours = [f for f in traceback.extract_stack() if "keras_hyperiqa" in f.filename]
                copies.append((ours[-1].filename.rsplit("/", 1)[-1], ours[-1].name) if ours else None)
            return make(data, *args, **kwargs)
        return made

    monkeypatch.setattr(torch, "as_tensor", recording(torch.as_tensor))
    monkeypatch.setattr(torch, "tensor", recording(torch.tensor))
    trainer._train_step(torch.from_numpy(x), torch.from_numpy(y))
    monkeypatch.undo()
    # Left: Keras's own step counter update (iterations + 1) inside optimizer.apply.
    assert copies == [("trainer.py", "_torch_train_step")], copies


def test_cli_progress_bar_shows_the_logged_running_loss(capsys):
    """The fit command's bar gets the loss only every log_every_steps steps:
    it shows that running mean, never a NaN for the steps without one."""
    from keras_hyperiqa.training.callbacks import EpochProgress

    bar = EpochProgress(steps=6, epochs=1, round_index=0, rounds=1, verbose=1)
    bar.on_epoch_begin(0)
    bar.bar.interval = 0  # draw at every update
    for step in range(6):
        logs = {"size": 4}
        if step % 3 == 2:
            logs["loss"] = 10.0 + step
        bar.on_train_batch_end(step, logs)
    out = capsys.readouterr().out
    assert "nan" not in out.lower(), out
    assert "loss: 15.0000" in out[-200:], out  # the last logged value, as it is


# Host reads of jax arrays, counted inside each step (jax dispatches
# asynchronously on every platform, so a read waits there too).
_JAX_NO_READS = """
import jax, keras, numpy as np
import keras_hyperiqa
from keras_hyperiqa.training.optimizer import HyperAdam
from doubles import ArrayTrainSource, TinyIQA, toy_dataset
from keras_hyperiqa.training.trainer import Trainer

keras.utils.set_random_seed(0)
trainer = Trainer(TinyIQA(batchnorm=True), HyperAdam(learning_rate=1e-2), strategy=None)
images, labels = toy_dataset(n_images=10)
train = ArrayTrainSource(images, labels, patches_per_image=2, batch_size=2, seed=1)
trainer.log_every_steps = 1000  # no progress read inside this epoch
trainer.fit(train, 1, verbose=0)  # compiles


reads = [0]
depth = [0]
cls = type(jax.numpy.ones(()))


def counted(original):
    def read(self, *args, **kwargs):
        if depth[0] == 0 and counting[0]:
            reads[0] += 1
        depth[0] += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            depth[0] -= 1
    return read


for name in ("__array__", "__float__", "__int__", "__bool__", "__index__", "item", "tolist",
             "block_until_ready"):
    setattr(cls, name, counted(getattr(cls, name)))


def counted_numpy(original):
    # numpy reads a CPU jax array through the buffer protocol, not __array__
    def convert(a, *args, **kwargs):
        if isinstance(a, jax.Array):
            return counted(lambda a, *r, **k: original(a, *r, **k))(a, *args, **kwargs)
        return original(a, *args, **kwargs)
    return convert


np.asarray, np.array = counted_numpy(np.asarray), counted_numpy(np.array)
counting = [True]
float(jax.numpy.ones(()) + 1)
np.asarray(jax.numpy.ones(3))
assert reads[0] == 2, reads  # the counter sees reads
counting[0], reads[0] = False, 0
per_step = []


class Count(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        counting[0], reads[0] = True, 0

    def on_train_batch_end(self, batch, logs=None):
        per_step.append(reads[0])
        counting[0] = False


history = trainer.fit(train, 2, initial_epoch=1, callbacks=[Count()], verbose=0)
assert np.isfinite(history[-1]["loss"]) and np.isfinite(history[-1]["train_srcc"])
assert per_step == [0] * 10, per_step
print("NO-READS")
"""


def test_jax_train_step_reads_nothing_back(backend_runner):
    out = backend_runner("jax", _JAX_NO_READS)
    assert "NO-READS" in out


def _cuda():
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs CUDA (torch's own sync detector)")
def test_cuda_train_step_synchronises_at_most_once(recwarn):
    """On a GPU, torch's sync debug mode flags every operation that waits for
    the device; a step (data prefetched and pinned) may wait once at most
    (Keras's step counter)."""
    import warnings

    import torch

    from keras_hyperiqa.model.hyperiqa import HyperIQA

    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="resnet_tiny", patch_size=32)
    model.build((None, 32, 32, 3))
    trainer = Trainer(model, HyperAdam(learning_rate=1e-3, weight_decay=5e-4), strategy=None)
    images, labels = toy_dataset(n_images=8, size=40)
    train = ArrayTrainSource(images, labels * 10, patch=32, patches_per_image=2, batch_size=4, seed=1)
    x, y = trainer._host_batch(next(iter(train.train_batches(0))))
    assert x.is_pinned() and y.is_pinned()
    trainer.log_every_steps = 1000
    trainer.fit(train, 1, verbose=0)
    per_step = []

    class Syncs(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            warnings.simplefilter("always")
            recwarn.clear()
            torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(self, batch, logs=None):
            torch.cuda.set_sync_debug_mode("default")
            per_step.append(sum("synchroniz" in str(w.message) for w in recwarn.list))

    try:
        trainer.fit(train, 2, initial_epoch=1, callbacks=[Syncs()], verbose=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(per_step) == 4 and max(per_step) <= 1, per_step
