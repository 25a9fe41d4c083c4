"""The one exception type users see, and the words and status a failure or an interrupt
ends a command with (the CLI and the app render them; nothing here prints).

Nothing heavy is imported here, so it stays cheap for any caller.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
TERMINATED_LINE = "terminated"  # and on SIGTERM, before exiting with 128 + SIGTERM


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler: the signal ends the work as Ctrl-C does (a ``KeyboardInterrupt`` carrying its number)."""
    raise KeyboardInterrupt(signum)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers, ``kill`` and ``torchrun`` send) handled like Ctrl-C inside the block: the
    output is cleaned up and the earlier one kept. Only the main thread can install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(err: KeyboardInterrupt) -> tuple[str, int]:
    """The line and exit status of a command ended by Ctrl-C or (``raise_interrupt``) SIGTERM: the shell's
    status, 128 + the signal's number."""
    if err.args and err.args[0] == signal.SIGTERM:
        return TERMINATED_LINE, 128 + signal.SIGTERM
    return INTERRUPTED_LINE, INTERRUPTED_STATUS
