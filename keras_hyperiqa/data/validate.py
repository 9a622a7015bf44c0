"""Validate a dataset before training and report every problem at once.

``validate(info)`` returns the problems the reader found (unparsable labels)
plus, per record: image file missing, image header that PIL cannot decode,
non-finite label, and duplicate rows (the same image listed twice; the later
row is the problem). Image headers are checked in a thread pool with
``PIL.Image.open`` (which parses the header only) so 10k images take seconds.

``validated(info, skip_invalid)`` raises one ``UserError`` listing all the
problems unless ``skip_invalid`` is set, in which case the bad records are
dropped (and listed in ``report_path``, e.g. ``dropped.txt`` in the run dir).
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from PIL import Image

from keras_hyperiqa.atomic import write_atomic
from keras_hyperiqa.data.records import DatasetInfo, Problem
from keras_hyperiqa.errors import UserError

__all__ = ["Problem", "validate", "validated", "check_image_header"]


def check_image_header(path: str) -> str | None:
    """None if ``path`` exists and PIL can parse its header with a non-empty size, else the reason."""
    if not os.path.exists(path):
        return f"image not found: {path}"
    if os.path.isdir(path):
        return f"image path is a folder: {path}"
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.UnidentifiedImageError:
        return f"cannot decode image header (not an image PIL can identify): {path}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"cannot decode image header ({err}): {path}"
    if w <= 0 or h <= 0:
        return f"image has an empty size {w}x{h}: {path}"
    return None


def validate(info: DatasetInfo, check_images: bool = True, workers: int | None = None) -> list[Problem]:
    """Every problem with ``info`` (the reader's and per-record ones), sorted by file and row."""
    problems: list[Problem] = list(info.problems)
    per_record: dict[int, list[str]] = {}

    first_seen: dict[str, int] = {}
    for i, rec in enumerate(info.records):
        if not isinstance(rec.label, (int, float)) or not math.isfinite(rec.label):
            per_record.setdefault(i, []).append(f"label {rec.label!r} is not a finite number")
        key = os.path.normcase(os.path.abspath(rec.path))
        if key in first_seen:
            j = first_seen[key]
            other = info.records[j]
            where = f"{other.row_kind} {other.row}" if other.row is not None else f"record {j}"
            per_record.setdefault(i, []).append(f"duplicate of {where} (same image {os.path.basename(rec.path)})")
        else:
            first_seen[key] = i

    if check_images and info.records:
        workers = workers or min(16, (os.cpu_count() or 2) * 4)
        paths = [r.path for r in info.records]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, reason in enumerate(pool.map(check_image_header, paths, chunksize=64)):
                if reason is not None:
                    per_record.setdefault(i, []).append(reason)

    for i in sorted(per_record):
        for reason in per_record[i]:
            problems.append(Problem.for_record(info.records[i], reason, index=i))
    # one report in file order: reader problems and record problems interleaved by row
    problems.sort(key=lambda p: (p.file, p.row if p.row is not None else -1))
    return problems


def drop_records(info: DatasetInfo, drop: set[int]) -> DatasetInfo:
    """A copy of ``info`` without the records at indices ``drop`` (official split remapped)."""
    keep = [i for i in range(len(info.records)) if i not in drop]
    new_index = {old: new for new, old in enumerate(keep)}
    official = None
    if info.official_split is not None:
        official = {k: [new_index[i] for i in v if i in new_index] for k, v in info.official_split.items()}
    return replace(info, records=[info.records[i] for i in keep], official_split=official, problems=[])


def validated(
    info: DatasetInfo,
    skip_invalid: bool = False,
    report_path=None,
    check_images: bool = True,
) -> DatasetInfo:
    """``info`` if it has no problems; else raise, or (``skip_invalid``) drop and report them."""
    problems = validate(info, check_images=check_images)
    if not problems:
        return info
    n = len(problems)
    if not skip_invalid:
        shown = problems[:200]
        more = [f"... and {n - len(shown)} more"] if n > len(shown) else []
        raise UserError(
            "\n".join(
                [f"dataset '{info.name}' at {info.root}: {n} problem{'s' if n != 1 else ''} found;"
                 " fix them, or drop them with --skip-invalid"]
                + [f"  {p}" for p in shown]
                + more
            )
        )
    drop = {p.index for p in problems if p.index is not None}
    out = drop_records(info, drop)
    if not out.records:
        raise UserError(f"dataset '{info.name}' at {info.root}: every row is invalid, nothing left to train on")
    if report_path is not None:
        header = (
            f"# {n} problem(s) in dataset '{info.name}' at {info.root};"
            f" {len(drop)} record(s) dropped, {len(info.problems)} unreadable row(s) skipped\n"
        )
        write_atomic(report_path, header + "".join(f"{p}\n" for p in problems))
    where = f"; the list is in {report_path}" if report_path is not None else ""
    print(f"dataset '{info.name}': skipped {len(drop)} invalid record(s) of {len(info.records)} "
          f"and {len(info.problems)} unreadable row(s){where}", file=sys.stderr, flush=True)
    return out
