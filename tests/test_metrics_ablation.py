"""The per-image effect of an ablation and the Spearman correlation (docs/metrics.md) against numpy and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import feature_cosine, prediction_divergence, spearman, top1_agreement


def pair(seed: int, shape=(2, 5, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape[1:], generator=generator) * 3, torch.randn(shape, generator=generator) * 3


def test_prediction_divergence_is_the_kl_of_the_softmaxes():
    reference, ablated = pair(0)
    p = np.exp(reference.double().numpy())
    p /= p.sum(-1, keepdims=True)
    q = np.exp(ablated.double().numpy())
    q /= q.sum(-1, keepdims=True)
    expected = (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(prediction_divergence(reference, ablated).numpy(), expected, rtol=1e-4, atol=1e-6)
    assert prediction_divergence(reference, reference).abs().max() < 1e-6
    assert (prediction_divergence(reference, ablated) >= 0).all()


def test_top1_agreement_and_feature_cosine():
    reference, ablated = pair(1)
    ablated[0, :2] = reference[:2] * 2  # same argmax, same direction
    agreement = top1_agreement(reference, ablated).numpy()
    np.testing.assert_array_equal(agreement, (ablated.argmax(-1) == reference.argmax(-1)).float().numpy())
    assert agreement[0, :2].tolist() == [1, 1]
    f, g = reference.double().numpy(), ablated.double().numpy()
    expected = (f * g).sum(-1) / np.linalg.norm(f, axis=-1) / np.linalg.norm(g, axis=-1)
    np.testing.assert_allclose(feature_cosine(reference, ablated).numpy(), expected, rtol=1e-5)
    assert feature_cosine(reference, -reference).numpy() == pytest.approx(-1)


def test_shapes_must_agree():
    reference, ablated = pair(2)
    with pytest.raises(DiagError, match="ablated logits must have shape"):
        prediction_divergence(reference, ablated[..., :3])


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, 5, 12).astype(float), rng.normal(size=12)
    assert spearman(first, second) == pytest.approx(spearmanr(first, second).statistic, abs=1e-12)


def test_spearman_skips_nan_and_is_nan_when_undefined():
    assert spearman(np.array([1.0, np.nan, 3, 4, 5]), np.array([5.0, 1, 3, 2, 1])) == pytest.approx(
        spearmanr([1, 3, 4, 5], [5, 3, 2, 1]).statistic
    )
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman(np.arange(2.0), np.arange(2.0)))
