"""The memory plan: the batch and the chunk fit the budget, at least one of each, and the
linear part of the cost follows the token count."""

from __future__ import annotations

import torch

from deepvit_diag import budget
from deepvit_diag.introspection import Geometry

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def shape(grid: int = 14, blocks: int = 12, mixing: bool = False) -> budget.ModelShape:
    geometry = Geometry(blocks, 6, 1, (16, 16), (grid, grid), (16 * grid, 16 * grid), (0,) if mixing else ())
    return budget.ModelShape(geometry, 384)


def test_batch_takes_at_most_half_the_budget_and_chunks_fit_the_rest():
    model = shape()
    per_image = model.bytes_per_image()
    made = budget.plan([model], 10 * per_image, 32, CUDA)
    assert made.batch_size == 5
    left = 10 * per_image - 5 * per_image
    tokens = model.geometry.num_tokens
    assert made.chunks[0] == min(tokens, left // (4 * 5 * 6 * (tokens * (12 + 3) + 12 * 12)))


def test_requested_batch_is_a_ceiling_and_a_tiny_budget_still_runs():
    assert budget.plan([shape()], 10**15, 8, CUDA) == budget.Plan(8, (197,))
    assert budget.plan([shape()], 1, 8, CUDA) == budget.Plan(1, (1,))


def test_cpu_chunks_stay_under_the_tile_size_and_the_row_count():
    deep = budget.plan([shape(grid=37, blocks=48)], 10**12, 2, CPU)
    per_row = 4 * 2 * 6 * (1370 * (48 + 3) + 48 * 48)
    assert deep.chunks[0] == budget.CPU_TILE_BYTES // per_row < budget.CPU_CHUNK_ROWS
    assert budget.plan([shape(grid=37)], 10**12, 2, CPU).chunks == (budget.CPU_CHUNK_ROWS,)
    assert budget.plan([shape(grid=8)], 10**12, 2, CPU).chunks == (65,)
    # On CUDA the budget alone decides.
    assert budget.plan([shape(grid=37)], 10**12, 2, CUDA).chunks == (1370,)


def test_cost_per_image_besides_the_maps_is_linear_in_the_tokens_for_fixed_heads_and_width():
    # 2 H T^2 of it is the forward's own attention of one block, not the analysis.
    small, large = shape(grid=14), shape(grid=28)
    kept = [
        s.bytes_per_image() - 4 * (16 * s.geometry.num_tokens * 384 + 2 * 6 * s.geometry.num_tokens**2)
        for s in (small, large)
    ]
    assert kept[1] / kept[0] == large.geometry.num_tokens / small.geometry.num_tokens


def test_mixing_models_keep_two_kinds_and_the_default_budget_is_positive():
    assert shape(mixing=True).kinds == 2 and shape().kinds == 1
    assert budget.available_bytes(CPU) > 0
