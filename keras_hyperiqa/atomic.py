"""Atomic writes: a temporary file (or folder) in the same folder, then ``os.replace``.

A reader (or a resumed run) sees either the old file or the whole new one,
never a half-written one, whenever the writer is killed. On an error the
temporary is removed and the target is left as it was.

``tempfile.mkstemp`` creates its file with mode 0600 (``mkdtemp`` 0700)
whatever the umask, and ``os.replace`` keeps that mode, so every temporary
here is given the mode an ordinary ``open(path, "w")`` (``os.mkdir``) would
have, 0666 (0777) less the umask: a run directory on a shared server stays
readable to whom the user's umask allows.

Every writer goes through one of:

* :func:`write_atomic` (text or bytes already in memory),
* :func:`atomic_file` (an open file object to write into),
* :func:`atomic_path` (a temporary path, for writers that take a file name:
  ``model.save``, ``savefig``, ONNX export),
* :func:`atomic_dir` (a temporary folder that becomes the target folder).
"""

import contextlib
import os
import shutil
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def current_umask():
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def mkstemp(folder, prefix, suffix=""):
    """``tempfile.mkstemp`` in ``folder`` with the mode ``open()`` would give: (fd, path)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _extension(name):
    """``.weights.h5`` of ``selected.weights.h5``: writers such as Keras's pick the format by it."""
    stem = name.lstrip(".")
    return stem[stem.index("."):] if "." in stem else ""


def _fsync(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened on some systems; the rename still stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, fsync=False):
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    For writers that take a file name. The temporary file exists (empty) when
    the block starts, hidden (``.name.XXXX.tmp.ext``) and ending in ``path``'s
    extension. After the block it is given the umask's mode again (a writer
    may have recreated it), synced to disk with ``fsync`` (then the folder
    too), and renamed onto ``path``. Missing folders are created.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    fd, tmp = mkstemp(folder, prefix=f".{name}.", suffix=".tmp" + _extension(name))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_file(path, mode="w", fsync=False, **open_kwargs):
    """Yield an open file (``mode`` ``"w"`` or ``"wb"``) whose content replaces ``path`` on success.

    Text files are UTF-8 unless ``encoding`` is given; ``open_kwargs`` go to
    ``open`` (e.g. ``newline=""`` for ``csv``).
    """
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh


def write_atomic(path, data, mode="w"):
    """Write ``data`` (text, or bytes with ``mode="wb"``) to ``path`` atomically."""
    with atomic_file(path, mode) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a new temporary folder beside ``path`` that becomes ``path`` when the block succeeds.

    ``path`` must then be absent or an empty folder (which is removed first);
    a non-empty one is an ``OSError``. On an error the temporary folder and
    all in it are removed. The parent folder is created if missing.
    """
    path = os.fspath(path).rstrip(os.sep) or os.sep
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)  # some systems rename a folder only onto an absent name
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
