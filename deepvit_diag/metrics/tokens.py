"""Token-level collapse of block outputs: over-smoothing and rank collapse.

Both take the stacked block outputs ``hidden`` of shape (L, B, T, D) (docs/metrics.md)
and are means with equal weight per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DiagError
from ._checks import as_float32, as_float32_hidden, check_prefix_tokens
from .similarity import COSINE_EPS

# Keeps an all-zero X from dividing 0 by 0 in the rank residual.
NORM_EPS = 1e-12


def token_similarity(hidden: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Token over-smoothing per block (L,) (Gong et al. 2021; docs/metrics.md, token similarity).

    For every image, the mean cosine similarity over ordered pairs of distinct patch
    tokens (prefix tokens dropped), then the mean over images. A zero token has cosine 0
    with every other token (``eps = COSINE_EPS`` in the norm).

    Args:
        hidden: block outputs (L, B, T, D); at least 2 patch tokens.
        num_prefix_tokens: tokens before the patches (1 for a CLS token).
    Returns:
        float32 (L,) on the device of ``hidden``.
    """
    hidden = as_float32_hidden(hidden)
    num_patches = check_prefix_tokens(num_prefix_tokens, hidden.shape[2], needed_patches=2)
    unit = F.normalize(hidden[:, :, num_prefix_tokens:], dim=-1, eps=COSINE_EPS)
    # sum_{i != j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2: O(N D) instead of an (N, N) Gram.
    pair_sum = unit.sum(dim=2).square().sum(dim=-1) - unit.square().sum(dim=(2, 3))  # (L, B)
    return (pair_sum / (num_patches * (num_patches - 1))).mean(dim=1)


def _norm_1_inf(matrices: torch.Tensor) -> torch.Tensor:
    """``sqrt(||X||_1 * ||X||_inf)`` for (..., T, D): max column abs-sum times max row abs-sum."""
    absolute = matrices.abs()
    max_column_sum = absolute.sum(dim=-2).amax(dim=-1)
    max_row_sum = absolute.sum(dim=-1).amax(dim=-1)
    return (max_column_sum * max_row_sum).sqrt()


def rank_collapse(hidden: torch.Tensor) -> torch.Tensor:
    """Rank-collapse residual per block (L,) (Dong et al. 2021; docs/metrics.md, rank-collapse residual).

    For every image's block output X (T, D), all tokens included:
    ``r = ||X - 1 mean(X)^T||_{1,inf} / ||X||_{1,inf}`` where ``mean(X)`` is the mean token
    and ``||X||_{1,inf} = sqrt(||X||_1 ||X||_inf)``; then the mean over images. 0 when all
    tokens are equal (rank 1), also for an all-zero X.

    Args:
        hidden: block outputs (L, B, T, D).
    Returns:
        float32 (L,) on the device of ``hidden``.
    """
    hidden = as_float32_hidden(hidden)
    residual = hidden - hidden.mean(dim=2, keepdim=True)
    ratio = _norm_1_inf(residual) / _norm_1_inf(hidden).clamp_min(NORM_EPS)  # (L, B)
    return ratio.mean(dim=1)


def block_influence(hidden: torch.Tensor, first_input: torch.Tensor) -> torch.Tensor:
    """Block Influence per block (L,) (ShortGPT, Men et al. 2024; docs/metrics.md, Block Influence).

    ``BI[l] = 1 - mean over b, t of cos(X_in[l, b, t], X_out[l, b, t])``: how much block l turns
    its input tokens, all tokens included; 0 for a block whose output is its input. Block l's
    input is block l-1's output, block 0's is ``first_input``; cosines use ``eps = COSINE_EPS``.

    Args:
        hidden: block outputs (L, B, T, D) of consecutive blocks.
        first_input: the tokens entering the first of them (B, T, D).
    Returns:
        float32 (L,) on the device of ``hidden``.
    """
    hidden = as_float32_hidden(hidden)
    first_input = as_float32(first_input, "first_input", 3, "(B, T, D)")
    if first_input.shape != hidden.shape[1:]:
        raise DiagError(
            f"first_input must have shape {tuple(hidden.shape[1:])} (B, T, D), got {tuple(first_input.shape)}"
        )
    # float64 one block at a time: 1 - cos of nearly parallel tokens cancels most float32 digits.
    previous = first_input
    influence = torch.empty(hidden.shape[:2], dtype=torch.float64, device=hidden.device)  # (L, B)
    for block, output in enumerate(hidden):
        unit_in = F.normalize(previous.double(), dim=-1, eps=COSINE_EPS)
        unit_out = F.normalize(output.double(), dim=-1, eps=COSINE_EPS)
        influence[block] = 1 - (unit_in * unit_out).sum(dim=-1).mean(dim=-1)
        previous = output
    return influence.mean(dim=1).float()
