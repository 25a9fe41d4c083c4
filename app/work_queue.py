"""Heavy work (analyses, sweeps) one job at a time per device, in the order it was asked for.

Every visitor's analysis on the same device at once could exhaust GPU or host memory and
fail them all; here the second waits for the first. The work still runs in the thread of
the session that asked for it, so what it draws (progress) stays that session's, and a
waiting or running job ends as soon as the function that reports on it raises: Streamlit
does so when the visitor presses Cancel (a rerun) or leaves (the session stops).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Seconds between two reports of a waiting job's place in the queue.
POLL_SECONDS = 0.5


@dataclass
class Turn:
    """A job's time in the queue: how many jobs were ahead of it when it arrived, and how long it waited."""

    ahead_on_arrival: int
    waited_s: float = 0.0


class DeviceQueue:
    """First come, first served, one job at a time per device name (``"cpu"``, ``"cuda:0"``)."""

    def __init__(self, poll_s: float = POLL_SECONDS):
        self.poll_s = poll_s
        self._changed = threading.Condition()
        self._lines: dict[str, list[object]] = {}

    def ahead(self, device: str) -> int:
        """Jobs running or waiting on ``device``: how many a job arriving now waits for."""
        with self._changed:
            return len(self._lines.get(device, []))

    @contextmanager
    def turn(self, device: str, waiting: Callable[[int], None] = lambda ahead: None) -> Iterator[Turn]:
        """Wait until every job that arrived earlier on ``device`` has left, then hold the device
        until the ``with`` block ends (normally or by an exception).

        ``waiting(ahead)`` is called every ``poll_s`` seconds while jobs are ahead, with their
        number; an exception it raises takes the job out of the queue (a cancel)."""
        ticket = object()
        with self._changed:
            line = self._lines.setdefault(device, [])
            line.append(ticket)
            turn = Turn(ahead_on_arrival=len(line) - 1)
        started = time.monotonic()
        try:
            while (ahead := self._wait_for(line, ticket)) > 0:
                waiting(ahead)
            turn.waited_s = time.monotonic() - started
            yield turn
        finally:
            with self._changed:
                line.remove(ticket)
                self._changed.notify_all()

    def _wait_for(self, line: list[object], ticket: object) -> int:
        """Jobs ahead of ``ticket`` after waiting at most ``poll_s`` for one to leave."""
        with self._changed:
            if line.index(ticket) > 0:
                self._changed.wait(self.poll_s)
            return line.index(ticket)
