"""Token similarity and rank collapse (docs/metrics.md) against numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import block_influence, rank_collapse, token_similarity

EPS = 1e-12


def random_hidden(seed: int, shape=(3, 3, 6, 8)) -> torch.Tensor:
    """(L, B, T, D) with a per-block shared component, so token cosines are not all ~0."""
    generator = torch.Generator().manual_seed(seed)
    num_blocks, batch, tokens, width = shape
    shared = torch.randn(num_blocks, batch, 1, width, generator=generator)
    return shared + torch.randn(shape, generator=generator)


# ---- brute force ----


def brute_token_similarity(hidden: torch.Tensor, prefix: int) -> np.ndarray:
    x = hidden.double().numpy()
    num_blocks, batch, tokens = x.shape[:3]
    out = np.zeros(num_blocks)
    for l in range(num_blocks):
        per_image = []
        for b in range(batch):
            cosines = []
            for i in range(prefix, tokens):
                for j in range(prefix, tokens):
                    if i != j:
                        u, v = x[l, b, i], x[l, b, j]
                        cosines.append(u @ v / (max(np.linalg.norm(u), EPS) * max(np.linalg.norm(v), EPS)))
            per_image.append(sum(cosines) / len(cosines))
        out[l] = sum(per_image) / len(per_image)
    return out


def brute_rank_collapse(hidden: torch.Tensor) -> np.ndarray:
    x = hidden.double().numpy()
    num_blocks, batch = x.shape[:2]

    def norm_1_inf(matrix: np.ndarray) -> float:
        # numpy's induced norms: ord=1 max column abs-sum, ord=inf max row abs-sum
        return float(np.sqrt(np.linalg.norm(matrix, 1) * np.linalg.norm(matrix, np.inf)))

    out = np.zeros(num_blocks)
    for l in range(num_blocks):
        ratios = []
        for b in range(batch):
            matrix = x[l, b]
            residual = matrix - np.ones((matrix.shape[0], 1)) @ matrix.mean(axis=0, keepdims=True)
            ratios.append(norm_1_inf(residual) / norm_1_inf(matrix))
        out[l] = sum(ratios) / len(ratios)
    return out


def assert_close(actual: torch.Tensor, expected: np.ndarray, atol: float = 1e-5) -> None:
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=atol, rtol=1e-6)


# ---- against brute force ----


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_token_similarity_matches_brute_force(prefix):
    hidden = random_hidden(1)
    assert_close(token_similarity(hidden, num_prefix_tokens=prefix), brute_token_similarity(hidden, prefix))


def test_rank_collapse_matches_brute_force():
    hidden = random_hidden(2, shape=(3, 3, 5, 7))  # T != D catches swapped row/column norms
    assert_close(rank_collapse(hidden), brute_rank_collapse(hidden))


# ---- sanity cases ----


def test_equal_tokens_are_fully_similar_and_rank_collapsed():
    generator = torch.Generator().manual_seed(3)
    token = torch.randn(3, 2, 1, 8, generator=generator)
    hidden = token.expand(-1, -1, 5, -1)
    torch.testing.assert_close(rank_collapse(hidden), torch.zeros(3))
    torch.testing.assert_close(token_similarity(hidden, num_prefix_tokens=0), torch.ones(3))
    # A different CLS token does not count: only patch tokens are compared.
    with_cls = torch.cat([torch.randn(3, 2, 1, 8, generator=generator), hidden], dim=2)
    torch.testing.assert_close(token_similarity(with_cls, num_prefix_tokens=1), torch.ones(3))


def test_opposite_tokens_have_similarity_minus_one():
    token = torch.randn(1, 2, 1, 8, generator=torch.Generator().manual_seed(4))
    hidden = torch.cat([token, -token], dim=2)
    torch.testing.assert_close(token_similarity(hidden, num_prefix_tokens=0), torch.full((1,), -1.0))


def test_zero_tokens_have_cosine_zero_and_residual_zero():
    hidden = torch.zeros(2, 2, 4, 8)
    torch.testing.assert_close(token_similarity(hidden, num_prefix_tokens=0), torch.zeros(2))
    torch.testing.assert_close(rank_collapse(hidden), torch.zeros(2))


def test_rank_collapse_is_scale_invariant_and_at_most_two():
    # ||X - 1 mean^T||_1 <= 2 ||X||_1 and likewise for inf, so r <= 2.
    hidden = random_hidden(5)
    torch.testing.assert_close(rank_collapse(hidden * 7.5), rank_collapse(hidden))
    assert (rank_collapse(hidden) <= 2).all()


# ---- streaming, dtype, bad input ----


def test_batch_weighted_recombination_equals_all_at_once():
    hidden = random_hidden(6)
    parts = [hidden[:, :1], hidden[:, 1:]]
    for metric in (token_similarity, rank_collapse):
        recombined = sum(metric(part) * part.shape[1] for part in parts) / hidden.shape[1]
        torch.testing.assert_close(recombined, metric(hidden), atol=1e-6, rtol=0)


def test_bfloat16_input_gives_float32_answer():
    hidden = random_hidden(7)
    low = hidden.bfloat16()
    for metric in (token_similarity, rank_collapse):
        result = metric(low)
        assert result.dtype == torch.float32
        torch.testing.assert_close(result, metric(low.float()), atol=1e-6, rtol=0)
        torch.testing.assert_close(result, metric(hidden), atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_stay_on_device_and_match_cpu():
    hidden = random_hidden(8)
    for metric in (token_similarity, rank_collapse):
        on_gpu = metric(hidden.cuda())
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), metric(hidden), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("metric", [token_similarity, rank_collapse])
def test_bad_hidden_raises_diag_error(metric):
    good = random_hidden(9)
    with_nan = good.clone()
    with_nan[0, 0, 0, 0] = float("nan")
    for bad in (good[0], good[None], with_nan, good.numpy(), torch.zeros(2, 0, 4, 8)):
        with pytest.raises(DiagError):
            metric(bad)


def test_too_few_patch_tokens_raise_diag_error():
    hidden = random_hidden(10, shape=(1, 1, 3, 4))
    with pytest.raises(DiagError):
        token_similarity(hidden, num_prefix_tokens=2)  # one patch token: no pairs
    with pytest.raises(DiagError):
        token_similarity(hidden, num_prefix_tokens=-1)


# ---- Block Influence ----


def brute_block_influence(hidden: torch.Tensor, first_input: torch.Tensor) -> np.ndarray:
    outputs = hidden.double().numpy()
    inputs = np.concatenate([first_input.double().numpy()[None], outputs[:-1]])
    num_blocks, batch, tokens = outputs.shape[:3]
    out = np.zeros(num_blocks)
    for l in range(num_blocks):
        cosines = []
        for b in range(batch):
            for t in range(tokens):
                u, v = inputs[l, b, t], outputs[l, b, t]
                cosines.append(u @ v / (max(np.linalg.norm(u), EPS) * max(np.linalg.norm(v), EPS)))
        out[l] = 1 - np.mean(cosines)
    return out


def test_block_influence_matches_a_loop():
    hidden = random_hidden(3)
    first_input = torch.randn(hidden.shape[1:], generator=torch.Generator().manual_seed(4))
    np.testing.assert_allclose(
        block_influence(hidden, first_input).numpy(), brute_block_influence(hidden, first_input), atol=1e-6
    )


def test_block_influence_is_zero_for_a_block_that_passes_its_input_on_and_a_mean_per_image():
    hidden = random_hidden(5)
    first_input = hidden[0].clone()
    hidden[2] = hidden[1]  # block 2 outputs its input
    influence = block_influence(hidden, first_input)
    assert influence[0] == pytest.approx(0, abs=1e-6) and influence[2] == pytest.approx(0, abs=1e-6)
    assert influence[1] > 0.1
    halves = [block_influence(hidden[:, part], first_input[part]) for part in (slice(0, 1), slice(1, 3))]
    torch.testing.assert_close((halves[0] * 1 + halves[1] * 2) / 3, influence)


def test_block_influence_refuses_mismatched_input():
    with pytest.raises(DiagError, match="first_input must have shape"):
        block_influence(random_hidden(0), torch.randn(3, 6, 7))
