"""Device selection and the host allocator setting of ``deepvit_diag.device``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deepvit_diag.device import resolve_device

# Repeated 4 MiB temporaries, as a CPU analysis makes batch after batch; prints the page
# faults of 20 rounds after two warm-up rounds.
FAULTS_OF_TEMPORARIES = """
import resource, sys, torch
from deepvit_diag.device import keep_host_allocations
if sys.argv[1] == "keep" and not keep_host_allocations():
    print("unsupported")
    raise SystemExit
def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = torch.ones(2**20); b = a * 2; c = b + a
        del a, b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(2)
print(faults(20))
"""


def _page_faults(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_TEMPORARIES, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and glibc's mallopt are Linux's")
def test_kept_host_allocations_are_not_faulted_in_again():
    kept = _page_faults("keep")
    if kept == "unsupported":
        pytest.skip("the C library is not glibc")
    default = int(_page_faults("default"))
    # Each round's three temporaries are 3 x 1,024 pages; glibc's default returns and refaults
    # most of them, the kept heap reuses them.
    assert default > 20 * 1024
    assert int(kept) < default / 4


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("no-such-device")
