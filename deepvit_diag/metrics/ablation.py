"""What an ablation changes in a model's output, per image, and how well a proxy ranks the blocks.

``prediction_divergence``, ``top1_agreement`` and ``feature_cosine`` compare an ablated
model's output with the intact model's on the same images (docs/metrics.md, ablation); each
returns one value per image, so sums over batches divided by the number of images are exact
dataset means. ``spearman`` relates a per-block proxy (similarity ratio, Block Influence) to
the measured per-block removal cost.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiagError
from ._checks import as_float32
from .similarity import COSINE_EPS


def _paired(reference: object, ablated: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float32 (..., B, X) of the same trailing shape; the reference may lack leading dims."""
    reference = as_float32(reference, f"intact {name}", 2, "(B, X)")
    if not isinstance(ablated, torch.Tensor) or ablated.ndim < 2 or ablated.shape[-2:] != reference.shape:
        got = tuple(ablated.shape) if isinstance(ablated, torch.Tensor) else type(ablated).__name__
        raise DiagError(f"ablated {name} must have shape (..., {', '.join(map(str, reference.shape))}), got {got}")
    return reference, ablated.float()


def prediction_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL divergence of the ablated predictive distribution from the intact one, per image.

    ``KL[b] = sum_c p[b, c] (log p[b, c] - log q[b, c])`` with ``p = softmax(reference_logits)``
    (intact) and ``q = softmax(logits)`` (ablated); 0 when the logits are equal.

    Args:
        reference_logits: intact logits (B, C).
        logits: ablated logits (..., B, C), e.g. (V, B, C) for V ablations of the same images.
    Returns:
        float32 (..., B) on the device of ``logits``.
    """
    reference_logits, logits = _paired(reference_logits, logits, "logits")
    log_p = F.log_softmax(reference_logits, dim=-1)
    log_q = F.log_softmax(logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def top1_agreement(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """1.0 where the ablated model's top-1 class is the intact model's, else 0.0, per image.

    Args:
        reference_logits: intact logits (B, C).
        logits: ablated logits (..., B, C).
    Returns:
        float32 (..., B).
    """
    reference_logits, logits = _paired(reference_logits, logits, "logits")
    return (logits.argmax(dim=-1) == reference_logits.argmax(dim=-1)).float()


def feature_cosine(reference_features: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine between the intact and the ablated final features (what the classifier reads), per image.

    ``cos[b] = f[b].g[b] / (max(|f[b]|, eps) max(|g[b]|, eps))``, ``eps = COSINE_EPS``.

    Args:
        reference_features: intact features (B, F).
        features: ablated features (..., B, F).
    Returns:
        float32 (..., B).
    """
    reference_features, features = _paired(reference_features, features, "features")
    norms = reference_features.norm(dim=-1).clamp_min(COSINE_EPS) * features.norm(dim=-1).clamp_min(COSINE_EPS)
    return (reference_features * features).sum(dim=-1) / norms


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation of two (n,) arrays over the entries finite in both.

    The Pearson correlation of their average ranks (ties share the mean rank); NaN with
    fewer than 3 such entries or when either side is constant.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise DiagError(f"spearman needs two arrays of the same shape (n,), got {first.shape} and {second.shape}")
    finite = np.isfinite(first) & np.isfinite(second)
    if finite.sum() < 3:
        return float("nan")
    x, y = _average_ranks(first[finite]), _average_ranks(second[finite])
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale > 0 else float("nan")
