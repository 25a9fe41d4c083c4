"""Analyses split across processes or machines: shards of the image list whose sums add up.

Every number an analysis reports comes from sums over images (docs/metrics.md): metric
sums, image and top-k counts, and the CKA's minibatch HSIC. Cut the ordered image list into
contiguous shards, sum each shard on its own, add the sums, and the result is the one a
single run gives. Two ways to use it:

* a process group (``torchrun``, Slurm, or any launcher that sets the usual environment;
  or the API inside ``torch.distributed.init_process_group``): rank r of W analyses shard r
  of W; the sums are gathered and added in rank order on every rank; rank 0 reports;
* separate runs (Slurm array jobs, machines at different times): ``analyze --shard i/n``
  saves one shard's sums with its result, and ``deepvit-diag merge`` adds all n.

Shards are cut at CKA minibatch boundaries (every ``cka_chunk`` images), so each
minibatch lies in one shard as it does in a single run, and the CKA is exact too. (An image
that fails to decode during the run shifts the minibatches after it within its shard, so
only then can the CKA differ from a single run's; every other number stays exact.)
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import DiagError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based, as process ranks are) of ``count`` contiguous shards of the
    image list. People count shards from 1, as pytest-split, Jest and Playwright do: the
    text form (``parse``, ``str``) is ``"i/n"`` with i from 1 to n."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise DiagError(f"shard {self.index + 1}/{self.count}: the shard number must be from 1 to {self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"``: shard i (from 1 to n) of n."""
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not found or int(found.group(2)) < 1 or int(found.group(1)) < 1:
            raise DiagError(f"a shard is written i/n with i from 1 to n, e.g. 1/4 for the first of 4, got {text!r}")
        return cls(int(found.group(1)) - 1, int(found.group(2)))

    def bounds(self, num_images: int, chunk: int) -> tuple[int, int]:
        """The images ``[start, stop)`` of this shard of ``num_images``: whole minibatches of
        ``chunk`` images, as evenly spread over the shards as they go (a shard may be empty)."""
        chunks = -(-num_images // chunk)
        first, last = chunks * self.index // self.count, chunks * (self.index + 1) // self.count
        return min(first * chunk, num_images), min(last * chunk, num_images)

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"


def process_group_shard() -> Shard | None:
    """This process's shard when it is one of several in an initialised process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Shard(dist.get_rank(), dist.get_world_size())
    return None


def is_reporting_process() -> bool:
    """Whether this process prints and writes: the only one, or rank 0 of a process group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` in rank order (``[value]`` without a process group).

    Used for the analysis' sums, which are small host-side arrays: gathering them and adding
    them in rank order gives every process the same total, run after run."""
    if process_group_shard() is None:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def start_from_environment(device: str) -> None:
    """Join the process group a launcher describes (``WORLD_SIZE`` > 1 in the environment),
    for the command line under ``torchrun``: NCCL with one GPU per process
    (``LOCAL_RANK``) when the device is CUDA, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    on_gpu = torch.cuda.is_available() and device != "cpu"
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if on_gpu else "gloo")
    except (RuntimeError, ValueError) as err:
        raise DiagError(f"cannot join the process group the environment describes: {err}") from None


def local_device(device: str) -> str:
    """``device`` for this process: under a process group on GPUs, ``auto`` and ``cuda`` mean
    this process's own GPU (``LOCAL_RANK``)."""
    if process_group_shard() is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def weights_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights (names, dtypes, shapes and bytes of its state dict):
    shards of one analysis must come from the same weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
