"""User-facing errors: one line, naming the file or row and the reason."""


class UserError(Exception):
    """A mistake in the user's input (file, option, dataset row).

    The CLI prints ``str(err)`` on one line and exits with status 2; no
    traceback is shown. Library callers can catch it like any exception.
    """


class BackendError(UserError, ImportError):
    """Keras runs on a backend keras-hyperiqa does not support (TensorFlow)."""


def first_line(err, limit=200):
    """The first line of an exception's text, shortened at a word boundary."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    text = lines[0].strip()
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + " ..."


def require_file(path, what):
    """A one-line ``UserError`` for a missing input file, before anything slow is loaded."""
    import os

    if path is not None and not os.path.isfile(path):
        reason = "is a folder" if os.path.isdir(path) else "does not exist"
        raise UserError(f"{path}: no such {what} ({reason})")
