"""Device selection and the host allocator setting of ``deepvit_diag.device``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deepvit_diag.device import resolve_device

# Rounds of 32 MiB of 4 MiB temporaries, as a CPU analysis makes batch after batch; prints the
# page faults of 10 rounds after two warm-up rounds. glibc's thresholds move with what the
# process freed before (its imports, for one), so both runs start from glibc's initial ones
# (128 KiB: every temporary is mapped from the kernel and given back), set explicitly.
FAULTS_OF_TEMPORARIES = """
import ctypes, resource, sys, torch
from deepvit_diag.device import keep_host_allocations
mallopt = ctypes.CDLL(None).mallopt
if not (mallopt(-3, 128 * 1024) and mallopt(-1, 128 * 1024)):
    print("unsupported")
    raise SystemExit
if sys.argv[1] == "keep":
    keep_host_allocations()
def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        held = [torch.ones(2**20) for _ in range(8)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(2)
print(faults(10))
"""


def _page_faults(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_TEMPORARIES, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and glibc's mallopt are Linux's")
def test_kept_host_allocations_are_not_faulted_in_again():
    initial = _page_faults("initial")
    if initial == "unsupported":
        pytest.skip("the C library is not glibc")
    kept = int(_page_faults("keep"))
    # 10 rounds of 8 temporaries of 1,024 pages each: all faulted in again with the initial
    # thresholds, reused from the heap once kept.
    assert int(initial) > 10 * 8 * 1024 * 0.9
    assert kept < 8 * 1024


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("no-such-device")
