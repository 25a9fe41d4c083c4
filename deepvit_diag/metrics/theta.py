"""The learned head-mixing matrices Theta of Re-attention blocks (REFERENCE.md 4.5).

``theta_matrices(model)`` reads every ``model.blocks[i].attn`` that is a Re-attention
block (``ReAttention`` with ``apply_transform=True``) and returns Theta with the bias
and Norm parameters, plus two distances that say how far Theta is from "not mixing":

* ``distance_from_identity = ||S - I||_F / sqrt(H)``
* ``distance_from_permutation = ||S - P||_F / sqrt(H)``, P the signed permutation
  nearest to S in Frobenius norm (the assignment maximising ``sum_i |S[i, pi(i)]|``,
  found with ``scipy.optimize.linear_sum_assignment``, signs from S),

where S is Theta with each column (output head) divided by its largest absolute value
(a zero column stays zero). Columns are scaled separately because the official block
normalises every output head with BatchNorm2d, so a column's scale does not change what
the block computes (for the vit-pytorch LayerNorm variant it is a convention). Both
distances are 0 for Theta that passes every head through unchanged (resp. reordered,
sign-flipped) up to per-head scale; sqrt(H) = ||I||_F makes them relative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import DiagError
from ..models.attention import ReAttention


def _columns_to_unit_max_abs(theta: np.ndarray) -> np.ndarray:
    largest = np.abs(theta).max(axis=0)
    return theta / np.where(largest > 0, largest, 1.0)


def _nearest_signed_permutation(scaled: np.ndarray) -> np.ndarray:
    """The signed permutation matrix P maximising <S, P>, i.e. nearest to S in Frobenius norm."""
    rows, cols = linear_sum_assignment(np.abs(scaled), maximize=True)
    permutation = np.zeros_like(scaled)
    permutation[rows, cols] = np.where(scaled[rows, cols] < 0, -1.0, 1.0)
    return permutation


@dataclass
class ThetaInfo:
    """Theta and its companions for one Re-attention block; arrays are numpy float32.

    Attributes:
        theta: (H, H), rows = input heads, columns = output heads:
            ``mixed[g] = sum_h theta[h, g] * attn[h] (+ bias[g])``.
        kind: ``"conv"`` (official Conv2d + BatchNorm2d) or ``"param"`` (vit-pytorch + LayerNorm).
        bias: (H,) Conv2d bias, None for ``"param"``.
        norm_weight, norm_bias: (H,) affine parameters of the Norm (None without affine).
        running_mean, running_var: (H,) BatchNorm statistics, None for ``"param"``.
        distance_from_identity, distance_from_permutation: see the module docstring.
    """

    theta: np.ndarray
    kind: str
    bias: np.ndarray | None = None
    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    distance_from_identity: float = field(init=False)
    distance_from_permutation: float = field(init=False)

    def __post_init__(self) -> None:
        scaled = _columns_to_unit_max_abs(self.theta.astype(np.float64))
        relative = np.sqrt(scaled.shape[0])
        self.distance_from_identity = float(np.linalg.norm(scaled - np.eye(scaled.shape[0])) / relative)
        self.distance_from_permutation = float(np.linalg.norm(scaled - _nearest_signed_permutation(scaled)) / relative)


def _array_or_none(tensor: torch.Tensor | None) -> np.ndarray | None:
    # np.array copies, so the result does not change when the model is trained further.
    return None if tensor is None else np.array(tensor.detach().float().cpu(), dtype=np.float32)


def _theta_info(attn: ReAttention) -> ThetaInfo:
    if attn.theta_kind == "conv":
        return ThetaInfo(
            theta=_array_or_none(attn.theta),
            kind="conv",
            bias=_array_or_none(attn.reatten_matrix.bias),
            norm_weight=_array_or_none(attn.var_norm.weight),
            norm_bias=_array_or_none(attn.var_norm.bias),
            running_mean=_array_or_none(attn.var_norm.running_mean),
            running_var=_array_or_none(attn.var_norm.running_var),
        )
    norm = attn.reattn_norm.norm
    return ThetaInfo(
        theta=_array_or_none(attn.theta),
        kind="param",
        norm_weight=_array_or_none(norm.weight),
        norm_bias=_array_or_none(norm.bias),
    )


def theta_matrices(model: nn.Module) -> dict[int, ThetaInfo]:
    """Theta of every Re-attention block, keyed by 0-based block index.

    Args:
        model: a model with ``model.blocks`` (DeepVisionTransformer, timm ViT, ...).
    Returns:
        ``{block index: ThetaInfo}``; ``{}`` for a model without Re-attention blocks.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise DiagError(f"theta_matrices needs a model with .blocks, got {type(model).__name__}")
    return {
        index: _theta_info(block.attn)
        for index, block in enumerate(blocks)
        if isinstance(getattr(block, "attn", None), ReAttention) and block.attn.apply_transform
    }
