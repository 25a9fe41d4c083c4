"""timm's ``Cait``: talking-heads attention (``attn.proj_l`` / ``proj_w``: one row per head) and
class-attention blocks (``blocks_token_only.N``); built as ``cait_s24_224`` with the weights' values."""

from __future__ import annotations

from typing import Any

from timm.models.cait import Cait, ClassAttn, TalkingHeadAttn

from ..layouts import block_count
from .base import COMMON_ARGUMENTS, Family, Reading, Tensors, grid_from_positions, has_part, mlp_ratio, shared_arguments


def read(sd: Tensors, in_chans: int | None, img_size: Any) -> Reading:
    block = "blocks.0."
    depth_token_only = block_count(sd, "blocks_token_only")
    kw = shared_arguments(sd)
    embed_dim = kw["embed_dim"]
    kw |= {
        "qkv_bias": block + "attn.qkv.bias" in sd,
        "depth_token_only": depth_token_only,
        "mlp_ratio_token_only": mlp_ratio(sd["blocks_token_only.0.mlp.fc2.weight"].shape[1], embed_dim)
        if depth_token_only
        else 4.0,
        "global_pool": "token",
    }
    reading = Reading("cait", kw, sd[block + "attn.qkv.weight"].shape[0] // 3)
    reading.heads = sd[block + "attn.proj_l.weight"].shape[0]
    reading.grid, _, reading.grid_doubt = grid_from_positions(
        sd["pos_embed"].shape[1], 0, False, img_size, kw["patch_size"]
    )
    return reading


FAMILY = Family(
    name="cait",
    model_class=Cait,
    arguments=COMMON_ARGUMENTS + ("depth_token_only", "mlp_ratio_token_only"),
    detect=lambda keys: has_part(keys, "blocks_token_only.", ".attn.proj_l."),
    read=read,
    attention=(TalkingHeadAttn, ClassAttn),
    timm_name=lambda values: "cait_s24_224",
)
