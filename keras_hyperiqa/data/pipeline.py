"""The patch pipeline: batches of 224x224 crops, decoding each image once per epoch.

The original HyperIQA repeats every image ``patch_num`` times in its sample
list and decodes the whole file again for each of its 25 patches. Here an
epoch walks a seeded permutation of the images in chunks; a thread pool
(PIL releases the GIL while decoding) decodes each image of a chunk once,
applies the preset resize, upscales it if it is smaller than the patch, and
draws all of its crop positions; the chunk's patches (plus the leftover of the
previous chunk) are shuffled together and cut into batches, so a batch mixes
patches of many images. Crops are copied once, straight from the decoded
image into the ``float32`` batch (in the worker threads). Memory stays
bounded: the decoded images of two chunks (this one and the look-ahead) plus
the batches of one chunk; nothing holds an epoch's patches.

Determinism: every random number is drawn from ``default_rng([seed, epoch])``
in the main thread (image order, one child seed per image, the in-chunk
shuffles), and each image's crops and flips come from its own child seed, so
the batches depend on ``(seed, epoch)`` only, never on the number of workers.

Training crops: ``patches_per_image`` random ``patch_size`` crops per image per
epoch, each flipped horizontally with probability 1/2. Test crops: either a
deterministic ``k x k`` grid (``k = sqrt(patches_per_image)``) whose top/left
offsets are ``numpy.linspace(0, H - patch, k).round()`` (same for W), or, as
in the original, seeded random crops without flips.

An optional cache keeps decoded (resized) ``uint8`` images in memory as long
as their total size stays under ``cache_bytes``, so later epochs skip decoding.

Batches are numpy: ``x`` float32 (B, P, P, 3) (or uint8, ``dtype='uint8'``) with values 0..255 (channels
last, not normalised), ``y`` float32 (B,) for training or ``image_index``
int64 (B,) for evaluation. Nothing here imports keras, torch or jax.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from keras_hyperiqa.data.images import ensure_min_side, load_rgb, resize_hw, resize_short_side
from keras_hyperiqa.data.records import Record
from keras_hyperiqa.errors import UserError

_EVAL_STREAM = 0x5EED_E7A1


def grid_offsets(height: int, width: int, patch: int, k: int) -> list[tuple[int, int]]:
    """The k*k (top, left) offsets of the test grid, row-major.

    ``tops = numpy.linspace(0, height - patch, k).round()`` and likewise for
    ``width``; the image must be at least ``patch`` on both sides (see
    ``images.ensure_min_side``).
    """
    if k < 1:
        raise UserError(f"grid size must be at least 1, got {k}")
    if height < patch or width < patch:
        raise UserError(f"image {height}x{width} is smaller than the {patch} patch; upscale it first")
    tops = np.linspace(0, height - patch, k).round().astype(int)
    lefts = np.linspace(0, width - patch, k).round().astype(int)
    return [(int(t), int(l)) for t in tops for l in lefts]


class _Inline:
    """Executor stand-in for workers=0: runs each job at submit time."""

    def submit(self, fn, *args):
        fut = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # delivered at .result(), like a thread pool
            fut.set_exception(err)
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        pass



def check_grid_count(count, option, alternative):
    """UserError unless ``count`` crops make a k x k grid; ``option`` and
    ``alternative`` name the user's options (``--patches``, ``--crops random``)."""
    if count < 0 or math.isqrt(count) ** 2 != count:
        raise UserError(f"{option} {count} must be a square number for grid crops "
                        f"(a k x k grid: 1, 4, 9, 16, 25, ...), or use {alternative}")


class PatchDataset:
    """Patches of a list of images for training (random crops + flips) or testing.

    ``items``: ``Record``s or ``(path, label)`` pairs. ``resize`` (H, W) or
    ``short_side`` apply the dataset preset before cropping; images smaller
    than ``patch_size`` are upscaled (bilinear, keeping aspect) until the short
    side equals it. ``crops`` picks the test crops: ``'grid'`` (default,
    ``patches_per_image`` must be a perfect square) or ``'random'``.
    ``workers`` threads decode in parallel (0 = in the calling thread);
    ``chunk_images`` images are decoded and their patches shuffled together.
    ``dtype='uint8'`` yields uint8 batches (same values) for a training loop
    that casts on the accelerator: a quarter of the host memory traffic.
    """

    def __init__(
        self,
        items,
        patch_size: int = 224,
        patches_per_image: int = 25,
        resize: tuple[int, int] | None = None,
        train: bool = True,
        crops: str = "grid",
        seed: int = 0,
        batch_size: int = 96,
        cache_bytes: int = 0,
        workers: int | None = None,
        short_side: int | None = None,
        flip: bool = True,
        chunk_images: int | None = None,
        drop_last: bool = False,
        dtype="float32",
    ):
        paths, labels = [], []
        for item in items:
            if isinstance(item, Record):
                paths.append(item.path)
                labels.append(item.label)
            else:
                paths.append(str(item[0]))
                labels.append(float(item[1]))
        if not paths:
            raise UserError("no images to make patches from (empty image list)")
        if patch_size < 1 or patches_per_image < 1 or batch_size < 1:
            raise UserError("patch_size, patches_per_image and batch_size must be positive")
        if crops not in ("grid", "random"):
            raise UserError(f"test crops must be 'grid' or 'random', got {crops!r}")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.float32)
        self.patch_size = int(patch_size)
        self.patches_per_image = int(patches_per_image)
        self.resize = tuple(int(v) for v in resize) if resize else None
        self.short_side = int(short_side) if short_side else None
        self.train = bool(train)
        self.crops = crops
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cache_bytes = int(cache_bytes or 0)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
        self.flip = bool(flip)
        self.chunk_images = int(chunk_images) if chunk_images else max(16, math.ceil(4 * self.batch_size / self.patches_per_image))
        self.drop_last = bool(drop_last)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
            raise UserError(f"batch dtype must be float32 or uint8, got {dtype}")
        self._cache: dict[int, np.ndarray] = {}
        self._cache_used = 0
        self._lock = threading.Lock()
        if not self.train and crops == "grid":
            self.grid_k  # raises for a non-square count

    # ------------------------------------------------------------ basics

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def grid_k(self) -> int:
        k = math.isqrt(self.patches_per_image)
        if k * k != self.patches_per_image:
            raise UserError(
                f"grid test crops need a square number of patches per image (4, 9, 16, 25, ...),"
                f" got {self.patches_per_image}; use crops='random' or change the count"
            )
        return k

    @property
    def steps_per_epoch(self) -> int:
        total = len(self.paths) * self.patches_per_image
        return total // self.batch_size if self.drop_last else math.ceil(total / self.batch_size)

    @property
    def eval_steps(self) -> int:
        return math.ceil(len(self.paths) * self.patches_per_image / self.batch_size)

    @property
    def cache_used_bytes(self) -> int:
        return self._cache_used

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` decoded, preset-resized and upscaled to at least the patch size (uint8 HxWx3)."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        img = load_rgb(self.paths[i])
        if self.resize is not None:
            img = resize_hw(img, self.resize)
        elif self.short_side is not None:
            img = resize_short_side(img, self.short_side)
        img = ensure_min_side(img, self.patch_size)
        if self.cache_bytes > 0:
            with self._lock:
                if self._cache_used + img.nbytes <= self.cache_bytes and i not in self._cache:
                    img.setflags(write=False)
                    self._cache[i] = img
                    self._cache_used += img.nbytes
        return img

    def _executor(self):
        return ThreadPoolExecutor(max_workers=self.workers) if self.workers > 0 else _Inline()

    # ------------------------------------------------------------ training

    def _assemble(self, specs) -> np.ndarray:
        """Cut the crops ``specs`` = [(image, top, left, flip)] straight into a float32 batch."""
        p = self.patch_size
        out = np.empty((len(specs), p, p, 3), dtype=self.dtype)
        for k, (img, t, l, f) in enumerate(specs):
            crop = img[t:t + p, l:l + p]
            out[k] = crop[:, ::-1] if f else crop
        return out

    def _train_job(self, i: int, image_seed: int):
        img = self.load(i)
        h, w = img.shape[:2]
        p, n = self.patch_size, self.patches_per_image
        rng = np.random.default_rng(image_seed)
        tops = rng.integers(0, h - p + 1, size=n)
        lefts = rng.integers(0, w - p + 1, size=n)
        flips = (rng.random(n) < 0.5) & self.flip
        return [(img, int(t), int(l), bool(f)) for t, l, f in zip(tops, lefts, flips)]

    def train_batches(self, epoch: int = 0):
        """Yield ``(x, y)`` batches for ``epoch``: deterministic in (seed, epoch)."""
        n, bs = len(self.paths), self.batch_size
        rng = np.random.default_rng([self.seed, int(epoch)])
        order = rng.permutation(n)
        image_seeds = rng.integers(0, 2**63 - 1, size=n)
        chunk = self.chunk_images
        pool = self._executor()
        pending: deque = deque()
        submitted = 0
        carry: list = []  # (spec, label) of patches not yet batched; holds only image references
        try:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                while submitted < min(n, stop + chunk):  # this chunk plus one chunk of look-ahead
                    pending.append(pool.submit(self._train_job, int(order[submitted]), int(image_seeds[submitted])))
                    submitted += 1
                patches = carry
                for j in range(start, stop):
                    label = self.labels[order[j]]
                    patches += [(spec, label) for spec in pending.popleft().result()]
                perm = rng.permutation(len(patches))
                full = len(patches) // bs
                if stop == n and not self.drop_last and len(patches) % bs:
                    full += 1  # the last, partial batch
                jobs = []
                for b in range(full):
                    sel = [patches[k] for k in perm[b * bs:(b + 1) * bs]]
                    ys = np.array([y for _, y in sel], dtype=np.float32)
                    jobs.append((pool.submit(self._assemble, [spec for spec, _ in sel]), ys))
                carry = [patches[k] for k in perm[full * bs:]]
                for fut, ys in jobs:
                    yield fut.result(), ys
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------ evaluation

    def test_offsets(self, i: int, height: int, width: int) -> list[tuple[int, int]]:
        """The (top, left) test crops of image ``i`` once prepared to ``height`` x ``width``."""
        p = self.patch_size
        if self.crops == "grid":
            return grid_offsets(height, width, p, self.grid_k)
        rng = np.random.default_rng([self.seed, _EVAL_STREAM, int(i)])
        tops = rng.integers(0, height - p + 1, size=self.patches_per_image)
        lefts = rng.integers(0, width - p + 1, size=self.patches_per_image)
        return [(int(t), int(l)) for t, l in zip(tops, lefts)]

    def _eval_job(self, i: int):
        img = self.load(i)
        return [(img, t, l, False) for t, l in self.test_offsets(i, img.shape[0], img.shape[1])]

    def eval_batches(self):
        """Yield ``(x, image_index)`` batches over every image's test crops, in image order."""
        if self.crops == "grid":
            self.grid_k
        n, bs = len(self.paths), self.batch_size
        lookahead = max(2 * self.workers, 4)
        pool = self._executor()
        pending: deque = deque()
        submitted = 0
        buf: list = []
        try:
            for i in range(n):
                while submitted < min(n, i + 1 + lookahead):
                    pending.append(pool.submit(self._eval_job, submitted))
                    submitted += 1
                buf += [(spec, i) for spec in pending.popleft().result()]
                while len(buf) >= bs or (i == n - 1 and buf):
                    sel, buf = buf[:bs], buf[bs:]
                    yield self._assemble([spec for spec, _ in sel]), np.array([k for _, k in sel], dtype=np.int64)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, epoch: int = 0):
        """``train_batches(epoch)`` for a training set, ``eval_batches()`` otherwise."""
        return self.train_batches(epoch) if self.train else self.eval_batches()

    def image_means(self, patch_scores, image_index) -> np.ndarray:
        """:func:`image_means` over this dataset's images (all must have been scored)."""
        return image_means(patch_scores, image_index, len(self.paths))


def image_means(patch_scores, image_index, num_images=None) -> np.ndarray:
    """Each image's score: the plain mean of its patches' scores, as the original evaluates.

    Args:
        patch_scores: (P,) scores of all evaluated patches.
        image_index: (P,) int index of the image each patch comes from (the
            second item of :meth:`PatchDataset.eval_batches`).
        num_images: number of images (default ``max(image_index) + 1``).

    Returns:
        (num_images,) float64 per-image means.

    Raises:
        ValueError: if an image has no patch, or an index is out of range.
    """
    scores = np.asarray(patch_scores, dtype=np.float64).reshape(-1)
    index = np.asarray(image_index).reshape(-1).astype(np.int64)
    if scores.shape != index.shape:
        raise ValueError(f"{scores.shape[0]} patch scores but {index.shape[0]} image indices")
    if num_images is None:
        num_images = int(index.max()) + 1 if index.size else 0
    counts = np.bincount(index, minlength=num_images)
    if len(counts) > num_images:
        raise ValueError("image index out of range")
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"images without any patch score: {missing}...")
    return np.bincount(index, weights=scores, minlength=num_images) / counts


class _Raised:
    """An exception raised by the producer, carried to the consumer."""

    def __init__(self, error):
        self.error = error


_END = object()


class Prefetcher:
    """Iterates ``batches`` in a background thread, ``depth`` items ahead.

    The next batches are decoded, cropped (and ``transform``\\ ed, e.g. pinned
    for an asynchronous host-to-device copy) while the consumer's step runs.
    One producer thread and a FIFO queue: the consumer gets exactly the items
    of ``batches``, in the same order. An exception in the producer (or in
    ``transform``) is raised in the consumer at the item where it happened.
    When the consumer stops early (``close()``, ``break`` out of a ``for``
    loop on a generator wrapping this, an exception or ``KeyboardInterrupt``
    in the consumer's step), the producer stops after its current item and
    closes ``batches`` in its own thread, so a ``PatchDataset`` generator
    shuts its decode pool down.

    ``waits``: the seconds the consumer waited for each item it received (the
    input stall of a training step; near zero when the pipeline keeps up).
    """

    def __init__(self, batches, depth: int = 2, transform=None):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._source = batches
        self._transform = transform
        self._queue = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._done = False
        self.waits: list[float] = []
        self._thread = threading.Thread(target=self._produce, name="keras-hyperiqa-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self):
        iterator = iter(self._source)
        try:
            for item in iterator:
                if self._transform is not None:
                    item = self._transform(item)
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - delivered to the consumer
            self._put(_Raised(err))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        item = self._queue.get()
        if item is _END:
            self._finish()
            raise StopIteration
        if isinstance(item, _Raised):
            self._finish()
            raise item.error
        self.waits.append(time.perf_counter() - start)
        return item

    def _finish(self):
        self._done = True
        self._thread.join()

    def close(self):
        """Stop the producer (after its current item) and wait for it."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        if not self._done:
            self._stop.set()


def prefetch(batches, depth: int = 2, transform=None, waits: list | None = None):
    """Yield the items of ``batches``, prepared ``depth`` ahead in a background thread.

    A generator over a :class:`Prefetcher` that stops the producer however
    the consumer ends (exhausted, ``break``, an exception or
    ``KeyboardInterrupt``). See :class:`Prefetcher` for the guarantees.
    ``waits``: a list that receives the consumer's wait for each item.
    """
    with Prefetcher(batches, depth, transform) as items:
        if waits is not None:
            items.waits = waits
        yield from items
