"""What a block's attention maps are computed from (``AttentionScores``): the readers hand it
over, the capture keeps it, and ``metrics.score_statistics`` rebuilds the maps from it a
chunk at a time (docs/metrics.md, maps in chunks).

Head mixing acts on each (query, key) element across heads (Re-attention's Θ, Norm and
scale; CaiT's ``proj_l`` and ``proj_w``), so it applies to a tile of the maps as to the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ALL = slice(None)


@dataclass
class AttentionScores:
    """What one block's maps are computed from; any tile of them can be recomputed.

    ``pre = softmax(mix_logits(q @ k^T + biases))`` along the keys, ``post = mix_maps(pre)``.

    Attributes:
        q: (B, H, T, d) queries, already multiplied by the attention scale.
        k: (B, H, T, d) keys (one per query head; grouped-query keys repeated).
        biases: additive logit biases, each broadcastable to (B, H, T, T), added in order
            (relative position biases; they have no batch axis, so they do not grow with the batch).
        mix_logits: None, or a map (B, H, r, c) -> (B, H, r, c) mixing heads element by
            element before the softmax (CaiT's ``proj_l``).
        mix_maps: None, or the same after the softmax (Re-attention, CaiT's ``proj_w``);
            None means post is pre.
    """

    q: torch.Tensor
    k: torch.Tensor
    biases: tuple[torch.Tensor, ...] = ()
    mix_logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    mix_maps: Callable[[torch.Tensor], torch.Tensor] | None = None

    def logits(self, rows: slice = ALL, cols: slice = ALL) -> torch.Tensor:
        """(B, H, r, c) logits of queries ``rows`` on keys ``cols``, in the dtype of q and k."""
        logits = self.q[:, :, rows] @ self.k[:, :, cols].transpose(-2, -1)
        for bias in self.biases:
            logits += bias[..., rows, cols]
        return logits if self.mix_logits is None else self.mix_logits(logits)

    def pre(self) -> torch.Tensor:
        """(B, H, T, T) softmax maps."""
        return self.logits().softmax(dim=-1)

    def post(self, pre: torch.Tensor) -> torch.Tensor:
        """The maps that multiply V, from (a tile of) ``pre``."""
        return pre if self.mix_maps is None else self.mix_maps(pre)

    def float(self) -> AttentionScores:
        """The same scores with float32 queries and keys (no copy when they are float32)."""
        return AttentionScores(self.q.float(), self.k.float(), self.biases, self.mix_logits, self.mix_maps)


def affine_head_mixing(
    weight: torch.Tensor, bias: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map (B, H, r, c) -> (B, G, r, c), ``out[:, g] = sum_h weight[g, h] x[:, h] + bias[g]``, as one
    matrix product over the head axis (a 1x1 convolution or a ``Linear`` over permuted heads
    do the same more slowly on the CPU)."""

    def mix(maps: torch.Tensor) -> torch.Tensor:
        batch, heads = maps.shape[:2]
        mixed = torch.matmul(weight.to(maps.dtype), maps.reshape(batch, heads, -1))
        if bias is not None:
            mixed += bias.to(maps.dtype).view(1, -1, 1)
        return mixed.view(batch, -1, *maps.shape[2:])

    return mix
