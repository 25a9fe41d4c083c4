"""The memory an analysis may use, and how it is split: images per batch and query rows
per chunk (``Settings.memory_budget``).

Both are chosen before the first batch from what one image costs, so that the analysis fits
the budget instead of finding out from an out-of-memory error. Per image and model, with L
blocks, H heads, T tokens and width D (float32):

* the forward's own live activations, about ``16 T D + 2 H T^2`` (the attention of one block
  at a time; a fused kernel needs less);
* what the analysis keeps of the batch: queries, keys and block outputs of every block,
  ``3 L T D``, and the metric accumulators, the Gram matrices of every column across blocks
  and across heads plus the neighbour sums, ``L H T (kinds (L + H) + L)``
  (``metrics.scores.accumulator_floats``);
* the maps, a chunk of r query rows of every block at once:
  ``r * H * (T * (kinds * L + 3) + L^2)`` (``metrics.scores.chunk_for_budget``).

Everything but the maps grows linearly in T. The batch takes at most half the budget for
the linear part, so the other half leaves room for chunks. On the CPU a chunk also has at
most ``CPU_CHUNK_ROWS`` rows and ``CPU_TILE_BYTES`` of maps: chunks of 64-128 rows ran as
fast as one pass over all T, or faster (benchmarks/RESULTS.md), and a fixed number of rows
keeps the maps' memory linear in T as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .introspection import Geometry
from .metrics.scores import accumulator_floats, chunk_for_budget

MIB = 2**20
# One chunk on the CPU: more rows or bytes no longer ran faster (benchmarks/RESULTS.md).
CPU_CHUNK_ROWS = 128
CPU_TILE_BYTES = 128 * MIB
_FLOAT = 4


def available_bytes(device: torch.device) -> int:
    """The default budget: the device's free memory on CUDA; half the host's available
    memory on the CPU (the rest stays with the image decoding and everything else)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _host_available_bytes() // 2


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ModelShape:
    """What a model's cost per image depends on: its geometry, token width and map kinds."""

    geometry: Geometry
    width: int

    @property
    def kinds(self) -> int:
        return 2 if self.geometry.mixing_blocks else 1

    def bytes_per_image(self) -> int:
        """Everything but the maps' chunk (see the module docstring)."""
        g = self.geometry
        blocks, heads, tokens = g.num_blocks, g.num_heads, g.num_tokens
        forward = 16 * tokens * self.width + 2 * heads * tokens**2
        kept = 3 * blocks * tokens * self.width + accumulator_floats(blocks, heads, tokens, self.kinds)
        return _FLOAT * (forward + kept)


@dataclass(frozen=True)
class Plan:
    """Images per batch and, per model, query rows per chunk."""

    batch_size: int
    chunks: tuple[int, ...]


def plan(shapes: list[ModelShape], budget_bytes: int, requested_batch: int, device: torch.device) -> Plan:
    """The largest batch (up to ``requested_batch``) whose linear part takes at most half of
    ``budget_bytes``, and each model's chunk from what is left (at least one image and one
    row, whatever the budget)."""
    per_image = sum(shape.bytes_per_image() for shape in shapes)
    batch = max(1, min(requested_batch, budget_bytes // (2 * per_image)))
    left = max(budget_bytes - batch * per_image, 0)
    if device.type == "cpu":
        left = min(left, CPU_TILE_BYTES)
    chunks = tuple(
        chunk_for_budget(
            shape.geometry.num_blocks, batch, shape.geometry.num_heads, shape.geometry.num_tokens, shape.kinds, left
        )
        for shape in shapes
    )
    if device.type == "cpu":
        chunks = tuple(min(chunk, CPU_CHUNK_ROWS) for chunk in chunks)
    return Plan(batch, chunks)
