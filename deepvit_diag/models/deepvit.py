"""DeepViT (Zhou et al. 2021) as one readable timm-compatible model.

State-dict keys follow the official code and timm (docs/checkpoints.md):
``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.N.{norm1,attn,norm2,mlp}.*``,
``norm.*``, ``head.*``; Re-attention blocks add ``attn.reatten_matrix.*`` and
``attn.var_norm.*`` (or ``attn.reattn_weights`` / ``attn.reattn_norm.*`` for the
vit-pytorch variant). Options beyond the official ones exist only so that vit-pytorch
checkpoints convert exactly: a linear patch embedding with LayerNorms, no class token,
mean pooling and a LayerNorm after pooling (``fc_norm``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import nn

from .attention import ReAttention


class ConvStemPatchEmbed(nn.Module):
    """The official DeepViT-S/L stem (after T2T): conv7x7/2, BN, ReLU, conv3x3, BN, ReLU,
    then a ``patch_size // 2`` strided projection, so the token grid is ``img // patch``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.proj = nn.Conv2d(64, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.proj(x).flatten(2).transpose(1, 2)


class LinearPatchEmbed(nn.Module):
    """vit-pytorch's embedding: flatten each patch as (p1 p2 c), LayerNorm, Linear, LayerNorm.
    Submodules are numbered like vit-pytorch's ``to_patch_embedding`` Sequential (1, 2, 3)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, eps: float = 1e-5):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        patch_dim = in_chans * patch_size**2
        self.layers = nn.ModuleDict(
            {
                "1": nn.LayerNorm(patch_dim, eps=eps),
                "2": nn.Linear(patch_dim, embed_dim),
                "3": nn.LayerNorm(embed_dim, eps=eps),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size[0]
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)
        for layer in self.layers.values():
            x = layer(x)
        return x


class Block(nn.Module):
    """Pre-norm transformer block with the official ``scale_adjustment`` s:
    ``x = x + attn(norm1(x * s)) / s``; ``x = x + mlp(norm2(x * s)) / s``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        head_dim: int | None,
        apply_transform: bool,
        theta: str,
        transform_scale: bool,
        scale_adjustment: float,
        norm_eps: float,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.scale_adjustment = scale_adjustment
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ReAttention(
            dim,
            num_heads=num_heads,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            apply_transform=apply_transform,
            theta=theta,
            transform_scale=transform_scale,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, round(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_adjustment
        x = x + self.drop_path(self.attn(self.norm1(x * s)) / s)
        return x + self.drop_path(self.mlp(self.norm2(x * s)) / s)


class DeepVisionTransformer(nn.Module):
    """Vision transformer whose blocks may use Re-attention.

    Args:
        apply_transform: one flag per block (or one for all): Re-attention in that block.
        theta: ``"conv"`` (official) or ``"param"`` (vit-pytorch), see ``ReAttention``.
        transform_scale, scale_adjustment: as in the official DeepViT-S/L.
        embed_layer: ``"conv"`` (timm PatchEmbed), ``"cnn"`` (official stem) or ``"linear"``.
        class_token, global_pool (``"token"`` or ``"avg"``), final_norm (LayerNorm on the
        tokens), fc_norm (LayerNorm after pooling): the head layout.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 16,
        num_heads: int = 12,
        head_dim: int | None = None,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        apply_transform: bool | Sequence[bool] = True,
        theta: str = "conv",
        transform_scale: bool = False,
        scale_adjustment: float = 1.0,
        embed_layer: str = "conv",
        class_token: bool = True,
        global_pool: str = "token",
        final_norm: bool = True,
        fc_norm: bool = False,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        flags = (
            [bool(apply_transform)] * depth if isinstance(apply_transform, bool) else [bool(f) for f in apply_transform]
        )
        if len(flags) != depth:
            raise ValueError(f"apply_transform has {len(flags)} flags for {depth} blocks")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs a class token")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.apply_transform = flags

        if embed_layer == "conv":
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        elif embed_layer == "cnn":
            self.patch_embed = ConvStemPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        elif embed_layer == "linear":
            self.patch_embed = LinearPatchEmbed(img_size, patch_size, in_chans, embed_dim, eps=norm_eps)
        else:
            raise ValueError(f"embed_layer must be 'conv', 'cnn' or 'linear', got {embed_layer!r}")
        num_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Stochastic-depth rate grows linearly with depth; plain floats so the model builds on the meta device.
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                head_dim,
                flags[i],
                theta,
                transform_scale,
                scale_adjustment,
                norm_eps,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimisers exclude from weight decay."""
        return {"pos_embed", "cls_token"}

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's model interface)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new head of ``num_classes`` outputs (0: identity), as timm models do."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, T, D)."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, classes) from the tokens (B, T, D): the CLS token or the mean token, then the head."""
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of images (B, 3, H, W)."""
        return self.forward_head(self.forward_features(x))
