"""Plain data types shared by the data room: records, dataset info, problems.

Nothing here imports keras, torch or jax.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    """One labelled image.

    ``path`` is the image file (absolute or relative to the working directory),
    ``label`` its quality score as distributed (see ``DatasetInfo.higher_is_better``),
    ``ref`` the content id used to group splits: the reference image for
    synthetic-distortion sets (LIVE, CSIQ, TID2013, KADID), the image name for
    in-the-wild sets. ``source`` / ``row`` say where the record came from (label
    file name and its 1-based row/line) so problems can be reported precisely;
    they take no part in equality.
    """

    path: str
    label: float
    ref: str
    source: str = field(default="", compare=False)
    row: int | None = field(default=None, compare=False)
    row_kind: str = field(default="row", compare=False)


class Problem(str):
    """One problem with the input, printable as one line.

    ``str(problem)`` is e.g. ``koniq10k_scores_and_distributions.csv row 17:
    label 'abc' is not a number``. It is a ``str`` subclass so lists of problems
    can be joined and printed directly; ``file``, ``row``, ``reason`` and
    ``index`` (the record index it concerns, ``None`` when the row never became
    a record) are attributes.
    """

    file: str
    row: int | None
    reason: str
    index: int | None
    row_kind: str

    def __new__(cls, file, row, reason, index=None, row_kind="row"):
        file = str(file)
        if row is None:
            text = f"{file}: {reason}"
        else:
            text = f"{file} {row_kind} {row}: {reason}"
        obj = super().__new__(cls, text)
        obj.file = file
        obj.row = row
        obj.reason = reason
        obj.index = index
        obj.row_kind = row_kind
        return obj

    @classmethod
    def for_record(cls, record: Record, reason: str, index: int | None = None):
        return cls(record.source or record.path, record.row, reason, index, record.row_kind)


@dataclass
class DatasetInfo:
    """A dataset read from disk.

    ``records`` in label-file order; ``higher_is_better`` says whether a larger
    label means better quality (False for DMOS sets: LIVE, CSIQ);
    ``resize`` the (H, W) preprocessing preset or None; ``official_split`` maps
    ``'train'``, ``'val'``, ``'test'`` to record indices where the dataset ships
    one (KonIQ-10k); ``problems`` the rows that could not become records
    (unparsable labels, ...), each a ``Problem``.
    """

    name: str
    root: str
    records: list[Record]
    higher_is_better: bool
    resize: tuple[int, int] | None = None
    official_split: dict[str, list[int]] | None = None
    problems: list[Problem] = field(default_factory=list)
    short_side: int | None = None

    def __len__(self):
        return len(self.records)

    def relpath(self, record: Record) -> str:
        """The record's image path relative to the dataset root, '/'-separated."""
        try:
            rel = os.path.relpath(record.path, self.root)
        except ValueError:  # different drives on Windows
            rel = record.path
        return rel.replace(os.sep, "/")
