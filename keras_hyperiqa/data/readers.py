"""Readers: a dataset root, exactly as distributed, to a list of records.

Each reader reads the label file(s) of one public IQA dataset and returns a
``DatasetInfo``. Rows whose label cannot be parsed become ``Problem``s (file
and row/line named) instead of records; image files are not opened here (see
``validate``). Missing roots, label files or required columns raise
``UserError`` at once since nothing can be read without them.

| name    | label file(s) under root                              | label          | higher is better |
|---------|--------------------------------------------------------|----------------|------------------|
| live    | dmos_realigned.mat, refnames_all.mat (release 2)       | DMOS           | no               |
| csiq    | csiq_label.txt                                         | DMOS 0-1       | no               |
| tid2013 | mos_with_names.txt                                     | MOS 0-9        | yes              |
| livec   | Data/AllImages_release.mat, Data/AllMOS_release.mat    | MOS ~0-100     | yes              |
| koniq   | koniq10k_scores_and_distributions.csv (+ _sets.csv)    | MOS_zscore     | yes              |
| bid     | DatabaseGrades.xlsx                                    | MOS 0-5        | yes              |
| kadid   | dmos.csv                                               | "dmos" 1-5 (*) | yes              |
| spaq    | MOS and Image attribute scores.xlsx                    | MOS 0-100      | yes              |
| csv     | any CSV with header image,label[,ref]                  | as given       | yes (option)     |

(*) KADID-10k calls its score DMOS but it is a mean opinion score on 1-5
where the pristine references score highest.

``ref`` (the split-grouping key) is the reference content for LIVE, CSIQ,
TID2013 and KADID, the image name for the in-the-wild sets, and the ``ref``
column (else the image path) for the generic CSV.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from keras_hyperiqa.data.records import DatasetInfo, Problem, Record
from keras_hyperiqa.errors import UserError
from keras_hyperiqa.names import DATASETS

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
LIVEC_SKIP = 7
KONIQ_SCORES = "koniq10k_scores_and_distributions.csv"
KONIQ_SETS = "koniq10k_distributions_sets.csv"
KONIQ_SET_NAMES = {"training": "train", "train": "train", "validation": "val", "val": "val", "test": "test"}
SPAQ_XLSX = "MOS and Image attribute scores.xlsx"

_PRESET = object()


# ---------------------------------------------------------------- helpers


class _Problems(list):
    def add(self, file, row, reason, row_kind="row"):
        self.append(Problem(file, row, reason, None, row_kind))


def _parse_label(value, file, row, problems, row_kind="row", what="label"):
    """float(value) if it is a finite number, else record a problem and return None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.add(file, row, f"{what} is missing", row_kind)
        return None
    if isinstance(value, bool):
        problems.add(file, row, f"{what} {value!r} is not a number", row_kind)
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        problems.add(file, row, f"{what} {str(value)!r} is not a number", row_kind)
        return None
    if not math.isfinite(number):
        problems.add(file, row, f"{what} {str(value).strip()!r} is not a finite number", row_kind)
        return None
    return number


class _Resolver:
    """Join names onto a folder, falling back to a case-insensitive match."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lower = None

    def __call__(self, name: str) -> str:
        path = self.folder / name
        if path.exists():
            return str(path)
        if self._lower is None:
            try:
                self._lower = {p.lower(): p for p in os.listdir(self.folder)}
            except OSError:
                self._lower = {}
        head, _, tail = name.replace("\\", "/").rpartition("/")
        if not head and name.lower() in self._lower:
            return str(self.folder / self._lower[name.lower()])
        return str(path)


def _require_file(root: Path, names, dataset: str) -> Path:
    for name in names:
        path = root / name
        if path.is_file():
            return path
    expected = " or ".join(repr(str(n)) for n in names)
    raise UserError(f"{root}: label file {expected} not found (needed for dataset '{dataset}')")


def _image_dir(root: Path, candidates, fallback_root: bool = True) -> Path:
    """The first candidate folder that exists; else root (lenient sets) or the canonical folder."""
    for name in candidates:
        folder = root / name
        if folder.is_dir():
            return folder
    return root if fallback_root else root / candidates[0]


def _read_csv(path: Path, required):
    """(header, [(row_number, dict)]) with row 1 = header; UserError on missing columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise UserError(f"{path.name}: the file is empty (expected a header row)") from None
            missing = [c for c in required if c not in header]
            if missing:
                raise UserError(
                    f"{path.name}: missing required column(s) {', '.join(repr(c) for c in missing)}"
                    f" (found: {', '.join(header) or 'nothing'})"
                )
            rows = []
            for values in reader:
                if not values or all(not v.strip() for v in values):
                    continue
                row = {h: (values[i] if i < len(values) else None) for i, h in enumerate(header)}
                rows.append((reader.line_num, row))
    except UnicodeDecodeError as err:
        raise UserError(f"{path.name}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise UserError(f"{path.name}: not a valid CSV file ({err})") from None
    return header, rows


def _read_xlsx(path: Path):
    """[(row_number, tuple_of_values)] of the active sheet, row 1 first."""
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises many types for broken files
        raise UserError(f"{path.name}: cannot read spreadsheet ({type(err).__name__}: {err})") from None
    try:
        ws = wb.active
        return [(i, tuple(r)) for i, r in enumerate(ws.iter_rows(values_only=True), start=1)]
    finally:
        wb.close()


def _loadmat(path: Path, key: str):
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:
        raise UserError(f"{path.name}: cannot read MATLAB file ({err})") from None
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path.name}: no variable '{key}' (found: {found or 'nothing'})")
    return mat[key]


def _mat_strings(arr):
    """Flatten a MATLAB cell array / char array of names to Python strings."""
    import numpy as np

    out = []
    arr = np.asarray(arr)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.ravel()]
    for item in arr.ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item).strip())
    return out


def _mat_numbers(arr):
    import numpy as np

    return [v for v in np.asarray(arr, dtype=object).ravel()]


# ---------------------------------------------------------------- readers


def _read_live(root: Path, label_column, csv_path):
    dmos_file = _require_file(root, ["dmos_realigned.mat"], "live")
    names_file = _require_file(root, ["refnames_all.mat"], "live")
    dmos = _mat_numbers(_loadmat(dmos_file, "dmos_new"))
    orgs = _mat_numbers(_loadmat(dmos_file, "orgs"))
    refnames = _mat_strings(_loadmat(names_file, "refnames_all"))
    expected = sum(n for _, n in LIVE_FOLDERS)
    for what, seq, fname in (("dmos_new", dmos, dmos_file), ("orgs", orgs, dmos_file), ("refnames_all", refnames, names_file)):
        if len(seq) != expected:
            raise UserError(
                f"{fname.name}: '{what}' has {len(seq)} entries, expected {expected} (LIVE release 2:"
                f" {', '.join(f'{d} {n}' for d, n in LIVE_FOLDERS)})"
            )
    paths = [root / d / f"img{i}.bmp" for d, n in LIVE_FOLDERS for i in range(1, n + 1)]
    problems = _Problems()
    records = []
    for i, (path, value, org, ref) in enumerate(zip(paths, dmos, orgs, refnames)):
        try:
            is_org = float(org) == 1
        except (TypeError, ValueError):
            is_org = False
        if is_org:  # the undistorted copies of the references: dropped, as in the original
            continue
        label = _parse_label(value, dmos_file.name, i + 1, problems, "entry")
        if label is None:
            continue
        records.append(Record(str(path), label, ref, dmos_file.name, i + 1, "entry"))
    return records, problems, None


def _read_two_column_file(label_file: Path, resolve, image_first: bool, ref_of):
    """Records of a whitespace-separated label file: ``<image> <label>`` or ``<label> <image>``."""
    expected = "'<image> <dmos>'" if image_first else "'<mos> <image>'"
    problems = _Problems()
    records = []
    with open(label_file, encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            words = line.split()
            if not words:
                continue
            if len(words) != 2:
                problems.add(label_file.name, lineno, f"expected {expected}, got {line.strip()!r}", "line")
                continue
            name, value = words if image_first else words[::-1]
            label = _parse_label(value, label_file.name, lineno, problems, "line")
            if label is None:
                continue
            records.append(Record(resolve(name), label, ref_of(name), label_file.name, lineno, "line"))
    return records, problems, None


def _read_csiq(root: Path, label_column, csv_path):
    label_file = _require_file(root, ["csiq_label.txt"], "csiq")
    resolve = _Resolver(_image_dir(root, ["dst_imgs_all"], fallback_root=False))

    def ref_of(name):  # 1600.AWGN.1.png -> 1600.png
        parts = name.split(".")
        return parts[0] + "." + parts[-1]

    return _read_two_column_file(label_file, resolve, True, ref_of)


def _read_tid2013(root: Path, label_column, csv_path):
    label_file = _require_file(root, ["mos_with_names.txt"], "tid2013")
    resolve = _Resolver(_image_dir(root, ["distorted_images"], fallback_root=False))
    return _read_two_column_file(label_file, resolve, False,
                                 lambda name: name.split("_")[0].upper())  # i01_01_1.bmp -> I01


def _read_livec(root: Path, label_column, csv_path):
    data = root / "Data" if (root / "Data").is_dir() else root
    names_file = _require_file(data, ["AllImages_release.mat"], "livec")
    mos_file = _require_file(data, ["AllMOS_release.mat"], "livec")
    names = _mat_strings(_loadmat(names_file, "AllImages_release"))
    mos = _mat_numbers(_loadmat(mos_file, "AllMOS_release"))
    if len(names) != len(mos):
        raise UserError(
            f"{mos_file.name}: {len(mos)} scores but {names_file.name} lists {len(names)} images"
        )
    resolve = _Resolver(_image_dir(root, ["Images"], fallback_root=False))
    problems = _Problems()
    records = []
    # The first 7 entries are the challenge's training images (Images/trainingImages/); skipped as in the original.
    for i in range(LIVEC_SKIP, len(names)):
        label = _parse_label(mos[i], mos_file.name, i + 1, problems, "entry")
        if label is None:
            continue
        if not names[i]:
            problems.add(names_file.name, i + 1, "empty image name", "entry")
            continue
        records.append(Record(resolve(names[i]), label, names[i], mos_file.name, i + 1, "entry"))
    return records, problems, None


def _read_koniq(root: Path, label_column, csv_path):
    label_column = label_column or "MOS_zscore"
    if csv_path is not None:
        scores = Path(csv_path)
        if not scores.is_file():
            raise UserError(f"{scores}: label file not found")
    else:
        scores = _require_file(root, [KONIQ_SCORES, KONIQ_SETS], "koniq")
    _, rows = _read_csv(scores, ["image_name", label_column])
    resolve = _Resolver(_image_dir(root, ["1024x768", "512x384"]))
    problems = _Problems()
    records = []
    sets = {}
    has_set = "set" in rows[0][1] if rows else False
    for lineno, row in rows:
        name = (row.get("image_name") or "").strip()
        if not name:
            problems.add(scores.name, lineno, "empty image_name")
            continue
        label = _parse_label(row.get(label_column), scores.name, lineno, problems, what=label_column)
        if label is None:
            continue
        if has_set:
            sets[name] = (row.get("set") or "").strip()
        records.append(Record(resolve(name), label, name, scores.name, lineno))

    official = None
    sets_file = root / KONIQ_SETS
    if not has_set and sets_file.is_file() and sets_file != scores:
        _, set_rows = _read_csv(sets_file, ["image_name", "set"])
        sets = {(r.get("image_name") or "").strip(): (r.get("set") or "").strip() for _, r in set_rows}
        has_set = True
    if has_set:
        official = {"train": [], "val": [], "test": []}
        for i, rec in enumerate(records):
            part = KONIQ_SET_NAMES.get(sets.get(rec.ref, "").lower())
            if part is not None:
                official[part].append(i)
    return records, problems, official


def _read_bid(root: Path, label_column, csv_path):
    xlsx = _require_file(root, ["DatabaseGrades.xlsx"], "bid")
    resolve = _Resolver(_image_dir(root, ["ImageDatabase"]))
    problems = _Problems()
    records = []
    for rowno, values in _read_xlsx(xlsx):
        if rowno == 1:  # header
            continue
        num = values[0] if len(values) > 0 else None
        mos = values[1] if len(values) > 1 else None
        if num is None and mos is None:
            break  # the original reads rows 2..587; stop at the first empty row
        try:
            number = int(float(num))
            if number != float(num):
                raise ValueError
        except (TypeError, ValueError):
            problems.add(xlsx.name, rowno, f"image number {num!r} is not an integer")
            continue
        label = _parse_label(mos, xlsx.name, rowno, problems, what="MOS")
        if label is None:
            continue
        name = "DatabaseImage%04d.JPG" % number
        records.append(Record(resolve(name), label, name, xlsx.name, rowno))
    return records, problems, None


def _read_kadid(root: Path, label_column, csv_path):
    label_column = label_column or "dmos"
    label_file = Path(csv_path) if csv_path else _require_file(root, ["dmos.csv"], "kadid")
    _, rows = _read_csv(label_file, ["dist_img", "ref_img", label_column])
    resolve = _Resolver(_image_dir(root, ["images"], fallback_root=False))
    problems = _Problems()
    records = []
    for lineno, row in rows:
        name = (row.get("dist_img") or "").strip()
        ref = (row.get("ref_img") or "").strip()
        if not name or not ref:
            problems.add(label_file.name, lineno, "empty dist_img or ref_img")
            continue
        label = _parse_label(row.get(label_column), label_file.name, lineno, problems, what=label_column)
        if label is None:
            continue
        records.append(Record(resolve(name), label, ref, label_file.name, lineno))
    return records, problems, None


def _read_spaq(root: Path, label_column, csv_path):
    label_column = label_column or "MOS"
    xlsx = _require_file(root, [SPAQ_XLSX, Path("Annotations") / SPAQ_XLSX], "spaq")
    rows = _read_xlsx(xlsx)
    if not rows:
        raise UserError(f"{xlsx.name}: the sheet is empty (expected a header row)")
    header = [str(v).strip() if v is not None else "" for v in rows[0][1]]
    missing = [c for c in ("Image name", label_column) if c not in header]
    if missing:
        raise UserError(
            f"{xlsx.name}: missing required column(s) {', '.join(repr(c) for c in missing)}"
            f" (found: {', '.join(h for h in header if h) or 'nothing'})"
        )
    name_col, label_col = header.index("Image name"), header.index(label_column)
    resolve = _Resolver(_image_dir(root, ["TestImage"]))
    problems = _Problems()
    records = []
    for rowno, values in rows[1:]:
        if all(v is None for v in values):
            continue
        name = values[name_col] if name_col < len(values) else None
        name = str(name).strip() if name is not None else ""
        if not name:
            problems.add(xlsx.name, rowno, "empty 'Image name'")
            continue
        value = values[label_col] if label_col < len(values) else None
        label = _parse_label(value, xlsx.name, rowno, problems, what=label_column)
        if label is None:
            continue
        records.append(Record(resolve(name), label, name, xlsx.name, rowno))
    return records, problems, None


def _read_csv_dataset(root: Path, label_column, csv_path):
    label_column = label_column or "label"
    if csv_path is not None:
        label_file = Path(csv_path)
        if not label_file.is_absolute() and not label_file.exists():
            label_file = root / label_file
        if not label_file.is_file():
            raise UserError(f"{label_file}: label file not found")
    elif root.is_file():
        label_file = root
    else:
        label_file = _require_file(root, ["labels.csv"], "csv")
    base = label_file.parent
    header, rows = _read_csv(label_file, ["image", label_column])
    has_ref = "ref" in header
    problems = _Problems()
    records = []
    for lineno, row in rows:
        name = (row.get("image") or "").strip()
        if not name:
            problems.add(label_file.name, lineno, "empty image path")
            continue
        label = _parse_label(row.get(label_column), label_file.name, lineno, problems, what=label_column)
        if label is None:
            continue
        ref = (row.get("ref") or "").strip() if has_ref else ""
        path = Path(name) if os.path.isabs(name) else base / name
        records.append(Record(str(path), label, ref or name, label_file.name, lineno))
    return records, problems, None


_READERS = {
    "live": _read_live,
    "csiq": _read_csiq,
    "tid2013": _read_tid2013,
    "livec": _read_livec,
    "koniq": _read_koniq,
    "bid": _read_bid,
    "kadid": _read_kadid,
    "spaq": _read_spaq,
    "csv": _read_csv_dataset,
}


def read_dataset(
    name: str,
    root,
    label_column: str | None = None,
    csv_path=None,
    higher_is_better: bool | None = None,
    resize=_PRESET,
    short_side=_PRESET,
) -> DatasetInfo:
    """Read dataset ``name`` (one of ``DATASETS``) from ``root``.

    ``label_column`` picks the score column where the label file has several
    (KonIQ: ``MOS_zscore`` default, or ``MOS``; KADID: ``dmos``; SPAQ: ``MOS``;
    generic CSV: ``label``). ``csv_path`` points the generic reader (and KonIQ,
    KADID) at a label file elsewhere; for ``csv`` relative image paths are taken
    relative to the CSV's folder. ``higher_is_better`` overrides the dataset's
    direction (needed for generic CSVs of DMOS). ``resize`` / ``short_side``
    override the preset.
    """
    key = str(name).lower()
    if key not in _READERS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise UserError(f"{root_path}: dataset root does not exist")
    if key != "csv" and not root_path.is_dir():
        raise UserError(f"{root_path}: dataset root is not a folder")
    records, problems, official = _READERS[key](root_path, label_column, csv_path)
    if not records and not problems:
        raise UserError(f"{root_path}: dataset '{key}' has no rows in its label file")
    facts = DATASETS[key]
    info_root = root_path.parent if root_path.is_file() else root_path
    return DatasetInfo(
        name=key,
        root=str(info_root),
        records=records,
        higher_is_better=facts.higher_is_better if higher_is_better is None else bool(higher_is_better),
        resize=facts.resize if resize is _PRESET else (tuple(resize) if resize else None),
        official_split=official,
        problems=list(problems),
        short_side=facts.short_side if short_side is _PRESET else short_side,
    )
