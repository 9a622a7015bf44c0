"""Bad input: every problem reported at once with file and row, or dropped and listed."""

import csv

import numpy as np
import openpyxl
import pytest
import scipy.io
from PIL import Image

from keras_hyperiqa.data.readers import read_dataset
from keras_hyperiqa.data.validate import validate, validated
from keras_hyperiqa.errors import UserError


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)


def _koniq(tmp_path):
    d = tmp_path / "1024x768"
    for n in ("ok1.jpg", "ok2.jpg", "dup.jpg"):
        _png(d / n)
    (d / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    rows = [
        ("ok1.jpg", "55.0"),     # row 2
        ("abc.jpg", "abc"),      # row 3: not a number
        ("missing.jpg", "40"),   # row 4: file missing
        ("broken.jpg", "41"),    # row 5: undecodable
        ("dup.jpg", "42"),       # row 6
        ("dup.jpg", "43"),       # row 7: duplicate of row 6
        ("nan.jpg", "nan"),      # row 8: not finite
        ("ok2.jpg", "60"),       # row 9
        ("inf.jpg", "inf"),      # row 10
        ("empty.jpg", ""),       # row 11
    ]
    with open(tmp_path / "koniq10k_scores_and_distributions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "MOS", "MOS_zscore"])
        for name, z in rows:
            w.writerow([name, 1, z])
    return read_dataset("koniq", tmp_path)


EXPECTED = [
    "koniq10k_scores_and_distributions.csv row 3: MOS_zscore 'abc' is not a number",
    "koniq10k_scores_and_distributions.csv row 4: image not found: {d}/missing.jpg",
    "koniq10k_scores_and_distributions.csv row 5: cannot decode image header (not an image PIL can identify): {d}/broken.jpg",
    "koniq10k_scores_and_distributions.csv row 7: duplicate of row 6 (same image dup.jpg)",
    "koniq10k_scores_and_distributions.csv row 8: MOS_zscore 'nan' is not a finite number",
    "koniq10k_scores_and_distributions.csv row 10: MOS_zscore 'inf' is not a finite number",
    "koniq10k_scores_and_distributions.csv row 11: MOS_zscore is missing",
]


def test_every_problem_reported_with_file_and_row(tmp_path):
    info = _koniq(tmp_path)
    d = tmp_path / "1024x768"
    problems = validate(info)
    assert [str(p) for p in problems] == [e.format(d=d) for e in EXPECTED]
    p = problems[0]
    assert (p.file, p.row, p.reason) == ("koniq10k_scores_and_distributions.csv", 3, "MOS_zscore 'abc' is not a number")


def test_training_refused_without_skip_invalid(tmp_path):
    info = _koniq(tmp_path)
    with pytest.raises(UserError) as err:
        validated(info, skip_invalid=False)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("dataset 'koniq' at ")
    assert lines[0].endswith("7 problems found; fix them, or drop them with --skip-invalid")
    assert [l.strip() for l in lines[1:]] == [e.format(d=tmp_path / "1024x768") for e in EXPECTED]


def test_skip_invalid_drops_and_lists(tmp_path):
    info = _koniq(tmp_path)
    report = tmp_path / "run" / "dropped.txt"
    clean = validated(info, skip_invalid=True, report_path=report)
    assert [r.ref for r in clean.records] == ["ok1.jpg", "dup.jpg", "ok2.jpg"]
    assert validate(clean) == []
    text = report.read_text().splitlines()
    assert text[0].startswith("# 7 problem(s) in dataset 'koniq'")
    assert text[1:] == [e.format(d=tmp_path / "1024x768") for e in EXPECTED]


def test_skip_invalid_remaps_official_split(tmp_path):
    info = _koniq(tmp_path)
    info.official_split = {"train": [0, 3], "val": [4], "test": [1, 2, 5]}  # indices into the 6 records
    clean = validated(info, skip_invalid=True)
    # records: ok1(0) missing(1) broken(2) dup(3) dup(4, dropped) ok2(5) -> kept ok1, dup, ok2
    assert clean.official_split == {"train": [0, 1], "val": [], "test": [2]}


def test_clean_dataset_passes_untouched(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("image,label\na.png,1\nb.png,2\n")
    info = read_dataset("csv", tmp_path)
    assert validated(info, skip_invalid=False) is info


def test_missing_required_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("img,score\na.png,1\n")
    with pytest.raises(UserError, match=r"^labels.csv: missing required column\(s\) 'image', 'label' \(found: img, score\)$"):
        read_dataset("csv", tmp_path)
    (tmp_path / "dmos.csv").write_text("dist_img,dmos\nx.png,1\n")
    with pytest.raises(UserError, match=r"^dmos.csv: missing required column\(s\) 'ref_img'"):
        read_dataset("kadid", tmp_path)
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text("image_name,MOS\n1.jpg,50\n")
    with pytest.raises(UserError, match=r"missing required column\(s\) 'MOS_zscore' \(found: image_name, MOS\)"):
        read_dataset("koniq", tmp_path)
    wb = openpyxl.Workbook()
    wb.active.append(["Image", "Score"])
    wb.save(tmp_path / "MOS and Image attribute scores.xlsx")
    with pytest.raises(UserError, match=r"missing required column\(s\) 'Image name', 'MOS'"):
        read_dataset("spaq", tmp_path)


def test_text_and_spreadsheet_rows_named(tmp_path):
    (tmp_path / "csiq_label.txt").write_text("a.AWGN.1.png 0.1\njunk\nb.BLUR.2.png x\n")
    info = read_dataset("csiq", tmp_path)
    assert [str(p) for p in info.problems] == [
        "csiq_label.txt line 2: expected '<image> <dmos>', got 'junk'",
        "csiq_label.txt line 3: label 'x' is not a number",
    ]
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image number", "Average grade"])
    ws.append([1, 3.5])
    ws.append(["one", 2])
    ws.append([3, "n/a"])
    wb.save(tmp_path / "DatabaseGrades.xlsx")
    bid = read_dataset("bid", tmp_path)
    assert [str(p) for p in bid.problems] == [
        "DatabaseGrades.xlsx row 3: image number 'one' is not an integer",
        "DatabaseGrades.xlsx row 4: MOS 'n/a' is not a number",
    ]
    assert len(bid.records) == 1


def test_mat_entries_named(tmp_path):
    (tmp_path / "Data").mkdir()
    names = np.empty((9, 1), dtype=object)
    for i in range(9):
        names[i, 0] = f"{i}.bmp"
    scipy.io.savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": names})
    mos = np.array([[1, 2, 3, 4, 5, 6, 7, np.nan, 50]])
    scipy.io.savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    info = read_dataset("livec", tmp_path)
    assert [str(p) for p in info.problems] == ["AllMOS_release.mat entry 8: label 'nan' is not a finite number"]


def test_not_utf8_and_empty_files(tmp_path):
    (tmp_path / "labels.csv").write_bytes(b"image,label\n\xff\xfe,1\n")
    with pytest.raises(UserError, match=r"^labels.csv: not a UTF-8 text file"):
        read_dataset("csv", tmp_path)
    (tmp_path / "labels.csv").write_text("")
    with pytest.raises(UserError, match=r"^labels.csv: the file is empty"):
        read_dataset("csv", tmp_path)


def test_everything_invalid_is_an_error_even_with_skip(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\nnope.png,1\n")
    with pytest.raises(UserError, match="every row is invalid"):
        validated(read_dataset("csv", tmp_path), skip_invalid=True)
