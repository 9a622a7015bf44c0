"""Splits: grouped by reference, seeded, saved and reloaded exactly."""

import json

import pytest

from keras_hyperiqa.data.readers import read_dataset
from keras_hyperiqa.data.records import DatasetInfo, Record
from keras_hyperiqa.data.splits import load_splits, make_splits, official_split, save_splits
from keras_hyperiqa.errors import UserError


def _grouped(n_refs=30, per_ref=7, root="/data/x"):
    recs = [Record(f"{root}/r{r}_{k}.png", float(r + k), f"ref{r}") for r in range(n_refs) for k in range(per_ref)]
    return DatasetInfo("csiq", root, recs, False)


def _refs(info, idx):
    return {info.records[i].ref for i in idx}


@pytest.mark.parametrize("n_refs", [29, 30, 25, 81])  # LIVE, CSIQ, TID2013, KADID reference counts
def test_no_reference_on_both_sides(n_refs):
    info = _grouped(n_refs, per_ref=3)
    for s in make_splits(info.records, rounds=10, seed=3):
        tr, va, te = _refs(info, s.train), _refs(info, s.val), _refs(info, s.test)
        assert not (tr & te) and not (tr & va) and not (va & te)
        assert sorted(s.train + s.val + s.test) == list(range(len(info.records)))
        n_train_refs = round(0.8 * n_refs)
        assert len(tr) + len(va) == n_train_refs
        assert len(va) == round(0.1 * n_train_refs)


def test_real_reader_refs_are_grouped(tmp_path):
    lines = [f"{ref}.{t}.{lv}.png 0.{lv}" for ref in ("1600", "boston", "cactus", "child", "fisher")
             for t in ("AWGN", "JPEG") for lv in (1, 2)]
    (tmp_path / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    info = read_dataset("csiq", tmp_path)
    for s in make_splits(info.records, rounds=5, seed=1, val_fraction=0):
        assert not (_refs(info, s.train) & _refs(info, s.test))
        assert len(_refs(info, s.train)) == 4 and s.val == []


def test_same_seed_same_split_different_seed_different_split():
    info = _grouped()
    a = make_splits(info.records, rounds=3, seed=7)
    b = make_splits(info.records, rounds=3, seed=7)
    c = make_splits(info.records, rounds=3, seed=8)
    assert [s.test for s in a] == [s.test for s in b]
    assert [s.train for s in a] == [s.train for s in b]
    assert a[0].test != c[0].test
    assert a[0].test != a[1].test  # rounds differ from each other too


def test_by_image_when_not_grouped():
    info = _grouped(n_refs=2, per_ref=50)
    s = make_splits(info.records, seed=0, group_by_ref=False, val_fraction=0)[0]
    assert len(s.train) == 80 and len(s.test) == 20


def test_save_and_reload_same_split(tmp_path):
    info = _grouped(root=str(tmp_path))
    splits = make_splits(info.records, rounds=4, seed=11)
    path = tmp_path / "results" / "splits.json"
    save_splits(path, splits, info)
    data = json.loads(path.read_text())
    assert data["images"][0] == "r0_0.png" and len(data["splits"]) == 4
    assert load_splits(path, info) == splits
    assert not list((tmp_path / "results").glob("*.tmp*"))
    # order of records may change (e.g. re-read with another reader version): remapped by path
    shuffled = DatasetInfo("csiq", info.root, info.records[::-1], False)
    again = load_splits(path, shuffled)
    assert [{shuffled.records[i].path for i in s.test} for s in again] == \
           [{info.records[i].path for i in s.test} for s in splits]


def test_reload_mismatch_is_user_error(tmp_path):
    info = _grouped(root=str(tmp_path))
    path = tmp_path / "splits.json"
    save_splits(path, make_splits(info.records), info)
    fewer = DatasetInfo("csiq", info.root, info.records[:-1], False)
    with pytest.raises(UserError, match=r"splits.json: 1 image\(s\) of the saved split are not in dataset 'csiq'"):
        load_splits(path, fewer)
    more = DatasetInfo("csiq", info.root, info.records + [Record(f"{tmp_path}/new.png", 1.0, "n")], False)
    with pytest.raises(UserError, match=r"has 1 image\(s\) that the saved split does not list"):
        load_splits(path, more)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"^bad.json: cannot read split file"):
        load_splits(tmp_path / "bad.json", info)


def test_official_split():
    info = _grouped(n_refs=4, per_ref=1)
    info.official_split = {"train": [0, 2], "val": [3], "test": [1]}
    s = official_split(info)
    assert (s.train, s.val, s.test, s.source) == ([0, 2], [3], [1], "official")
    info.official_split = None
    info.name = "koniq"
    with pytest.raises(UserError, match="has no official split"):
        official_split(info)


def test_bad_fractions():
    info = _grouped()
    with pytest.raises(UserError, match="train fraction"):
        make_splits(info.records, train_fraction=1.0)
    with pytest.raises(UserError, match="need at least 2"):
        make_splits(_grouped(n_refs=1).records)


def test_validation_is_carved_from_train_and_leaves_test_unchanged():
    """With or without a validation part, the test split is the same (comparable to the original)."""
    info = _grouped()
    with_val = make_splits(info.records, rounds=3, seed=5, val_fraction=0.1)
    without = make_splits(info.records, rounds=3, seed=5, val_fraction=0)
    for a, b in zip(with_val, without):
        assert a.test == b.test and a.val
        assert sorted(a.train + a.val) == b.train
