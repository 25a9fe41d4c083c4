"""Attention entropy and mean attention distance (docs/metrics.md) against loops, and the fast path against both."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import attention_entropy, mean_attention_distance, softmax_statistics, token_distances


def softmax_maps(seed: int, shape=(3, 2, 3, 17), with_zeros: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    num_blocks, batch, heads, tokens = shape
    logits = 2 * torch.randn(num_blocks, batch, heads, tokens, tokens, generator=generator)
    if with_zeros:
        # Exact zeros exercise 0 ln 0 = 0; the diagonal stays finite so no row is all zero.
        masked = torch.rand(logits.shape, generator=generator) < 0.3
        logits = logits.masked_fill(masked & ~torch.eye(tokens, dtype=torch.bool), float("-inf"))
    return logits.softmax(dim=-1)


# ---- brute force ----


def brute_entropy(maps: torch.Tensor) -> np.ndarray:
    a = maps.double().numpy()
    num_blocks, batch, heads, tokens = a.shape[:4]
    out = np.zeros((num_blocks, heads))
    for l in range(num_blocks):
        for h in range(heads):
            rows = [-sum(w * math.log(w) for w in a[l, b, h, i] if w > 0) for b in range(batch) for i in range(tokens)]
            out[l, h] = sum(rows) / len(rows)
    return out


def brute_distance(maps: torch.Tensor, patch: tuple[float, float], prefix: int, grid: tuple[int, int]) -> np.ndarray:
    a = maps.double().numpy()
    num_blocks, batch, heads, tokens = a.shape[:4]
    rows_in_grid, cols_in_grid = grid
    assert rows_in_grid * cols_in_grid == tokens - prefix

    def centre(n: int) -> tuple[float, float]:
        return (n // cols_in_grid) * patch[0], (n % cols_in_grid) * patch[1]

    out = np.zeros((num_blocks, heads))
    for l in range(num_blocks):
        for h in range(heads):
            per_query = []
            for b in range(batch):
                for i in range(tokens - prefix):
                    total = 0.0
                    for j in range(tokens - prefix):
                        (yi, xi), (yj, xj) = centre(i), centre(j)
                        total += a[l, b, h, prefix + i, prefix + j] * math.hypot(yi - yj, xi - xj)
                    per_query.append(total)
            out[l, h] = sum(per_query) / len(per_query)
    return out


def assert_close(actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=atol, rtol=1e-6)


# ---- entropy ----


@pytest.mark.parametrize("with_zeros", [False, True])
def test_entropy_matches_brute_force(with_zeros):
    maps = softmax_maps(1, with_zeros=with_zeros)
    if with_zeros:
        assert (maps == 0).any()
    assert_close(attention_entropy(maps), brute_entropy(maps))


def test_uniform_attention_has_entropy_ln_t():
    tokens = 9
    maps = torch.full((2, 3, 4, tokens, tokens), 1 / tokens)
    torch.testing.assert_close(attention_entropy(maps), torch.full((2, 4), math.log(tokens)))


def test_one_hot_attention_has_entropy_zero():
    tokens = 6
    targets = torch.randint(0, tokens, (2, 3, 4, tokens), generator=torch.Generator().manual_seed(2))
    maps = torch.nn.functional.one_hot(targets, tokens).float()
    torch.testing.assert_close(attention_entropy(maps), torch.zeros(2, 4))


# ---- mean attention distance ----


@pytest.mark.parametrize(
    "tokens, prefix, patch, grid_size, grid",
    [
        (17, 1, 16, None, (4, 4)),  # CLS + 4x4 grid, square grid inferred
        (9, 0, 4, None, (3, 3)),  # no prefix token
        (8, 2, 16, (2, 3), (2, 3)),  # two prefix tokens, non-square grid
        (7, 1, (4, 8), (3, 2), (3, 2)),  # non-square patches
    ],
)
def test_mean_attention_distance_matches_brute_force(tokens, prefix, patch, grid_size, grid):
    maps = softmax_maps(3, shape=(2, 2, 3, tokens))
    patch_pair = (patch, patch) if isinstance(patch, int) else patch
    result = mean_attention_distance(maps, patch, num_prefix_tokens=prefix, grid_size=grid_size)
    assert_close(result, brute_distance(maps, patch_pair, prefix, grid))


def test_attention_to_self_or_prefix_has_distance_zero():
    # Rows are not renormalised after dropping the prefix: weight on CLS adds no distance.
    tokens = 10
    self_and_cls = 0.5 * torch.eye(tokens)
    self_and_cls[:, 0] += 0.5
    maps = self_and_cls.expand(2, 2, 3, tokens, tokens)
    torch.testing.assert_close(mean_attention_distance(maps, 16), torch.zeros(2, 3))


def test_attention_to_right_neighbour_is_one_patch_away():
    # On a 3x3 grid the 6 patches with a right neighbour look there, the other 3 at themselves.
    side, patch = 3, 16
    tokens = 1 + side * side
    target = torch.arange(tokens)
    for n in range(side * side):
        if n % side < side - 1:
            target[1 + n] = 1 + n + 1
    maps = torch.nn.functional.one_hot(target, tokens).float().expand(1, 2, 2, tokens, tokens)
    expected = patch * (side * (side - 1)) / (side * side)
    torch.testing.assert_close(mean_attention_distance(maps, patch), torch.full((1, 2), expected))


# ---- streaming, dtype, bad input ----


def test_batch_weighted_recombination_equals_all_at_once():
    maps = softmax_maps(4, shape=(2, 3, 2, 17))
    parts = [maps[:, :2], maps[:, 2:]]
    for metric in (attention_entropy, lambda m: mean_attention_distance(m, 16)):
        recombined = sum(metric(part) * part.shape[1] for part in parts) / maps.shape[1]
        torch.testing.assert_close(recombined, metric(maps), atol=1e-5, rtol=1e-6)


def test_bfloat16_input_gives_float32_answer():
    maps = softmax_maps(5)
    low = maps.bfloat16()
    for metric, tolerance in ((attention_entropy, 2e-2), (lambda m: mean_attention_distance(m, 16), 0.2)):
        result = metric(low)
        assert result.dtype == torch.float32
        torch.testing.assert_close(result, metric(low.float()), atol=1e-6, rtol=0)
        torch.testing.assert_close(result, metric(maps), atol=tolerance, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_stay_on_device_and_match_cpu():
    maps = softmax_maps(6)
    for metric in (attention_entropy, lambda m: mean_attention_distance(m, 16)):
        on_gpu = metric(maps.cuda())
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), metric(maps), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("metric", [attention_entropy, lambda m: mean_attention_distance(m, 16)])
def test_bad_maps_raise_diag_error(metric):
    good = softmax_maps(7)
    with_nan = good.clone()
    with_nan[0, 0, 0, 0, 0] = float("nan")
    negative = good - 0.01  # Theta-mixed "post" maps are not distributions
    for bad in (good[0], good[..., :-1], with_nan, negative, good.tolist()):
        with pytest.raises(DiagError):
            metric(bad)


def test_bad_grid_or_patch_raises_diag_error():
    maps = softmax_maps(8, shape=(1, 1, 1, 7))  # 6 patch tokens after CLS: not square
    with pytest.raises(DiagError, match="square"):
        mean_attention_distance(maps, 16)
    with pytest.raises(DiagError):
        mean_attention_distance(maps, 16, grid_size=(2, 2))
    with pytest.raises(DiagError):
        mean_attention_distance(maps, 16, num_prefix_tokens=7)
    for bad_patch in (0, -4, (4, 4, 4)):
        with pytest.raises(DiagError):
            mean_attention_distance(maps, bad_patch, grid_size=(2, 3))


@pytest.mark.parametrize(("prefix", "grid", "patch"), [(1, (4, 4), (8, 8)), (0, (3, 5), (4, 6)), (5, (2, 3), (16, 16))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_statistics_agree_with_reference_functions(prefix, grid, patch, dtype):
    tokens = prefix + grid[0] * grid[1]
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(3, 4, 2, tokens, tokens, generator=generator)
    masked = (torch.rand(logits.shape, generator=generator) < 0.3) & ~torch.eye(tokens, dtype=torch.bool)
    maps = logits.masked_fill(masked, float("-inf")).softmax(dim=-1).to(dtype)  # exact zeros: 0 ln 0 = 0
    entropy, distance = softmax_statistics(maps, token_distances(grid, patch, prefix), prefix)
    torch.testing.assert_close(entropy, attention_entropy(maps), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(distance, mean_attention_distance(maps, patch, prefix, grid), atol=2e-5, rtol=1e-5)


def test_token_distances_are_pixel_distances_between_patch_centres():
    distances = token_distances((2, 3), (4, 6), num_prefix_tokens=1)
    assert distances.shape == (7, 7)
    assert distances[0].abs().sum() == 0 and distances[:, 0].abs().sum() == 0  # the CLS token has no position
    # Token 1 is patch (0, 0), token 6 is patch (1, 2): 4 px down, 12 px right.
    assert distances[1, 6].item() == pytest.approx(math.hypot(4, 12))


def test_softmax_statistics_reject_maps_of_another_model():
    with pytest.raises(DiagError, match="tokens"):
        softmax_statistics(torch.rand(2, 1, 2, 10, 10).softmax(-1), token_distances((4, 4), 8), 1)
