"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A reader (or a resumed run) sees either the old file or the whole new one,
never a half-written one, whenever the writer is killed.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and
``os.replace`` keeps that mode, so every temporary file here is given the mode
an ordinary ``open(path, "w")`` would have (0666 less the umask): a run
directory on a shared server stays readable to whom the user's umask allows.
"""

import os
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


def write_atomic(path, data, mode="w"):
    """Write ``data`` (text, or bytes with ``mode="wb"``) to ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = mkstemp(folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
