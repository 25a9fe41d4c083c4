"""Similarity metrics (docs/metrics.md) against explicit-loop numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import (
    SimilarBlocks,
    collapse_statistics,
    cross_head_similarity,
    cross_layer_similarity,
    mean_off_diagonal,
    near_uniform_blocks,
    neighbour_similarity,
    ratio_grid,
    similar_blocks,
    similarity_ratio,
    uniformity,
)

EPS = 1e-12
AXES = ["columns", "rows"]


def correlated_maps(seed: int, shape=(4, 3, 3, 5)) -> torch.Tensor:
    """Signed maps (L, B, H, T, T): a shared base plus block noise of growing size, so that
    neighbour similarities spread around 0.5 instead of all sitting near 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    num_blocks, batch, heads, tokens = shape
    base = torch.randn(batch, heads, tokens, tokens, generator=generator)
    noise_scale = torch.linspace(0.3, 2.0, num_blocks).view(-1, 1, 1, 1, 1)
    return base + noise_scale * torch.randn(num_blocks, batch, heads, tokens, tokens, generator=generator)


def softmax_maps(seed: int, shape=(3, 2, 3, 5)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    num_blocks, batch, heads, tokens = shape
    return (2 * torch.randn(num_blocks, batch, heads, tokens, tokens, generator=generator)).softmax(dim=-1)


# ---- brute force: plain numpy, one cosine at a time ----


def np_cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (max(np.linalg.norm(u), EPS) * max(np.linalg.norm(v), EPS)))


def np_vector(maps: np.ndarray, l: int, b: int, h: int, t: int, axis: str) -> np.ndarray:
    return maps[l, b, h, :, t] if axis == "columns" else maps[l, b, h, t, :]


def brute_pairwise(maps: torch.Tensor, axis: str) -> np.ndarray:
    """M[p, q, b, h, t] (docs/metrics.md, cross-layer similarity)."""
    a = maps.double().numpy()
    num_blocks, batch, heads, tokens = a.shape[:4]
    m = np.zeros((num_blocks, num_blocks, batch, heads, tokens))
    for p in range(num_blocks):
        for q in range(num_blocks):
            for b in range(batch):
                for h in range(heads):
                    for t in range(tokens):
                        m[p, q, b, h, t] = np_cosine(np_vector(a, p, b, h, t, axis), np_vector(a, q, b, h, t, axis))
    return m


def brute_similarity(maps: torch.Tensor, axis: str) -> np.ndarray:
    m = brute_pairwise(maps, axis)
    num_blocks = m.shape[0]
    return np.array([[m[p, q].mean() for q in range(num_blocks)] for p in range(num_blocks)])


def brute_neighbour(maps: torch.Tensor, k: int, axis: str) -> np.ndarray:
    m = brute_pairwise(maps, axis)
    num_blocks = m.shape[0]
    out = np.full(m.shape[1:], np.nan)
    for p in range(num_blocks):
        neighbours = [q for q in range(num_blocks) if 1 <= abs(q - p) <= k]
        if neighbours:
            out[p] = sum(m[p, q] for q in neighbours) / len(neighbours)
    return out


def brute_ratio(maps: torch.Tensor, k: int, tau: float, axis: str) -> np.ndarray:
    averages = brute_neighbour(maps, k, axis)
    ratios = []
    for block in averages:
        values = block.flatten().tolist()
        ratios.append(np.nan if np.isnan(values[0]) else sum(v > tau for v in values) / len(values))
    return np.array(ratios)


def brute_cross_head(maps: torch.Tensor, axis: str) -> np.ndarray:
    a = maps.double().numpy()
    num_blocks, batch, heads, tokens = a.shape[:4]
    out = np.zeros((num_blocks, heads, heads))
    for l in range(num_blocks):
        for g in range(heads):
            for h in range(heads):
                cosines = [
                    np_cosine(np_vector(a, l, b, g, t, axis), np_vector(a, l, b, h, t, axis))
                    for b in range(batch)
                    for t in range(tokens)
                ]
                out[l, g, h] = sum(cosines) / len(cosines)
    return out


def assert_close(actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=atol, rtol=0)


# ---- against brute force ----


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("make_maps", [correlated_maps, softmax_maps])
def test_cross_layer_similarity_matches_brute_force(axis, make_maps):
    maps = make_maps(1)
    assert_close(cross_layer_similarity(maps, axis=axis), brute_similarity(maps, axis))


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_neighbour_similarity_matches_brute_force(axis, k):
    maps = correlated_maps(2)
    assert_close(neighbour_similarity(maps, k=k, axis=axis), brute_neighbour(maps, k, axis))


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("k, tau", [(1, 0.5), (2, 0.5), (2, 0.2), (3, 0.7)])
def test_similarity_ratio_matches_brute_force(axis, k, tau):
    maps = correlated_maps(3)
    expected = brute_ratio(maps, k, tau, axis)
    # The example must exercise the threshold: some block strictly between 0 and 1.
    assert ((expected > 0) & (expected < 1)).any()
    assert_close(similarity_ratio(maps, k=k, tau=tau, axis=axis), expected, atol=1e-6)


@pytest.mark.parametrize("axis", AXES)
def test_cross_head_similarity_matches_brute_force(axis):
    maps = correlated_maps(4)
    assert_close(cross_head_similarity(maps, axis=axis), brute_cross_head(maps, axis))


def test_mean_off_diagonal_matches_loop():
    matrices = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    expected = np.zeros((3, 2))
    for index in np.ndindex(3, 2):
        values = [matrices[index][g, h].item() for g in range(4) for h in range(4) if g != h]
        expected[index] = sum(values) / len(values)
    assert_close(mean_off_diagonal(matrices), expected, atol=1e-6)


def test_similar_blocks_are_the_ratios_strictly_above_rho():
    ratio = torch.rand(7, generator=torch.Generator().manual_seed(6))
    rho = float(ratio.median())
    expected = [index for index, value in enumerate(ratio.tolist()) if value > rho]
    assert similar_blocks(ratio, rho=rho) == SimilarBlocks(count=len(expected), indices=expected)
    # exactly rho is not above rho; NaN never counts
    assert similar_blocks(torch.tensor([0.9, 0.95, float("nan")]), rho=0.9) == SimilarBlocks(1, [1])


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("make_maps", [correlated_maps, softmax_maps])
def test_collapse_statistics_agrees_with_reference_functions(axis, k, make_maps):
    maps = make_maps(7)
    fast = collapse_statistics(maps, k=k, tau=0.5, axis=axis)
    assert set(fast) == {"similarity", "ratio", "cross_head"}
    torch.testing.assert_close(fast["similarity"], cross_layer_similarity(maps, axis=axis), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast["ratio"], similarity_ratio(maps, k=k, tau=0.5, axis=axis), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast["cross_head"], cross_head_similarity(maps, axis=axis), atol=1e-5, rtol=0)


@pytest.mark.parametrize("axis", AXES)
def test_collapse_statistics_overwrite_gives_the_same_numbers_and_only_touches_float32(axis):
    maps = correlated_maps(19)
    expected = collapse_statistics(maps, axis=axis)
    scratch = maps.clone()
    overwritten = collapse_statistics(scratch, axis=axis, overwrite=True)
    for key, value in expected.items():
        torch.testing.assert_close(overwritten[key], value, atol=0, rtol=0)
    # The float32 maps now hold the unit vectors: norm 1 along the vector dim.
    norms = scratch.norm(dim=-2 if axis == "columns" else -1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    low = maps.bfloat16()
    kept = low.clone()
    collapse_statistics(low, axis=axis, overwrite=True)
    assert torch.equal(low, kept)


def test_collapse_statistics_accepts_non_contiguous_maps():
    maps = correlated_maps(20)
    strided = maps.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    assert not strided.is_contiguous()
    for key, value in collapse_statistics(maps).items():
        torch.testing.assert_close(collapse_statistics(strided, overwrite=True)[key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(strided, maps)  # not normalised in place: it is not contiguous


def test_collapse_statistics_stays_exact_with_many_vectors():
    """S and C sum over B * H * T vectors; float32 accumulation must not drift from a
    float64 computation (one Gram product over whole blocks was off by ~1e-4 here)."""
    generator = torch.Generator().manual_seed(21)
    maps = (3 * torch.randn(4, 16, 4, 65, 65, generator=generator)).softmax(dim=-1)
    unit = torch.nn.functional.normalize(maps.double(), dim=-2)
    flat = unit.reshape(4, -1)
    exact_similarity = flat @ flat.T / (16 * 4 * 65)
    per_head = unit.transpose(1, 2).reshape(4, 4, -1)
    exact_cross_head = per_head @ per_head.transpose(1, 2) / (16 * 65)
    fast = collapse_statistics(maps)
    np.testing.assert_allclose(fast["similarity"].double().numpy(), exact_similarity.numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(fast["cross_head"].double().numpy(), exact_cross_head.numpy(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("axis", AXES)
def test_collapse_statistics_matches_brute_force(axis):
    maps = correlated_maps(8)
    fast = collapse_statistics(maps, k=2, tau=0.5, axis=axis)
    assert_close(fast["similarity"], brute_similarity(maps, axis))
    assert_close(fast["ratio"], brute_ratio(maps, 2, 0.5, axis), atol=1e-6)
    assert_close(fast["cross_head"], brute_cross_head(maps, axis))


def test_rows_and_columns_differ_on_non_symmetric_maps():
    maps = correlated_maps(9)
    assert not torch.allclose(maps, maps.transpose(-1, -2))
    by_column = brute_similarity(maps, "columns")
    by_row = brute_similarity(maps, "rows")
    assert np.abs(by_column - by_row).max() > 1e-2
    assert_close(cross_layer_similarity(maps, axis="columns"), by_column)
    assert_close(cross_layer_similarity(maps, axis="rows"), by_row)
    assert_close(collapse_statistics(maps, axis="rows")["cross_head"], brute_cross_head(maps, "rows"))
    assert_close(collapse_statistics(maps, axis="columns")["cross_head"], brute_cross_head(maps, "columns"))


# ---- sanity cases ----


@pytest.mark.parametrize("axis", AXES)
def test_identical_blocks_are_fully_similar(axis):
    num_blocks = 4
    maps = softmax_maps(10, shape=(1, 2, 3, 5)).expand(num_blocks, -1, -1, -1, -1)
    ones = torch.ones(num_blocks, num_blocks)
    torch.testing.assert_close(cross_layer_similarity(maps, axis=axis), ones)
    ratio = similarity_ratio(maps, axis=axis)
    torch.testing.assert_close(ratio, torch.ones(num_blocks))
    assert similar_blocks(ratio) == SimilarBlocks(num_blocks, list(range(num_blocks)))
    fast = collapse_statistics(maps, axis=axis)
    torch.testing.assert_close(fast["similarity"], ones)
    torch.testing.assert_close(fast["ratio"], torch.ones(num_blocks))


def test_zero_vector_has_cosine_zero():
    # Column 2 is zero in every block: those vectors have cosine 0, all others 1.
    tokens = 5
    maps = softmax_maps(11, shape=(1, 2, 3, tokens)).repeat(3, 1, 1, 1, 1)
    maps[..., 2] = 0
    expected = torch.full((3, 3), (tokens - 1) / tokens)
    torch.testing.assert_close(cross_layer_similarity(maps), expected)
    torch.testing.assert_close(collapse_statistics(maps)["similarity"], expected)
    assert_close(cross_layer_similarity(maps), brute_similarity(maps, "columns"))


def test_heads_with_identical_maps_have_cross_head_similarity_one():
    maps = softmax_maps(12, shape=(2, 2, 1, 5)).expand(-1, -1, 3, -1, -1)
    torch.testing.assert_close(cross_head_similarity(maps), torch.ones(2, 3, 3))
    torch.testing.assert_close(mean_off_diagonal(cross_head_similarity(maps)), torch.ones(2))


def test_single_block_has_no_neighbours():
    maps = softmax_maps(13, shape=(1, 2, 3, 5))
    assert neighbour_similarity(maps).isnan().all()
    assert similarity_ratio(maps).isnan().all()
    fast = collapse_statistics(maps)
    assert fast["ratio"].isnan().all()
    torch.testing.assert_close(fast["similarity"], torch.ones(1, 1))
    assert similar_blocks(fast["ratio"]) == SimilarBlocks(0, [])


# ---- streaming, dtype, device ----


def test_batch_weighted_recombination_equals_all_at_once():
    maps = correlated_maps(14, shape=(3, 3, 2, 5))
    parts = [maps[:, :1], maps[:, 1:]]

    def recombined(metric):
        return sum(metric(part) * part.shape[1] for part in parts) / maps.shape[1]

    for metric in (
        cross_layer_similarity,
        similarity_ratio,
        cross_head_similarity,
        lambda m: mean_off_diagonal(cross_head_similarity(m)),
        lambda m: collapse_statistics(m)["similarity"],
        lambda m: collapse_statistics(m)["ratio"],
        lambda m: collapse_statistics(m)["cross_head"],
    ):
        torch.testing.assert_close(recombined(metric), metric(maps), atol=1e-6, rtol=0)


def test_bfloat16_input_gives_float32_answer():
    maps = softmax_maps(15)
    low = maps.bfloat16()
    for metric in (cross_layer_similarity, similarity_ratio, cross_head_similarity):
        result = metric(low)
        assert result.dtype == torch.float32
        # computed in float32 from the rounded maps ...
        torch.testing.assert_close(result, metric(low.float()), atol=1e-6, rtol=0)
        # ... hence within bfloat16 rounding of the float32 answer
        torch.testing.assert_close(result, metric(maps), atol=2e-2, rtol=0)
    fast = collapse_statistics(low)
    for key, value in collapse_statistics(maps).items():
        torch.testing.assert_close(fast[key], value, atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_stay_on_device_and_match_cpu():
    maps = correlated_maps(16)
    on_cpu = collapse_statistics(maps)
    on_gpu = collapse_statistics(maps.cuda().bfloat16().float())
    for key, value in on_gpu.items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), on_cpu[key], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        cross_layer_similarity(maps.cuda()).cpu(), cross_layer_similarity(maps), atol=1e-5, rtol=0
    )


# ---- bad input ----


@pytest.mark.parametrize(
    "call",
    [cross_layer_similarity, neighbour_similarity, similarity_ratio, cross_head_similarity, collapse_statistics],
)
def test_bad_maps_raise_diag_error(call):
    good = softmax_maps(17)
    with_nan = good.clone()
    with_nan[0, 0, 0, 0, 0] = float("nan")
    for bad in (good[0], good[..., :-1], with_nan, good.to(torch.int64), [good[0], good[1, :, :-1]], "maps"):
        with pytest.raises(DiagError):
            call(bad)
    with pytest.raises(DiagError):
        call(good, axis="diagonal")


def test_bad_parameters_raise_diag_error():
    maps = softmax_maps(18)
    for bad_k in (0, -1, 1.5):
        with pytest.raises(DiagError):
            similarity_ratio(maps, k=bad_k)
        with pytest.raises(DiagError):
            collapse_statistics(maps, k=bad_k)
    with pytest.raises(DiagError):
        similar_blocks(torch.ones(2, 2))
    with pytest.raises(DiagError):
        mean_off_diagonal(torch.ones(2, 3))


# ---- attention regimes and the robustness grid ----


def brute_uniformity(maps: torch.Tensor) -> np.ndarray:
    """U[l, h]: mean over b, i of the squared cosine of row i with the all-ones row, one row at a time."""
    a = maps.double().numpy()
    num_blocks, batch, heads, tokens = a.shape[:4]
    out = np.zeros((num_blocks, heads))
    for l in range(num_blocks):
        for h in range(heads):
            out[l, h] = np.mean(
                [np_cosine(a[l, b, h, i], np.ones(tokens)) ** 2 for b in range(batch) for i in range(tokens)]
            )
    return out


@pytest.mark.parametrize("make_maps", [correlated_maps, softmax_maps])
def test_uniformity_matches_brute_force(make_maps):
    maps = make_maps(3)
    np.testing.assert_allclose(uniformity(maps).numpy(), brute_uniformity(maps), atol=1e-6)


def test_uniformity_is_one_for_uniform_maps_and_one_over_t_for_one_hot_rows():
    tokens = 6
    uniform = torch.full((2, 3, 4, tokens, tokens), 1 / tokens)
    torch.testing.assert_close(uniformity(uniform), torch.ones(2, 4))
    one_hot = torch.eye(tokens).expand(2, 3, 4, tokens, tokens)
    torch.testing.assert_close(uniformity(one_hot), torch.full((2, 4), 1 / tokens))
    # A softmax row's value is its inverse Simpson index over T: 1 / (T sum p^2).
    row = torch.tensor([0.5, 0.25, 0.25, 0.0])
    maps = row.expand(1, 1, 1, 4, 4)
    assert uniformity(maps).item() == pytest.approx(1 / (4 * float((row**2).sum())))
    # Signed constant rows (a post-Θ map of uniform attention) are uniform too; zero rows are not.
    assert uniformity(-3 * torch.ones(1, 1, 1, 4, 4)).item() == pytest.approx(1.0)
    assert uniformity(torch.zeros(1, 1, 1, 4, 4)).item() == 0.0


def test_near_uniform_blocks_threshold_the_head_average():
    values = torch.tensor([[0.9, 0.9], [0.95, 0.5], [0.6, 0.7]])
    assert near_uniform_blocks(values, 0.8) == [0]
    assert near_uniform_blocks(values, 0.7) == [0, 1]
    with pytest.raises(DiagError, match="shape"):
        near_uniform_blocks(torch.ones(3), 0.8)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("make_maps", [correlated_maps, softmax_maps])
def test_ratio_grid_equals_separate_runs_at_each_k_and_tau(axis, make_maps):
    maps = make_maps(11, shape=(5, 2, 3, 5))
    ks, taus = (1, 2, 3), (0.3, 0.4, 0.5, 0.6, 0.7)
    fast = collapse_statistics(maps.clone(), k=2, tau=0.5, axis=axis, grid_ks=ks, grid_taus=taus)["ratio_grid"]
    assert fast.shape == (3, 5, 5)
    for i, k in enumerate(ks):
        for j, tau in enumerate(taus):
            separate = collapse_statistics(maps.clone(), k=k, tau=tau, axis=axis)["ratio"]
            torch.testing.assert_close(fast[i, j], separate, atol=0, rtol=0)
            torch.testing.assert_close(fast[i, j], similarity_ratio(maps, k=k, tau=tau, axis=axis), atol=1e-5, rtol=0)
    torch.testing.assert_close(ratio_grid(maps, ks, taus, axis), fast, atol=1e-5, rtol=0)
