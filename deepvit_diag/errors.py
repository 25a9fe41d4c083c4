"""The one exception type users see: its message is a complete one-line explanation."""


class DiagError(Exception):
    """A user-facing failure (bad file, unknown name, mismatched checkpoint, ...).

    The CLI prints ``error: <message>`` and exits with status 1; the app shows the
    message in an error box. Anything else escaping is a bug in deepvit-diag.
    """
