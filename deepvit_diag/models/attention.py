"""Multi-head self-attention with optional Re-attention (DeepViT, Zhou et al. 2021).

One module covers every attention layout deepvit-diag loads:

* plain multi-head attention (``apply_transform=False``), numerically the same as
  ``timm.models.vision_transformer.Attention``;
* the official Re-attention (``theta="conv"``): ``Conv2d(H, H, 1)`` with bias mixes the
  post-softmax maps across heads, ``BatchNorm2d(H)`` normalises them, and the result is
  multiplied by ``reatten_scale`` (``head_dim ** -0.5`` with ``transform_scale``)
  before it multiplies V (docs/metrics.md);
* the lucidrains ``vit-pytorch`` variant (``theta="param"``): an ``(H, H)`` parameter
  applied as ``einsum('bhij,hg->bgij')`` followed by a LayerNorm over the head axis.

Named hook points (TransformerLens style) expose the maps without touching the math:
``hook_pre`` sees the softmax maps (B, H, T, T), ``hook_post`` the maps that multiply V.
They are ``nn.Identity`` modules, so a forward hook on them records the tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeadLayerNorm(nn.Module):
    """LayerNorm over the head axis of (B, H, T, T) maps, as in vit-pytorch's DeepViT."""

    def __init__(self, num_heads: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(num_heads, eps=eps)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return self.norm(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ReAttention(nn.Module):
    """Attention whose per-head maps can be re-mixed by a learned H x H matrix Theta.

    ``Re-Attention(Q, K, V) = Norm(Theta^T Softmax(Q K^T / sqrt(d))) V`` (paper Eqn 3).

    Args:
        dim: token width.
        num_heads: H.
        head_dim: width of one head (default ``dim // num_heads``).
        qkv_bias: bias in the fused qkv projection.
        apply_transform: mix the maps with Theta (a Re-attention block) or not.
        theta: ``"conv"`` (official: Conv2d 1x1 with bias + BatchNorm2d) or
            ``"param"`` (vit-pytorch: H x H parameter + LayerNorm over heads).
        transform_scale: multiply mixed maps by ``head_dim ** -0.5`` (official DeepViT-S).
        fused_attn: use ``F.scaled_dot_product_attention`` when no map is needed
            (plain blocks only; a Re-attention block always materialises its maps).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        apply_transform: bool = True,
        theta: str = "conv",
        transform_scale: bool = False,
        fused_attn: bool = True,
    ):
        super().__init__()
        if theta not in ("conv", "param"):
            raise ValueError(f"theta must be 'conv' or 'param', got {theta!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner_dim = self.num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.apply_transform = apply_transform
        self.theta_kind = theta
        self.fused_attn = fused_attn

        self.qkv = nn.Linear(dim, inner_dim * 3, bias=qkv_bias)
        # timm's Attention has these; keeping them lets capture code treat both alike.
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        if apply_transform:
            if theta == "conv":
                self.reatten_matrix = nn.Conv2d(num_heads, num_heads, 1, 1)
                self.var_norm = nn.BatchNorm2d(num_heads)
            else:
                self.reattn_weights = nn.Parameter(torch.randn(num_heads, num_heads))
                self.reattn_norm = HeadLayerNorm(num_heads)
        self.reatten_scale = self.scale if (apply_transform and transform_scale) else 1.0
        self.proj = nn.Linear(inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.hook_pre = nn.Identity()
        self.hook_post = nn.Identity()

    @property
    def theta(self) -> torch.Tensor | None:
        """Theta as (H_in, H_out): ``mixed[g] = sum_h Theta[h, g] * attn[h] (+ bias[g])``."""
        if not self.apply_transform:
            return None
        if self.theta_kind == "conv":
            return self.reatten_matrix.weight[:, :, 0, 0].T
        return self.reattn_weights

    def mix_heads(self, attn: torch.Tensor) -> torch.Tensor:
        """Theta, Norm and scale applied to softmax maps (B, H, T, T) -> (B, H, T, T)."""
        if self.theta_kind == "conv":
            return self.var_norm(self.reatten_matrix(attn)) * self.reatten_scale
        mixed = torch.einsum("bhij,hg->bgij", attn, self.reattn_weights)
        return self.reattn_norm(mixed) * self.reatten_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) -> tokens (B, T, D), with Θ mixing the heads' softmax maps."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn and not self.apply_transform:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            attn = self.attn_drop(self.hook_pre(attn))
            if self.apply_transform:
                attn = self.mix_heads(attn)
            out = self.hook_post(attn) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, -1)))
