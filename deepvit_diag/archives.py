"""Zip archives (``.npz`` files, PyTorch's ``.pth``) read with their expansion capped before anything expands.

A few megabytes of deflated zeros inflate to gigabytes. A zip's central directory states every
entry's uncompressed size, and Python's ``zipfile`` (under ``np.load``) and PyTorch's reader never
produce more than the stated size (a stream that inflates further fails its check), so checking the
stated sizes first bounds the memory a file can take. ``check_expansion`` refuses an entry above
``ENTRY_LIMIT`` or a total above ``TOTAL_LIMIT`` with one line naming the entry.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import DiagError

# Far above any result, sweep or tally deepvit-diag writes (a 32-block ImageNet comparison's arrays.npz
# holds under 50 MB), far below what exhausts a machine's memory.
ENTRY_LIMIT = 512 << 20
TOTAL_LIMIT = 1 << 30


def stated_sizes(path: str | Path) -> list[zipfile.ZipInfo]:
    """Every entry of the zip archive at ``path``, as its central directory states it (nothing is inflated)."""
    with zipfile.ZipFile(path) as archive:
        return archive.infolist()


def largest_entry(entries: list[zipfile.ZipInfo]) -> zipfile.ZipInfo:
    return max(entries, key=lambda info: info.file_size)


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def check_expansion(path: str | Path, entry_limit: int = ENTRY_LIMIT, total_limit: int = TOTAL_LIMIT) -> None:
    """Refuse (``DiagError``) an archive whose entries would expand beyond the limits."""
    entries = stated_sizes(path)
    if not entries:
        return
    largest = largest_entry(entries)
    if largest.file_size > entry_limit:
        raise DiagError(
            f"refused to read {path}: entry {largest.filename} would expand to {megabytes(largest.file_size)} "
            f"(from {megabytes(largest.compress_size)}; at most {megabytes(entry_limit)} per entry)"
        )
    total = sum(info.file_size for info in entries)
    if total > total_limit:
        raise DiagError(
            f"refused to read {path}: its entries would expand to {megabytes(total)} in all "
            f"(at most {megabytes(total_limit)}; the largest is {largest.filename})"
        )
