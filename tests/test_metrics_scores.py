"""Map metrics from queries and keys, chunk by chunk: equal to the readable reference functions
on whole maps built here independently, at every chunk size, batch size and axis, with and
without head mixing before and after the softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import (
    AttentionScores,
    attention_entropy,
    chunk_for_budget,
    cross_head_similarity,
    cross_layer_similarity,
    deferred_value_checks,
    mean_attention_distance,
    ratio_grid,
    score_statistics,
    similarity_ratio,
    token_distances,
    uniformity,
)
from deepvit_diag.metrics.scores import query_weights
from deepvit_diag.models.attention import ReAttention

HEADS, DIM, GRID = 3, 5, (3, 4)
TOKENS = 1 + GRID[0] * GRID[1]


def random_scores(num_blocks: int, batch: int, mixing: str | None, seed: int = 0) -> list[AttentionScores]:
    """Scores with sharp logits; ``mixing``: None, "reattention" (conv Theta + BatchNorm with
    running statistics, in the last blocks) or "talking" (linear maps before and after the softmax)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for index in range(num_blocks):
        q = torch.randn(batch, HEADS, TOKENS, DIM, generator=generator) * 1.5
        k = torch.randn(batch, HEADS, TOKENS, DIM, generator=generator) * 1.5
        scores = AttentionScores(q, k)
        if mixing == "reattention" and index > 0:
            attn = ReAttention(HEADS * DIM, HEADS, theta="conv").eval()
            with torch.no_grad():
                attn.var_norm.running_mean.uniform_(-0.2, 0.2, generator=generator)
                attn.var_norm.running_var.uniform_(0.5, 2.0, generator=generator)
            scores.mix_maps = attn.mix_heads
        elif mixing == "talking":
            before, after = nn.Linear(HEADS, HEADS), nn.Linear(HEADS, HEADS)
            scores.mix_logits = lambda s, f=before: f(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            scores.mix_maps = lambda s, f=after: f(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        blocks.append(scores)
    return blocks


def whole_maps(blocks: list[AttentionScores]) -> dict[str, torch.Tensor]:
    """(L, B, H, T, T) pre and post maps, written out from the definition."""
    pre, post = [], []
    with torch.no_grad():
        for block in blocks:
            logits = torch.einsum("bhid,bhjd->bhij", block.q, block.k)
            if block.mix_logits is not None:
                logits = block.mix_logits(logits)
            maps = torch.softmax(logits, dim=-1)
            pre.append(maps)
            post.append(maps if block.mix_maps is None else block.mix_maps(maps))
    return {"pre": torch.stack(pre), "post": torch.stack(post)}


def reference(
    blocks: list[AttentionScores], k: int, tau: float, axis: str, grid: tuple[tuple, tuple] = ((), ())
) -> dict[str, torch.Tensor]:
    maps = whole_maps(blocks)
    expected = {}
    for kind, stacked in maps.items():
        expected[f"similarity_{kind}"] = cross_layer_similarity(stacked, axis)
        expected[f"ratio_{kind}"] = similarity_ratio(stacked, k, tau, axis)
        expected[f"cross_head_{kind}"] = cross_head_similarity(stacked, axis)
        expected[f"uniformity_{kind}"] = uniformity(stacked)
        if grid[0]:
            expected[f"ratio_grid_{kind}"] = ratio_grid(stacked, *grid, axis)
    expected["entropy"] = attention_entropy(maps["pre"])
    expected["attention_distance"] = mean_attention_distance(maps["pre"], 8, 1, GRID)
    return expected


def assert_close(actual: dict, expected: dict, vectors: int) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        # A ratio is a share of vectors: allow one vector to flip at tau.
        atol = 1.01 / vectors if name.startswith("ratio") else 1e-5
        np.testing.assert_allclose(actual[name].numpy(), value.numpy(), rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("mixing", [None, "reattention", "talking"])
@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize("chunk", [1, 4, TOKENS - 1, None])
def test_equals_the_reference_at_every_chunk_size(mixing, axis, chunk):
    blocks = random_scores(num_blocks=4, batch=2, mixing=mixing)
    with torch.no_grad():
        actual = score_statistics(blocks, token_distances(GRID, 8), 1, k=2, tau=0.4, axis=axis, chunk=chunk)
    assert_close(actual, reference(blocks, 2, 0.4, axis), vectors=2 * HEADS * TOKENS)
    if mixing is None:
        assert actual["similarity_post"] is actual["similarity_pre"]


@pytest.mark.parametrize("mixing", [None, "reattention"])
@pytest.mark.parametrize("axis", ["columns", "rows"])
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_regimes_and_robustness_grid_equal_the_reference_at_every_chunk_size(mixing, axis, chunk):
    blocks = random_scores(num_blocks=5, batch=2, mixing=mixing)
    grid = ((1, 2, 3), (0.3, 0.4, 0.5, 0.6))
    with torch.no_grad():
        actual = score_statistics(
            blocks,
            token_distances(GRID, 8),
            1,
            k=2,
            tau=0.4,
            axis=axis,
            chunk=chunk,
            grid_ks=grid[0],
            grid_taus=grid[1],
        )
    assert_close(actual, reference(blocks, 2, 0.4, axis, grid), vectors=2 * HEADS * TOKENS)
    np.testing.assert_array_equal(actual["ratio_grid_pre"][1, 1].numpy(), actual["ratio_pre"].numpy())


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_sizes_and_neighbourhoods(batch):
    blocks = random_scores(num_blocks=5, batch=batch, mixing="reattention", seed=batch)
    with torch.no_grad():
        actual = score_statistics(blocks, token_distances(GRID, 8), 1, k=1, tau=0.6, chunk=5)
    assert_close(actual, reference(blocks, 1, 0.6, "columns"), vectors=batch * HEADS * TOKENS)


def test_relative_position_biases_are_added():
    blocks = random_scores(num_blocks=2, batch=2, mixing=None)
    bias = torch.randn(1, HEADS, TOKENS, TOKENS, generator=torch.Generator().manual_seed(3))
    blocks[1].biases = (bias,)
    actual = score_statistics(blocks, token_distances(GRID, 8), 1, chunk=3)
    logits = torch.einsum("bhid,bhjd->bhij", blocks[1].q, blocks[1].k) + bias
    expected = attention_entropy(torch.softmax(logits, dim=-1)[None])
    np.testing.assert_allclose(actual["entropy"][1].numpy(), expected[0].numpy(), rtol=1e-5)


def test_one_block_has_nan_ratios_and_unit_similarity():
    (block,) = random_scores(num_blocks=1, batch=2, mixing=None)
    actual = score_statistics([block], token_distances(GRID, 8), 1, chunk=2)
    assert torch.isnan(actual["ratio_pre"]).all()
    np.testing.assert_allclose(actual["similarity_pre"].numpy(), [[1.0]], rtol=1e-6)


@pytest.mark.parametrize("query", [0, None])
def test_query_weights_are_rows_of_the_maps(query):
    blocks = random_scores(num_blocks=2, batch=2, mixing="talking")
    maps = whole_maps(blocks)
    for index, block in enumerate(blocks):
        with torch.no_grad():
            pre, post = query_weights(block, query, chunk=4)
        for kind, weights in (("pre", pre), ("post", post)):
            expected = maps[kind][index][:, :, 0] if query == 0 else maps[kind][index].mean(dim=-2)
            np.testing.assert_allclose(weights.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


def test_nan_in_the_queries_is_reported_as_bad_maps():
    blocks = random_scores(num_blocks=3, batch=2, mixing=None)
    blocks[2].q[1, 0, 3, 0] = float("nan")
    with pytest.raises(DiagError, match="maps contains NaN or Inf values"):
        score_statistics(blocks, token_distances(GRID, 8), 1, chunk=4)
    with pytest.raises(DiagError, match="at position 7"), deferred_value_checks() as checks:
        checks.at(7)
        score_statistics(blocks, token_distances(GRID, 8), 1)


def test_bad_arguments_are_diag_errors():
    blocks = random_scores(num_blocks=2, batch=2, mixing=None)
    with pytest.raises(DiagError, match="token distances"):
        score_statistics(blocks, token_distances((2, 2), 8), 1)
    with pytest.raises(DiagError, match="axis"):
        score_statistics(blocks, token_distances(GRID, 8), 1, axis="diagonal")
    with pytest.raises(DiagError, match="at least one block"):
        score_statistics([], token_distances(GRID, 8), 1)


def test_chunk_for_budget_fits_the_budget():
    per_row = 4 * 2 * 3 * (50 * (2 * 6 + 3) + 6 * 6)
    assert chunk_for_budget(6, 2, 3, 50, 2, 10 * per_row) == 10
    assert chunk_for_budget(6, 2, 3, 50, 2, 11 * per_row - 1) == 10
    assert chunk_for_budget(6, 2, 3, 50, 2, per_row - 1) == 1  # at least one row
    assert chunk_for_budget(6, 2, 3, 50, 2, 1e12) == 50  # at most all of them


def test_sharp_rows_keep_their_precision_when_split_into_chunks():
    """A row whose first logit lies far below its largest: its log-softmax, not a normaliser read at
    that logit, gives the entropy, and the column Grams summed over chunks keep the similarity."""
    blocks = random_scores(num_blocks=3, batch=2, mixing=None, seed=5)
    far = torch.zeros(1, 1, TOKENS, TOKENS)
    far[..., 0] = -20000.0
    for block in blocks:
        block.q = block.q * 6
        block.biases = (far,)
    with torch.no_grad():
        actual = score_statistics(blocks, token_distances(GRID, 8), 1, chunk=4)
    maps = torch.stack([torch.softmax(b.q @ b.k.transpose(-2, -1) + far, dim=-1) for b in blocks])
    np.testing.assert_allclose(actual["similarity_pre"].numpy(), cross_layer_similarity(maps).numpy(), atol=1e-5)
    np.testing.assert_allclose(actual["entropy"].numpy(), attention_entropy(maps).numpy(), rtol=1e-5, atol=1e-5)
