"""Seeded train / validation / test splits that keep reference content on one side.

``make_splits`` groups records by ``Record.ref`` (reference content for LIVE,
CSIQ, TID2013, KADID; the image itself for in-the-wild sets, whose ref is the
image name), shuffles the groups with ``numpy.random.default_rng([seed,
round])`` and puts the first ``round(train_fraction * groups)`` in train (the
original: 80%, 10 rounds, but unseeded). ``val_fraction`` of the train groups
(rounded, at least one when > 0 and possible) is held out for model selection,
so the test part stays untouched. Indices in each part are sorted.

``save_splits`` writes the exact partition as JSON (indices plus the image
paths relative to the dataset root) beside the results; ``load_splits`` reads it
back and checks it against the dataset, so a run can be repeated exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from keras_hyperiqa.atomic import write_atomic
from keras_hyperiqa.data.records import DatasetInfo, Record
from keras_hyperiqa.errors import UserError

FORMAT = "keras-hyperiqa-splits"
VERSION = 1


@dataclass
class Split:
    train: list[int]
    val: list[int]
    test: list[int]
    round: int
    seed: int
    source: str = field(default="random")  # "random" or "official"

    def parts(self):
        return {"train": self.train, "val": self.val, "test": self.test}


def _groups(records, group_by_ref: bool):
    order: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        key = rec.ref if group_by_ref else f"#{i}"
        order.setdefault(key, []).append(i)
    return list(order.values())


def make_splits(
    records: list[Record],
    rounds: int = 1,
    seed: int = 0,
    train_fraction: float = 0.8,
    val_fraction: float = 0.1,
    group_by_ref: bool = True,
) -> list[Split]:
    """``rounds`` seeded splits of ``records`` (see module doc)."""
    if not 0.0 < train_fraction < 1.0:
        raise UserError(f"train fraction must be between 0 and 1 (exclusive), got {train_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if rounds < 1:
        raise UserError(f"rounds must be at least 1, got {rounds}")
    groups = _groups(records, group_by_ref)
    g = len(groups)
    if g < 2:
        raise UserError(f"cannot split {g} reference group(s) into train and test; need at least 2")
    n_train = min(max(int(round(train_fraction * g)), 1), g - 1)
    n_val = 0
    if val_fraction > 0:
        n_val = int(round(val_fraction * n_train))
        n_val = min(max(n_val, 1), n_train - 1) if n_train >= 2 else 0
    splits = []
    for r in range(rounds):
        rng = np.random.default_rng([int(seed), r])
        perm = rng.permutation(g)
        val_g, train_g, test_g = perm[:n_val], perm[n_val:n_train], perm[n_train:]

        def flat(sel):
            return sorted(i for k in sel for i in groups[k])

        splits.append(Split(flat(train_g), flat(val_g), flat(test_g), r, int(seed)))
    return splits


def official_split(info: DatasetInfo) -> Split:
    """The split shipped with the dataset (KonIQ-10k's training / validation / test)."""
    if not info.official_split:
        raise UserError(
            f"dataset '{info.name}' at {info.root} has no official split"
            + (" (koniq10k_distributions_sets.csv with its 'set' column not found)" if info.name == "koniq" else "")
        )
    o = info.official_split
    return Split(sorted(o.get("train", [])), sorted(o.get("val", [])), sorted(o.get("test", [])), 0, 0, "official")


def save_splits(path, splits: list[Split], info: DatasetInfo) -> None:
    """Write ``splits`` as JSON, atomically (temp file + ``os.replace``)."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": info.name,
        "root": str(info.root),
        "n_images": len(info.records),
        "images": [info.relpath(r) for r in info.records],
        "splits": [
            {"round": s.round, "seed": s.seed, "source": s.source, "train": list(map(int, s.train)),
             "val": list(map(int, s.val)), "test": list(map(int, s.test))}
            for s in splits
        ],
    }
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def load_splits(path, info: DatasetInfo) -> list[Split]:
    """Read splits saved by ``save_splits`` and map them onto ``info``'s records.

    The saved image list must name the same images as ``info`` (order may
    differ: indices are remapped by path); anything else is a ``UserError``.
    """
    name = os.path.basename(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: split file not found") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{name}: cannot read split file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{name}: not a keras-hyperiqa split file (no \"format\": \"{FORMAT}\")")
    try:
        images = [str(p) for p in data["images"]]
        raw = data["splits"]
    except (KeyError, TypeError):
        raise UserError(f"{name}: split file lacks 'images' or 'splits'") from None
    current = [info.relpath(r) for r in info.records]
    where = {p: i for i, p in enumerate(current)}
    missing = [p for p in images if p not in where]
    if missing:
        raise UserError(
            f"{name}: {len(missing)} image(s) of the saved split are not in dataset '{info.name}'"
            f" at {info.root} (first: {missing[0]})"
        )
    extra = len(set(current) - set(images))
    if extra:
        raise UserError(
            f"{name}: dataset '{info.name}' at {info.root} has {extra} image(s) that the saved split does not list"
        )
    remap = [where[p] for p in images]
    out = []
    for k, s in enumerate(raw):
        try:
            parts = {part: sorted(remap[int(i)] for i in s[part]) for part in ("train", "val", "test")}
            out.append(Split(parts["train"], parts["val"], parts["test"], int(s["round"]), int(s["seed"]),
                             str(s.get("source", "random"))))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise UserError(f"{name}: split {k} is malformed ({type(err).__name__}: {err})") from None
    return out
