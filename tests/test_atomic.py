"""The atomic writers: umask mode, the target untouched and no temporary left on an error."""

import os

import pytest

from keras_hyperiqa.atomic import atomic_dir, atomic_file, atomic_path, write_atomic


@pytest.fixture
def umask_027():
    mask = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(mask)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_atomic_path_keeps_the_extension_and_gives_the_umask_mode(tmp_path, umask_027):
    target = tmp_path / "sub" / "selected.weights.h5"  # a missing folder is created
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "sub")
        assert tmp.endswith(".weights.h5") and os.path.basename(tmp).startswith(".")
        os.unlink(tmp)  # a writer that recreates its file (0600) still ends with the umask's mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"new")
        os.close(fd)
        assert not target.exists()
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    assert os.listdir(tmp_path / "sub") == ["selected.weights.h5"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(error), atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise error()
    with pytest.raises(error), atomic_file(target, "wb", fsync=True) as fh:
        fh.write(b"half")
        raise error()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_atomic_file_text_options_and_fsync(tmp_path, umask_027):
    with atomic_file(tmp_path / "h.csv", newline="", fsync=True) as fh:
        fh.write("a\r\nü\n")
    assert (tmp_path / "h.csv").read_bytes() == "a\r\nü\n".encode()
    write_atomic(tmp_path / "h.csv", "b\n")
    assert (tmp_path / "h.csv").read_text() == "b\n" and _mode(tmp_path / "h.csv") == 0o640


def test_atomic_dir_replaces_an_absent_or_empty_folder_with_the_umask_mode(tmp_path, umask_027):
    for target in (tmp_path / "absent", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        with atomic_dir(target) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path)
            (open(os.path.join(tmp, "f"), "w")).close()
            assert not (target / "f").exists()
        assert os.listdir(target) == ["f"] and _mode(target) == 0o750
    assert sorted(os.listdir(tmp_path)) == ["absent", "empty"]


def test_atomic_dir_removes_its_folder_on_an_error_and_refuses_a_full_target(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (open(os.path.join(tmp, "f"), "w")).close()
        raise RuntimeError()
    assert os.listdir(tmp_path) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old").write_text("x")
    with pytest.raises(OSError), atomic_dir(tmp_path / "full") as tmp:
        (open(os.path.join(tmp, "f"), "w")).close()
    assert os.listdir(tmp_path) == ["full"] and os.listdir(tmp_path / "full") == ["old"]
