"""The one exception type users see, and the words and status a failure or an interrupt
ends a command with (the CLI and the app render them; nothing here prints).

Nothing heavy is imported here, so it stays cheap for any caller.
"""

from __future__ import annotations

INTERRUPTED_STATUS = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


class DiagError(Exception):
    """A user-facing failure (bad file, unknown name, mismatched checkpoint, ...).

    The CLI prints ``error: <message>`` and exits with status 1; the app shows the
    message in an error box. Anything else escaping is a bug in deepvit-diag.
    """


def failure_line(err: BaseException) -> str:
    """One line saying why something failed: a ``DiagError``'s (or ``ValueError``'s) message, the
    file and the operating system's reason for an ``OSError``, else the unexpected exception."""
    if isinstance(err, OSError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    elif isinstance(err, MemoryError):
        text = "out of memory"
    elif isinstance(err, (DiagError, ValueError)):
        text = str(err)
    else:
        text = f"Unexpected {type(err).__name__}: {err}"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(err).__name__


INTERRUPTED_LINE = "interrupted"  # what a command says on Ctrl-C, before exiting with INTERRUPTED_STATUS
