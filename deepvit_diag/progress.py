"""Progress of long work as a callback, so that the library never decides where it is drawn.

Long-running functions take ``progress``: ``True`` for a rich bar on stderr (stdout stays
free for results, e.g. the CLI's ``--json``), ``False`` for silence, or a callable
``progress(done, total)`` called after each step (``total`` is None when unknown), e.g.
the Streamlit app's own bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ProgressCallback = Callable[[int, "int | None"], None]
ProgressOption = bool | ProgressCallback


@contextmanager
def reporting(progress: ProgressOption, description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """``update(done, note="")`` for the duration of the block: draws the rich bar, calls the
    user's callback with ``(done, total)``, or does nothing (``progress=False``). ``note``
    is a short status text the rich bar shows (e.g. a training loss)."""
    if callable(progress):
        yield lambda done, note="": progress(done, total)
        return
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(description, total=total, note="")
        yield lambda done, note="": bar.update(task, completed=done, note=note)
