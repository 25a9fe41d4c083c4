"""Device selection shared by training, analysis and the CLI."""

from __future__ import annotations

import ctypes

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
HEAP_SERVED_BYTES = 32 * 2**20
# Freed memory at the top of the heap that is kept for the next batch rather than returned.
HEAP_KEPT_BYTES = 256 * 2**20


def keep_host_allocations() -> bool:
    """Serve host allocations up to 32 MiB from glibc's heap, and keep up to 256 MiB freed there,
    for the rest of the process; False where the C library is not glibc.

    A CPU analysis allocates the same temporaries (maps, tiles, logits) batch after batch. By
    default glibc hands each one above its mmap threshold (128 KiB, raised only as large blocks
    are freed) to the kernel on ``free`` and gets it back on the next ``malloc`` as fresh
    pages, zeroed one by one on first touch: a quarter of the analysis time of a small model
    (benchmarks/RESULTS.md). Setting the thresholds keeps that memory in the process instead.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_SERVED_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT_BYTES))
