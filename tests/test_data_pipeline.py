"""The patch pipeline: crop positions, determinism, decode-once, cache, batches."""

import numpy as np
import pytest
from PIL import Image

import keras_hyperiqa.data.pipeline as pipeline
from keras_hyperiqa.data.pipeline import PatchDataset, grid_offsets
from keras_hyperiqa.errors import UserError


def _images(tmp_path, n=6, size=(260, 240)):
    """n PNGs (W x H = 260 x 240) whose pixels encode (image, row, col) so crops can be located."""
    items = []
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        a = np.stack([yy % 256, xx % 256, np.full_like(yy, i * 10)], axis=-1).astype(np.uint8)
        p = tmp_path / f"im{i}.png"
        Image.fromarray(a).save(p)
        items.append((str(p), float(i)))
    return items


def test_grid_offsets_linspace_rounded():
    offs = grid_offsets(240, 260, 224, 5)
    tops = sorted({t for t, _ in offs})
    lefts = sorted({l for _, l in offs})
    assert tops == [0, 4, 8, 12, 16]
    assert lefts == [0, 9, 18, 27, 36]  # linspace(0, 36, 5) = 0, 9, 18, 27, 36
    assert offs[:3] == [(0, 0), (0, 9), (0, 18)]  # row-major
    assert grid_offsets(384, 512, 224, 3) == [(t, l) for t in (0, 80, 160) for l in (0, 144, 288)]
    # linspace(0, 7, 4) = 0, 2.33, 4.67, 7 -> 0, 2, 5, 7
    assert sorted({t for t, _ in grid_offsets(231, 224, 224, 4)}) == [0, 2, 5, 7]


def test_eval_grid_crops_come_from_those_positions(tmp_path):
    items = _images(tmp_path, n=2)
    ds = PatchDataset(items, train=False, patches_per_image=4, batch_size=3, workers=2)
    xs, idx = zip(*ds.eval_batches())
    x, idx = np.concatenate(xs), np.concatenate(idx)
    assert [len(b) for b in xs] == [3, 3, 2] and ds.eval_steps == 3
    assert idx.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert x.dtype == np.float32 and x.shape == (8, 224, 224, 3)
    # pixel (0, 0) of each crop holds (top % 256, left % 256, 10 * image)
    got = [(int(p[0, 0, 0]), int(p[0, 0, 1]), int(p[0, 0, 2])) for p in x]
    pos = [(0, 0), (0, 36), (16, 0), (16, 36)]
    assert got == [(t, l, 0) for t, l in pos] + [(t, l, 10) for t, l in pos]
    np.testing.assert_array_equal(ds.labels, [0.0, 1.0])


def test_small_image_upscaled_before_grid(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "small.png")
    ds = PatchDataset([(str(tmp_path / "small.png"), 1.0)], train=False, patches_per_image=9, workers=0)
    img = ds.load(0)
    assert img.shape == (224, 336, 3)
    np.testing.assert_array_equal(img, np.asarray(Image.fromarray(a).resize((336, 224), Image.BILINEAR)))
    (x, idx), = list(ds.eval_batches())
    lefts = [0, 56, 112]  # linspace(0, 336 - 224, 3)
    for k, (t, l) in enumerate([(0, l) for l in lefts] * 3):
        np.testing.assert_array_equal(x[k], img[0:224, l:l + 224])


def test_resize_preset_applied(tmp_path):
    items = _images(tmp_path, n=1)
    ds = PatchDataset(items, resize=(512, 384), workers=0)
    assert ds.load(0).shape == (512, 384, 3)
    ds2 = PatchDataset(items, short_side=300, workers=0)
    assert ds2.load(0).shape == (300, 325, 3)


def test_grid_needs_square_count(tmp_path):
    items = _images(tmp_path, n=1)
    with pytest.raises(UserError, match="square number of patches per image"):
        PatchDataset(items, train=False, patches_per_image=10)
    ds = PatchDataset(items, train=False, patches_per_image=10, crops="random", workers=0, seed=4)
    a = np.concatenate([x for x, _ in ds.eval_batches()])
    b = np.concatenate([x for x, _ in ds.eval_batches()])
    assert a.shape[0] == 10 and np.array_equal(a, b)  # random test crops are seeded


def _epoch(ds, epoch):
    xs, ys = zip(*ds.train_batches(epoch))
    return np.concatenate(xs), np.concatenate(ys), [len(b) for b in ys]


def test_train_batches_deterministic_regardless_of_workers(tmp_path):
    items = _images(tmp_path, n=6)
    kw = dict(patches_per_image=5, batch_size=8, seed=3, chunk_images=4)
    x0, y0, sizes = _epoch(PatchDataset(items, workers=0, **kw), 1)
    x4, y4, _ = _epoch(PatchDataset(items, workers=4, **kw), 1)
    np.testing.assert_array_equal(x0, x4)
    np.testing.assert_array_equal(y0, y4)
    assert sizes == [8, 8, 8, 6] and PatchDataset(items, **kw).steps_per_epoch == 4
    assert x0.dtype == np.float32 and x0.shape == (30, 224, 224, 3)
    x_other, _, _ = _epoch(PatchDataset(items, workers=2, **kw), 2)
    assert not np.array_equal(x0, x_other)  # another epoch, other crops
    x_seed, _, _ = _epoch(PatchDataset(items, workers=2, **dict(kw, seed=4)), 1)
    assert not np.array_equal(x0, x_seed)


def test_train_patches_are_crops_or_flipped_crops_with_right_labels(tmp_path):
    items = _images(tmp_path, n=6)
    ds = PatchDataset(items, patches_per_image=5, batch_size=7, workers=2, chunk_images=3)
    x, y, _ = _epoch(ds, 0)
    assert np.bincount(y.astype(int)).tolist() == [5] * 6  # every image, patches_per_image times
    flipped = 0
    for p, label in zip(x.astype(np.uint8), y):
        assert (p[..., 2] == int(label) * 10).all()  # patch from the image its label says
        top, left = int(p[0, 0, 0]), int(p[0, 0, 1])
        rows = p[:, 0, 0].astype(int)
        assert rows.tolist() == [(top + r) % 256 for r in range(224)]
        if p[0, 1, 1] == (left + 1) % 256:
            continue
        flipped += 1  # a horizontally flipped crop: columns run backwards
        assert p[0, 1, 1] == (left - 1) % 256
    assert 0 < flipped < len(x)
    # a batch mixes patches of several images
    first = next(iter(ds.train_batches(0)))[1]
    assert len(set(first.tolist())) > 1


def test_decode_once_per_epoch_and_cache(tmp_path, monkeypatch):
    items = _images(tmp_path, n=5)
    calls = []
    real = pipeline.load_rgb

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(pipeline, "load_rgb", counting)
    ds = PatchDataset(items, patches_per_image=25, batch_size=16, workers=3)
    _epoch(ds, 0)
    assert sorted(calls) == sorted(p for p, _ in items)  # 125 patches, 5 decodes
    calls.clear()
    one_image = 240 * 260 * 3
    cached = PatchDataset(items, patches_per_image=4, batch_size=16, workers=2, cache_bytes=3 * one_image)
    _epoch(cached, 0)
    assert len(calls) == 5 and cached.cache_used_bytes == 3 * one_image
    calls.clear()
    _epoch(cached, 1)
    assert len(calls) == 2  # the three cached images are not decoded again
    calls.clear()
    list(cached.eval_batches())
    assert len(calls) == 2


def test_early_stop_of_iterator_is_clean(tmp_path):
    """Closing the batch generator after one batch shuts its worker pool down:
    its threads end (nothing left decoding the images of later chunks)."""
    import threading

    items = _images(tmp_path, n=6)
    ds = PatchDataset(items, patches_per_image=5, batch_size=4, workers=3, chunk_images=2)
    before = set(threading.enumerate())
    it = ds.train_batches(0)
    x, y = next(it)
    assert x.shape == (4, 224, 224, 3) and len(y) == 4
    workers = [t for t in threading.enumerate() if t not in before]
    assert workers  # the pool is running
    it.close()
    assert not [t for t in workers if t.is_alive()]
    assert list(it) == []


def test_unreadable_image_surfaces_as_user_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    ds = PatchDataset([(str(tmp_path / "bad.png"), 1.0)], workers=2)
    with pytest.raises(UserError, match=r"bad.png: cannot read image"):
        list(ds.train_batches(0))


def test_image_means(tmp_path):
    ds = PatchDataset(_images(tmp_path, n=2), train=False, patches_per_image=4, workers=0)
    np.testing.assert_allclose(ds.image_means([1, 2, 3, 4, 5, 5, 5, 5], [0, 0, 0, 0, 1, 1, 1, 1]), [2.5, 5.0])


def test_uint8_batches_hold_the_same_values(tmp_path):
    items = _images(tmp_path, n=3)
    kw = dict(patches_per_image=3, batch_size=4, seed=1, workers=2)
    xf, yf, _ = _epoch(PatchDataset(items, **kw), 0)
    xu, yu, _ = _epoch(PatchDataset(items, dtype="uint8", **kw), 0)
    assert xu.dtype == np.uint8
    np.testing.assert_array_equal(xu.astype(np.float32), xf)
    np.testing.assert_array_equal(yu, yf)


def test_data_room_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, keras_hyperiqa.data.pipeline, keras_hyperiqa.data.readers, keras_hyperiqa.data.validate, "
            "keras_hyperiqa.data.splits, keras_hyperiqa.data.demo; "
            "print([m for m in ('keras', 'torch', 'jax', 'tensorflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _prefetch_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "keras-hyperiqa-prefetch" and t.is_alive()]


def test_prefetch_yields_the_same_batches_in_the_same_order(tmp_path):
    import threading

    items = _images(tmp_path, n=6)
    ds = PatchDataset(items, patches_per_image=5, batch_size=8, seed=3, chunk_images=4, workers=2)
    direct = list(ds.train_batches(1))
    producers = set()

    def mark(batch):
        producers.add(threading.get_ident())
        return batch

    fetched = list(pipeline.prefetch(ds.train_batches(1), depth=2, transform=mark))
    assert len(fetched) == len(direct) == 4
    for (x0, y0), (x1, y1) in zip(direct, fetched):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert producers and threading.get_ident() not in producers  # prepared off the consumer's thread
    assert not _prefetch_threads()


def test_prefetch_runs_ahead_by_at_most_depth(tmp_path):
    import time

    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    with pipeline.Prefetcher(source(), depth=2) as items:
        assert next(items) == 0
        deadline = time.monotonic() + 10
        # item 0 consumed, 1 and 2 queued, 3 made and waiting for room
        while len(produced) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert len(produced) == 4
        assert list(items) == list(range(1, 20))
        assert len(items.waits) == 20
    assert not _prefetch_threads()


def test_prefetch_producer_exception_surfaces_in_the_consumer(tmp_path):
    closed = []

    def source():
        try:
            yield 1
            yield 2
            raise UserError("labels.csv row 3: not a number")
        finally:
            closed.append(True)

    got = []
    with pytest.raises(UserError, match="row 3: not a number"):
        for item in pipeline.prefetch(source()):
            got.append(item)
    assert got == [1, 2] and closed == [True] and not _prefetch_threads()

    (tmp_path / "bad.png").write_bytes(b"nope")
    ds = PatchDataset([(str(tmp_path / "bad.png"), 1.0)], workers=2)
    with pytest.raises(UserError, match=r"bad.png: cannot read image"):
        list(pipeline.prefetch(ds.train_batches(0)))
    assert not _prefetch_threads()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError, None])
def test_prefetch_consumer_stop_shuts_the_producer_down(tmp_path, stop):
    closed = []

    def source():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.append(True)

    def consume():
        for item in pipeline.prefetch(source(), depth=3):
            if item == 5:
                if stop is None:
                    break
                raise stop("step failed")

    if stop is None:
        consume()
    else:
        with pytest.raises(stop):
            consume()
    assert closed == [True]  # the source generator was closed (its pool shut down)
    assert not _prefetch_threads()

    items = _images(tmp_path, n=6)
    ds = PatchDataset(items, patches_per_image=5, batch_size=4, workers=3, chunk_images=2)
    fetch = pipeline.Prefetcher(ds.train_batches(0), depth=2)
    next(fetch)
    fetch.close()
    assert not _prefetch_threads()
