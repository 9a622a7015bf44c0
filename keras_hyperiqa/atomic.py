"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A reader (or a resumed run) sees either the old file or the whole new one,
never a half-written one, whenever the writer is killed.
"""

import os
import tempfile


def write_atomic(path, data, mode="w"):
    """Write ``data`` (text, or bytes with ``mode="wb"``) to ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
