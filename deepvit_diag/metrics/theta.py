"""The learned head-mixing matrices Theta of Re-attention blocks (docs/metrics.md, Theta).

``head_mixing_matrices(model)`` reads every ``model.blocks[i].attn`` that is a Re-attention
block (``ReAttention`` with ``apply_transform=True``) and returns Theta with the bias
and Norm parameters. CaiT's talking-heads blocks (``TalkingHeadAttn``) mix heads with two
learned H x H matrices, ``proj_l`` on the logits before the softmax and ``proj_w`` on the
maps after it; ``proj_w`` plays Theta's part (it mixes softmax maps, as Θ does) and
``proj_l`` is kept beside it (``pre_softmax``), with kind ``"talking-heads"``. Both come
with two distances that say how far the matrix is from "not mixing":

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

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from timm.models.cait import TalkingHeadAttn
from torch import nn

from ..errors import DiagError
from ..models.attention import ReAttention
from ..readers import REATTENTION, TALKING_HEADS

BATCH_NORM, LAYER_NORM = "batch-norm", "layer-norm"


def _columns_to_unit_max_abs(theta: np.ndarray) -> np.ndarray:
    largest = np.abs(theta).max(axis=0)
    return theta / np.where(largest > 0, largest, 1.0)


def _nearest_signed_permutation(scaled: np.ndarray) -> np.ndarray:
    """The signed permutation matrix P maximising <S, P>, i.e. nearest to S in Frobenius norm."""
    rows, cols = linear_sum_assignment(np.abs(scaled), maximize=True)
    permutation = np.zeros_like(scaled)
    permutation[rows, cols] = np.where(scaled[rows, cols] < 0, -1.0, 1.0)
    return permutation


def _frobenius_norm(matrix: np.ndarray) -> float:
    # np.linalg.norm's vectorised sum depends on where the array happens to lie in memory, so
    # the same matrix gave distances a last digit apart before and after a save and load;
    # math.fsum is correctly rounded whatever the order.
    return math.sqrt(math.fsum(np.square(matrix).ravel().tolist()))


@dataclass
class HeadMixing:
    """How one block mixes its heads after the softmax; arrays are numpy float32.

    Attributes:
        kind: ``"re-attention"`` (DeepViT's Θ, Norm and scale) or ``"talking-heads"`` (CaiT:
            ``proj_w`` after the softmax, ``proj_l`` before it, without a Norm).
        matrix: (H, H) Θ (or ``proj_w``), rows = input heads, columns = output heads:
            ``mixed[g] = sum_h matrix[h, g] * attn[h] (+ bias[g])``.
        norm: the Norm over heads after the matrix: ``"batch-norm"`` (official Conv2d Θ +
            BatchNorm2d), ``"layer-norm"`` (vit-pytorch's parameter Θ + LayerNorm) or None.
        bias: (H,) Conv2d (or ``proj_w``) bias, None for the vit-pytorch parameter Θ.
        norm_weight, norm_bias: (H,) affine parameters of the Norm (None without affine).
        running_mean, running_var: (H,) BatchNorm statistics, None without a BatchNorm.
        pre_softmax, pre_softmax_bias: (H, H) and (H,): the talking-heads matrix that mixes the
            logits before the softmax (``proj_l``, rows = input heads), None for Re-attention.
        distance_from_identity, distance_from_permutation: see the module docstring.
    """

    kind: str
    matrix: np.ndarray
    norm: str | None = None
    bias: np.ndarray | None = None
    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    pre_softmax: np.ndarray | None = None
    pre_softmax_bias: np.ndarray | None = None
    distance_from_identity: float = field(init=False)
    distance_from_permutation: float = field(init=False)

    def __post_init__(self) -> None:
        scaled = _columns_to_unit_max_abs(self.matrix.astype(np.float64))
        relative = math.sqrt(scaled.shape[0])
        self.distance_from_identity = _frobenius_norm(scaled - np.eye(scaled.shape[0])) / relative
        self.distance_from_permutation = _frobenius_norm(scaled - _nearest_signed_permutation(scaled)) / relative


def _array_or_none(tensor: torch.Tensor | None) -> np.ndarray | None:
    # np.array copies, so the result does not change when the model is trained further.
    return None if tensor is None else np.array(tensor.detach().float().cpu(), dtype=np.float32)


def _head_mixing(attn: ReAttention | TalkingHeadAttn) -> HeadMixing:
    if isinstance(attn, TalkingHeadAttn):  # nn.Linear over the head axis: out[g] = sum_h W[g, h] in[h]
        return HeadMixing(
            kind=TALKING_HEADS,
            matrix=_array_or_none(attn.proj_w.weight.T),
            bias=_array_or_none(attn.proj_w.bias),
            pre_softmax=_array_or_none(attn.proj_l.weight.T),
            pre_softmax_bias=_array_or_none(attn.proj_l.bias),
        )
    if attn.theta_kind == "conv":
        return HeadMixing(
            kind=REATTENTION,
            matrix=_array_or_none(attn.theta),
            norm=BATCH_NORM,
            bias=_array_or_none(attn.reatten_matrix.bias),
            norm_weight=_array_or_none(attn.var_norm.weight),
            norm_bias=_array_or_none(attn.var_norm.bias),
            running_mean=_array_or_none(attn.var_norm.running_mean),
            running_var=_array_or_none(attn.var_norm.running_var),
        )
    norm = attn.reattn_norm.norm
    return HeadMixing(
        kind=REATTENTION,
        matrix=_array_or_none(attn.theta),
        norm=LAYER_NORM,
        norm_weight=_array_or_none(norm.weight),
        norm_bias=_array_or_none(norm.bias),
    )


def head_mixing_matrices(model: nn.Module) -> dict[int, HeadMixing]:
    """Theta of every Re-attention block (and the talking-heads matrices of CaiT's blocks),
    keyed by 0-based block index.

    Args:
        model: a model with ``model.blocks`` (DeepVisionTransformer, timm ViT, ...).
    Returns:
        ``{block index: HeadMixing}``; ``{}`` for a model without Re-attention blocks.

    Example:
        >>> dd.head_mixing_matrices(model)[0].matrix.shape  # (H, H): Θ of block 0
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise DiagError(f"head_mixing_matrices needs a model with .blocks, got {type(model).__name__}")
    return {
        index: _head_mixing(block.attn)
        for index, block in enumerate(blocks)
        if (isinstance(getattr(block, "attn", None), ReAttention) and block.attn.apply_transform)
        or isinstance(getattr(block, "attn", None), TalkingHeadAttn)
    }


# HeadMixing's arrays, stacked over the Re-attention blocks (see ``stacked_head_mixing``).
_STACKED_FIELDS = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var", "pre_softmax", "pre_softmax_bias")
HEAD_MIXING_ARRAYS = ("theta", "theta_blocks", *(f"theta_{name}" for name in _STACKED_FIELDS))


def stacked_head_mixing(model: nn.Module, num_heads: int) -> dict[str, np.ndarray]:
    """``head_mixing_matrices(model)`` as stacked arrays over its R Re-attention blocks.

    Returns ``theta`` (R, H, H), ``theta_blocks`` (R,) int64 (0-based block indices) and,
    where every block has them, ``theta_bias``, ``theta_norm_weight``, ``theta_norm_bias``,
    ``theta_running_mean``, ``theta_running_var`` (R, H), and for talking heads
    ``theta_pre_softmax`` (R, H, H) and ``theta_pre_softmax_bias`` (R, H). A model without Re-attention
    blocks gives ``theta`` (0, H, H) and ``theta_blocks`` (0,).
    """
    infos = head_mixing_matrices(model)
    arrays = {
        "theta": np.stack([info.matrix for info in infos.values()]) if infos else np.zeros((0, num_heads, num_heads)),
        "theta_blocks": np.array(list(infos), dtype=np.int64),
    }
    arrays["theta"] = arrays["theta"].astype(np.float32)
    for name in _STACKED_FIELDS:
        values = [getattr(info, name) for info in infos.values()]
        if values and all(value is not None for value in values):
            arrays[f"theta_{name}"] = np.stack(values)
    return arrays


def head_mixing_from_arrays(arrays: dict[str, np.ndarray]) -> dict[int, HeadMixing]:
    """``stacked_head_mixing``'s arrays back as ``{block: HeadMixing}`` (the kind is "talking-heads"
    when the stack has pre-softmax matrices, else "re-attention"; the Norm is a BatchNorm when the
    stack has a bias, the official Conv2d Theta, else a LayerNorm)."""
    talking_heads = "theta_pre_softmax" in arrays
    kind = TALKING_HEADS if talking_heads else REATTENTION
    norm = None if talking_heads else BATCH_NORM if "theta_bias" in arrays else LAYER_NORM
    infos = {}
    for row, block in enumerate(arrays["theta_blocks"].tolist()):
        extras = {name: arrays[f"theta_{name}"][row] for name in _STACKED_FIELDS if f"theta_{name}" in arrays}
        infos[int(block)] = HeadMixing(kind=kind, matrix=arrays["theta"][row], norm=norm, **extras)
    return infos
