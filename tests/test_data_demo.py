"""The embedded demo dataset: generated once, deterministic, readable, split by scene."""

import hashlib

import numpy as np

from keras_hyperiqa.data import demo
from keras_hyperiqa.data.readers import read_dataset
from keras_hyperiqa.data.splits import make_splits
from keras_hyperiqa.data.validate import validate


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_demo_root_generates_once_and_reads_as_csv(tmp_path):
    root = demo.demo_root(tmp_path / "demo")
    info = read_dataset("csv", root)
    n = demo.N_SCENES * (1 + len(demo.DISTORTIONS) * demo.LEVELS)
    assert len(info.records) == n == 504
    assert validate(info) == []
    refs = {r.ref for r in info.records}
    assert len(refs) == demo.N_SCENES
    labels = {r.path.rsplit("/", 1)[-1]: r.label for r in info.records}
    for kind in demo.DISTORTIONS:
        mos = [labels["scene05.png"]] + [labels[f"scene05_{kind}{lv}.png"] for lv in range(1, 6)]
        assert all(a > b for a, b in zip(mos, mos[1:])) and 0 <= mos[-1] and mos[0] <= 100
    for s in make_splits(info.records, rounds=3):
        train = {info.records[i].ref for i in s.train + s.val}
        assert not train & {info.records[i].ref for i in s.test}
    stamp = (root / "labels.csv").stat().st_mtime_ns
    assert demo.demo_root(tmp_path / "demo") == root  # reused, not rebuilt
    assert (root / "labels.csv").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name != "demo"]  # no temp folders left


def test_generation_is_deterministic_and_distortions_differ(tmp_path):
    a = demo.generate(tmp_path / "a", seed=5, n_scenes=2)
    b = demo.generate(tmp_path / "b", seed=5, n_scenes=2)
    c = demo.generate(tmp_path / "c", seed=6, n_scenes=2)
    assert _digest(a) == _digest(b) != _digest(c)
    scene = demo.make_scene(0, 0)
    rng = np.random.default_rng(0)
    for kind in demo.DISTORTIONS:
        d1 = demo.distort(scene, kind, 1, rng).astype(float)
        d5 = demo.distort(scene, kind, 5, rng).astype(float)
        e1, e5 = np.abs(d1 - scene).mean(), np.abs(d5 - scene).mean()
        assert 0 < e1 < e5, kind  # stronger level, larger change


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HYPERIQA_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == tmp_path / "demo-v1"
    assert demo.default_cache_dir(3) == tmp_path / "demo-v1-seed3"
