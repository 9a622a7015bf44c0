"""Data-parallel training on the engines that exist: jax sharding and torch.distributed.

One *strategy* object is handed to :class:`~keras_hyperiqa.training.trainer.Trainer`
(or installed with :func:`set_current`, which ``Trainer`` picks up by
default); the trainer asks it to place or slice each global batch, to
reduce gradients, and to gather predictions. The optimizer is the same single
:class:`HyperAdam` as on one device: its multipliers, the schedule callback
and the never-rebuilt slots behave exactly as there, because every replica
applies the same averaged gradient to the same state.

jax (:class:`JaxDataParallel`)
    ``keras.distribution.DataParallel`` over all local devices (or a device
    list / 1-D ``DeviceMesh``), installed with
    ``keras.distribution.set_distribution`` *before the model is built*, so
    Keras creates every model and optimizer variable replicated. Each global
    batch is placed with the distribution's data layout
    (``distribution.get_data_layout(shape)``), the way Keras's own
    ``JAXTrainer._distribute_data`` does (``make_array_from_process_local_data``,
    so on several hosts each process passes its contiguous slice). The
    jit-compiled step is the single-device step; XLA inserts the gradient
    all-reduce, and the state outputs are pinned to the variables' (replicated)
    shardings as Keras's trainer does. The computation is the global-batch
    computation: BatchNorm statistics are over the *global* batch (no
    difference to one device). A batch whose size does not divide by the
    device count (an epoch's last, partial batch) is placed replicated and
    computed whole on every device: still exact, only slower. Multi-host: run
    one process per host after ``keras.distribution.initialize()`` (see the
    README); process 0 writes the run directory.

torch (:class:`TorchDataParallel`)
    ``torch.distributed`` with one process per device, launched by
    ``torchrun`` (nccl when each rank has a GPU of its own, gloo otherwise:
    :func:`torch_process_group_backend`). Every rank builds the same model
    from the same seed; the model and optimizer state are broadcast from
    rank 0 at construction (as ``DistributedDataParallel`` does). Each rank
    takes the contiguous slice ``shard_bounds(B, rank, world)`` of every
    global batch, computes its loss and ``torch.autograd.grad``, then the
    gradients are **all-reduced as flattened buckets** (``bucket_cap_mb``, 25
    MB like DDP) with ``torch.distributed.all_reduce`` and applied with
    ``optimizer.apply`` identically on every rank.

    Why not ``DistributedDataParallel`` itself (or its communication hooks):
    DDP's reducer fires from the autograd hooks of ``nn.Parameter.grad``
    accumulation during ``loss.backward()`` on a wrapped ``nn.Module``; the
    Keras model is not trained through ``module.forward``/``.backward`` here
    (the step uses ``torch.autograd.grad``, which DDP documents as
    unsupported), so the hooks would never fire. The bucketed all-reduce is
    the same collective DDP issues, without the overlap with the backward
    pass. A second reason: DDP averages per-rank gradients with equal weights,
    which is wrong when the shards differ in size (an epoch's partial last
    batch); here each rank contributes ``n_rank * grad_rank`` and the sum is
    divided by the global ``N`` (the counts and the loss travel in the same
    bucket), so the gradient and the reported loss are those of the global
    batch mean, for any batch size.

    BatchNorm: each rank normalises with the statistics of its *local* shard
    in training mode (like DDP without SyncBatchNorm), so with BatchNorm the
    result is not that of one device on the global batch. The moving
    statistics (all non-trainable model variables) are broadcast from rank 0
    after every step, as DDP's ``broadcast_buffers=True`` does, so all ranks
    hold and save identical state. Without BatchNorm in training mode,
    ``world`` ranks compute the single-device step on the global batch up to
    float summation order.

    Evaluation: the eval batches are dealt round-robin to the ranks, and the
    per-patch scores gathered with ``all_gather_object``; every rank gets the
    same metrics (so model selection agrees), and only rank 0 writes files
    (:func:`is_primary`). The run directory must be on a filesystem every rank
    can read (always so on one node): resume reads the checkpoint on all
    ranks, after a :func:`barrier`.
"""

from __future__ import annotations

import os

import numpy as np

from keras_hyperiqa.errors import UserError

_CURRENT = None


# ------------------------------------------------------------------ registry
def current():
    """The strategy installed with :func:`set_current` (``None``: one device)."""
    return _CURRENT


def set_current(strategy):
    """Install ``strategy`` as the default for new ``Trainer``\\ s; returns it."""
    global _CURRENT
    _CURRENT = strategy
    return strategy


def is_primary():
    """True in the process that writes files: rank 0 / jax process 0 / a single process."""
    return True if _CURRENT is None else _CURRENT.is_primary


def barrier():
    """Wait for every process (no-op on one process)."""
    if _CURRENT is not None:
        _CURRENT.barrier()


def world_size():
    """Number of data-parallel replicas (devices on jax, ranks on torch)."""
    return 1 if _CURRENT is None else _CURRENT.num_replicas


def shard_bounds(n, index, count):
    """``(lo, hi)`` of the contiguous slice ``index`` of ``count`` over ``n`` items.

    Sizes differ by at most one (the first ``n % count`` slices are one
    longer); with ``n`` divisible by ``count`` every slice has ``n // count``.
    """
    base, extra = divmod(int(n), int(count))
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def check_batch_size(batch_size, strategy=None):
    """UserError unless the global batch divides by the number of replicas."""
    strategy = strategy if strategy is not None else _CURRENT
    if strategy is None:
        return
    n = strategy.num_replicas
    if int(batch_size) % n:
        raise UserError(
            f"--batch-size {batch_size} must divide by the number of data-parallel "
            f"replicas ({n}); e.g. --batch-size {max(n, int(batch_size) // n * n)}"
        )


# ---------------------------------------------------------------------- torch
class TorchDataParallel:
    """torch.distributed data parallelism for the custom loop (see module doc).

    Args:
        bucket_cap_mb: size of one gradient all-reduce bucket (DDP's default 25).

    The default process group must be initialised (:func:`init_torch_from_env`
    does it from ``torchrun``'s environment).
    """

    backend = "torch"

    def __init__(self, bucket_cap_mb=25):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised (run under torchrun)")
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.bucket_bytes = int(bucket_cap_mb * (1 << 20))

    @property
    def num_replicas(self):
        return self.world_size

    @property
    def is_primary(self):
        return self.rank == 0

    def barrier(self):
        self.dist.barrier()

    # data
    def local_slice(self, n):
        return shard_bounds(n, self.rank, self.world_size)

    def local_batch(self, x, y):
        lo, hi = self.local_slice(len(y))
        return x[lo:hi], y[lo:hi]

    # gradients
    def _buckets(self, tensors):
        buckets, current, size = [], [], 0
        for i, t in enumerate(tensors):
            nbytes = t.numel() * 4
            if current and size + nbytes > self.bucket_bytes:
                buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        buckets.append(current)
        return buckets

    def reduce_gradients(self, grads, loss, count):
        """Global-batch-mean gradients and loss from this rank's local ones.

        ``grads``/``loss`` are means over this rank's ``count`` patches.
        Returns ``(grads, loss, total_count)``, ``loss`` and ``total_count``
        as 0-d tensors on the gradients' device; every rank gets the same.
        """
        import torch

        dist = self.dist
        count_t = float(count)
        buckets = self._buckets(grads)
        out = [None] * len(grads)
        flats = []
        for b, idx in enumerate(buckets):
            parts = [grads[i].detach().reshape(-1).to(torch.float32) * count_t for i in idx]
            if b == len(buckets) - 1:
                loss_t = torch.as_tensor(loss, dtype=torch.float32).detach().reshape(1)
                parts.append(loss_t.to(parts[0].device if parts else loss_t.device) * count_t)
                parts.append(torch.full((1,), count_t, dtype=torch.float32,
                                        device=parts[0].device))
            flat = torch.cat(parts)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flats.append(flat)
        # device scalars: reading them would wait for the step
        total = flats[-1][-1]
        global_loss = flats[-1][-2] / total
        for idx, flat in zip(buckets, flats):
            offset = 0
            for i in idx:
                g = grads[i]
                n = g.numel()
                # empty_like keeps the gradient's memory order (see
                # model.layout.use_torch_kernel_layout)
                out[i] = torch.empty_like(g).copy_(
                    (flat[offset:offset + n] / total).reshape(g.shape))
                offset += n
        return out, global_loss, total

    # state
    def _broadcast(self, variables):
        import torch

        variables = list(variables)
        if not variables:
            return
        by_dtype = {}
        for v in variables:
            by_dtype.setdefault(v.value.dtype, []).append(v)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([v.value.detach().reshape(-1) for v in group])
                self.dist.broadcast(flat, src=0)
                offset = 0
                for v in group:
                    n = v.value.numel()
                    v.value.copy_(flat[offset:offset + n].reshape(v.value.shape))
                    offset += n

    def broadcast_state(self, model, optimizer):
        """Make every rank hold rank 0's model and optimizer variables."""
        self._broadcast(list(model.variables) + list(optimizer.variables))

    def after_step(self, model):
        """Broadcast rank 0's non-trainable model variables (BatchNorm statistics)."""
        self._broadcast(model.non_trainable_variables)

    # gathering
    def gather_objects(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def owns_eval_batch(self, index):
        return index % self.world_size == self.rank


def torch_process_group_backend(cuda_available, device_count, local_rank, local_world_size):
    """``(backend, cuda_index)`` for one torchrun rank.

    ``"nccl"`` on GPU ``local_rank`` when every rank on this node has a GPU of
    its own (nccl refuses two ranks on one GPU). Otherwise ``"gloo"``: on a
    machine with fewer GPUs than local ranks the ranks share them round-robin
    (GPU ``local_rank % device_count``; gloo reduces through the host), and on
    a machine without CUDA ``cuda_index`` is ``None``.
    """
    count = int(device_count) if cuda_available else 0
    if count >= max(1, int(local_world_size)):
        return "nccl", int(local_rank)
    if count > 0:
        return "gloo", int(local_rank) % count
    return "gloo", None


def init_torch_from_env():
    """Initialise the default process group from torchrun's environment.

    ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT`` (``env://``); nccl when each local rank
    has its own GPU, gloo otherwise (:func:`torch_process_group_backend`);
    ``torch.cuda.set_device`` picks this rank's GPU, so that Keras's default
    ``"cuda"`` device is it (call this before any tensor is created).
    Returns a :class:`TorchDataParallel`, installed as current.
    """
    import torch
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise UserError(
            "--distribute on the torch backend needs torchrun: "
            "torchrun --nproc-per-node N -m keras_hyperiqa fit ..."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        backend, index = torch_process_group_backend(
            cuda, torch.cuda.device_count() if cuda else 0, local_rank, local_world)
        if index is not None:
            torch.cuda.set_device(index)
        if backend == "nccl":
            dist.init_process_group("nccl", device_id=torch.device("cuda", index))
        else:
            dist.init_process_group("gloo")
    return set_current(TorchDataParallel())


# ------------------------------------------------------------------------ jax
class JaxDataParallel:
    """``keras.distribution.DataParallel`` for the custom loop (see module doc).

    Args:
        devices: jax devices (default: all, ``keras.distribution.list_devices()``).
        device_mesh: a 1-D ``keras.distribution.DeviceMesh`` instead of ``devices``.

    Installs the distribution globally: build the model *after* this.
    """

    backend = "jax"

    def __init__(self, devices=None, device_mesh=None):
        import jax
        import keras

        self.jax = jax
        self.distribution = keras.distribution.DataParallel(
            device_mesh=device_mesh, devices=devices)
        keras.distribution.set_distribution(self.distribution)

    @property
    def num_replicas(self):
        return int(self.distribution.device_mesh.devices.size)

    @property
    def is_primary(self):
        return self.jax.process_index() == 0

    def barrier(self):
        if self.jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("keras_hyperiqa")

    def _layout(self, shape, replicated=False):
        from jax.sharding import NamedSharding, PartitionSpec

        layout = self.distribution.get_data_layout(shape).backend_layout
        if replicated:
            layout = NamedSharding(layout.mesh, PartitionSpec())
        return layout

    def place(self, *arrays):
        """Global jax arrays for a global batch, sharded along axis 0.

        Like Keras's ``_distribute_data``: ``make_array_from_process_local_data``
        with the distribution's data layout; on several processes each passes
        its contiguous slice. A batch that does not divide by the device count
        is replicated instead (every device computes it whole: exact).
        """
        jax = self.jax
        n = int(np.shape(arrays[0])[0])
        replicated = n % self.num_replicas != 0
        procs, index = jax.process_count(), jax.process_index()
        out = []
        for a in arrays:
            a = np.asarray(a)
            if not replicated and procs > 1:
                lo, hi = shard_bounds(n, index, procs)
                a = a[lo:hi]
            out.append(jax.make_array_from_process_local_data(
                self._layout(np.shape(a) if replicated else (n,) + np.shape(a)[1:], replicated), a,
                global_shape=None if replicated else (n,) + np.shape(a)[1:]))
        return out

    def to_numpy(self, array):
        """A (possibly multi-host) jax array as one host numpy array."""
        if getattr(array, "is_fully_addressable", True):
            return np.asarray(array)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def init_jax(devices=None):
    """Data parallelism over all devices of all processes; installed as current.

    When ``KERAS_DISTRIBUTION_NUM_PROCESSES`` (or jax's own coordinator
    variables) is set, ``keras.distribution.initialize()`` runs first.
    """
    import keras

    if int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1") or 1) > 1:
        keras.distribution.initialize()
    return set_current(JaxDataParallel(devices=devices))


def setup(backend):
    """``--distribute``: the strategy for ``backend`` (``"torch"`` or ``"jax"``)."""
    if backend == "jax":
        return init_jax()
    return init_torch_from_env()
