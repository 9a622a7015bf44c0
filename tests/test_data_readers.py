"""Each reader against a small fixture in the dataset's exact on-disk format."""

import csv

import numpy as np
import openpyxl
import pytest
import scipy.io
from PIL import Image

from keras_hyperiqa.data.readers import DATASETS, read_dataset
from keras_hyperiqa.data.records import Record
from keras_hyperiqa.errors import UserError


def _img(path, size=(12, 10), color=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def _cells(names, shape):
    arr = np.empty(shape, dtype=object)
    for i, n in enumerate(names):
        arr.flat[i] = n
    return arr


def test_dataset_names():
    assert set(DATASETS) == {"live", "csiq", "tid2013", "livec", "koniq", "bid", "kadid", "spaq", "csv"}


def test_live_release2(tmp_path):
    counts = [("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174)]
    n = sum(c for _, c in counts)
    dmos = np.arange(n, dtype=np.float64)[None, :] / 10.0
    orgs = np.ones((1, n))
    keep = {0: "womanhat.bmp", 1: "bikes.bmp", 227: "womanhat.bmp", 460: "bikes.bmp", 808: "parrots.bmp"}
    names = ["bikes.bmp"] * n
    for i, ref in keep.items():
        orgs[0, i] = 0
        names[i] = ref
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": dmos, "orgs": orgs})
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": _cells(names, (1, n))})
    info = read_dataset("live", tmp_path)
    expected = [
        Record(str(tmp_path / "jp2k" / "img1.bmp"), 0.0, "womanhat.bmp"),
        Record(str(tmp_path / "jp2k" / "img2.bmp"), 0.1, "bikes.bmp"),
        Record(str(tmp_path / "jpeg" / "img1.bmp"), 22.7, "womanhat.bmp"),
        Record(str(tmp_path / "wn" / "img1.bmp"), 46.0, "bikes.bmp"),
        Record(str(tmp_path / "fastfading" / "img1.bmp"), 80.8, "parrots.bmp"),
    ]
    assert info.records == expected
    assert info.higher_is_better is False
    assert info.resize is None
    assert info.records[2].source == "dmos_realigned.mat" and info.records[2].row == 228


def test_live_wrong_length_is_user_error(tmp_path):
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": np.zeros((1, 10)), "orgs": np.zeros((1, 10))})
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": _cells(["a.bmp"] * 10, (1, 10))})
    with pytest.raises(UserError, match=r"dmos_realigned.mat: 'dmos_new' has 10 entries, expected 982"):
        read_dataset("live", tmp_path)


def test_csiq(tmp_path):
    (tmp_path / "csiq_label.txt").write_text(
        "1600.AWGN.1.png 0.062\n1600.JPEG.3.png 0.4\n\naerial_city.BLUR.5.png 0.9\n"
    )
    info = read_dataset("csiq", tmp_path)
    d = tmp_path / "dst_imgs_all"
    assert info.records == [
        Record(str(d / "1600.AWGN.1.png"), 0.062, "1600.png"),
        Record(str(d / "1600.JPEG.3.png"), 0.4, "1600.png"),
        Record(str(d / "aerial_city.BLUR.5.png"), 0.9, "aerial_city.png"),
    ]
    assert info.higher_is_better is False
    assert info.records[2].row == 4 and info.records[2].row_kind == "line"


def test_tid2013_case_insensitive_files(tmp_path):
    (tmp_path / "mos_with_names.txt").write_text("5.51429 i01_01_1.bmp\r\n3.0 i25_24_5.bmp\r\n")
    _img(tmp_path / "distorted_images" / "I25_24_5.BMP")  # upper-case on disk, as some copies ship
    info = read_dataset("tid2013", tmp_path)
    d = tmp_path / "distorted_images"
    assert info.records == [
        Record(str(d / "i01_01_1.bmp"), 5.51429, "I01"),
        Record(str(d / "I25_24_5.BMP"), 3.0, "I25"),
    ]
    assert info.higher_is_better is True


def test_livec_skips_first_seven(tmp_path):
    (tmp_path / "Data").mkdir()
    names = [f"t{i}.bmp" for i in range(7)] + ["10.JPG", "100.bmp", "1000.JPG"]
    scipy.io.savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": _cells(names, (10, 1))})
    mos = np.array([[1, 2, 3, 4, 5, 6, 7, 63.9, 25.5, 70.1]], dtype=np.float64)
    scipy.io.savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    info = read_dataset("livec", tmp_path)
    d = tmp_path / "Images"
    assert info.records == [
        Record(str(d / "10.JPG"), 63.9, "10.JPG"),
        Record(str(d / "100.bmp"), 25.5, "100.bmp"),
        Record(str(d / "1000.JPG"), 70.1, "1000.JPG"),
    ]
    assert info.higher_is_better is True


def _koniq_scores(path, rows):
    header = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for name, mos, z in rows:
            w.writerow([name, 0, 0, 0.2, 0.7, 0.1, 100, mos, 0.5, z])


def test_koniq_default_zscore_and_official_split(tmp_path):
    _koniq_scores(tmp_path / "koniq10k_scores_and_distributions.csv",
                  [("1.jpg", 3.1, 70.5), ("2.jpg", 2.0, 40.25), ("3.jpg", 4.0, 90.0), ("4.jpg", 3.0, 60.0)])
    with open(tmp_path / "koniq10k_distributions_sets.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"])
        for name, s in [("1.jpg", "training"), ("2.jpg", "test"), ("3.jpg", "validation"), ("4.jpg", "training")]:
            w.writerow([name, 0, 0, 0, 1, 0, 100, 70, 0.5, s])
    (tmp_path / "1024x768").mkdir()
    info = read_dataset("koniq", tmp_path)
    d = tmp_path / "1024x768"
    assert [r.label for r in info.records] == [70.5, 40.25, 90.0, 60.0]
    assert info.records[0] == Record(str(d / "1.jpg"), 70.5, "1.jpg")
    assert info.official_split == {"train": [0, 3], "val": [2], "test": [1]}
    assert info.resize == (512, 384)
    mos = read_dataset("koniq", tmp_path, label_column="MOS")
    assert [r.label for r in mos.records] == [3.1, 2.0, 4.0, 3.0]


def test_koniq_without_sets_has_no_official_split(tmp_path):
    _koniq_scores(tmp_path / "koniq10k_scores_and_distributions.csv", [("1.jpg", 3.1, 70.5)])
    info = read_dataset("koniq", tmp_path)
    assert info.official_split is None
    assert info.records[0].path == str(tmp_path / "1.jpg")  # no 1024x768/ folder: images at root


def test_bid_xlsx(tmp_path):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image number", "Average grade"])
    ws.append([1, 4.2])
    ws.append([2, 0.55])
    ws.append([586, 3])
    wb.save(tmp_path / "DatabaseGrades.xlsx")
    info = read_dataset("bid", tmp_path)
    assert info.records == [
        Record(str(tmp_path / "DatabaseImage0001.JPG"), 4.2, "DatabaseImage0001.JPG"),
        Record(str(tmp_path / "DatabaseImage0002.JPG"), 0.55, "DatabaseImage0002.JPG"),
        Record(str(tmp_path / "DatabaseImage0586.JPG"), 3.0, "DatabaseImage0586.JPG"),
    ]
    assert info.resize == (512, 512)
    assert info.records[1].row == 3


def test_kadid(tmp_path):
    (tmp_path / "dmos.csv").write_text(
        "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\nI02_03_05.png,I02.png,1.2,0.3\n"
    )
    info = read_dataset("kadid", tmp_path)
    d = tmp_path / "images"
    assert info.records == [
        Record(str(d / "I01_01_01.png"), 4.57, "I01.png"),
        Record(str(d / "I02_03_05.png"), 1.2, "I02.png"),
    ]
    assert info.higher_is_better is True


@pytest.mark.parametrize("images_in", ["TestImage", ""])
def test_spaq(tmp_path, images_in):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    ws.append(["00001.png", 42.5, 50, 40, 30, 20, 10])
    ws.append(["00002.png", 80, 50, 40, 30, 20, 10])
    wb.save(tmp_path / "MOS and Image attribute scores.xlsx")
    folder = tmp_path / images_in if images_in else tmp_path
    folder.mkdir(exist_ok=True)
    info = read_dataset("spaq", tmp_path)
    assert info.records == [
        Record(str(folder / "00001.png"), 42.5, "00001.png"),
        Record(str(folder / "00002.png"), 80.0, "00002.png"),
    ]
    assert info.short_side == 512 and info.resize is None
    sharp = read_dataset("spaq", tmp_path, label_column="Sharpness")
    assert [r.label for r in sharp.records] == [10.0, 10.0]


def test_generic_csv_relative_to_csv_folder(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "mine.csv").write_text("image,label,ref\n../a/x.png,1.5,scene1\nb.png,2,\n")
    info = read_dataset("csv", tmp_path, csv_path=sub / "mine.csv", higher_is_better=False)
    assert info.records == [
        Record(str(sub / ".." / "a" / "x.png"), 1.5, "scene1"),
        Record(str(sub / "b.png"), 2.0, "b.png"),
    ]
    assert info.higher_is_better is False
    (tmp_path / "labels.csv").write_text("image,label\nq.png,7\n")
    assert read_dataset("csv", tmp_path).records == [Record(str(tmp_path / "q.png"), 7.0, "q.png")]


def test_unknown_name_missing_root_missing_label_file(tmp_path):
    with pytest.raises(UserError, match=r"unknown dataset 'foo'; known: live, csiq"):
        read_dataset("foo", tmp_path)
    with pytest.raises(UserError, match=r"nope: dataset root does not exist"):
        read_dataset("csiq", tmp_path / "nope")
    with pytest.raises(UserError, match=r"label file 'csiq_label.txt' not found \(needed for dataset 'csiq'\)"):
        read_dataset("csiq", tmp_path)
    with pytest.raises(UserError, match=r"'koniq10k_scores_and_distributions.csv' or 'koniq10k_distributions_sets.csv' not found"):
        read_dataset("koniq", tmp_path)
