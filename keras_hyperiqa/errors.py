"""User-facing errors: one line, naming the file or row and the reason."""


class UserError(Exception):
    """A mistake in the user's input (file, option, dataset row).

    The CLI prints ``str(err)`` on one line and exits with status 2; no
    traceback is shown. Library callers can catch it like any exception.
    """
