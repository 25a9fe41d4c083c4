"""timm's ``VisionTransformerRelPos``: relative-position bias per block (``attn.rel_pos.*``) or shared
(``shared_rel_pos.*``), a table (rows give the grid) or an MLP (any grid: the image size is the caller's,
else 224, announced). Pre-norm blocks are the convention (``*_rpn`` models are post-norm: ``arch=NAME``).
Built as ``vit_relpos_base_patch16_224`` with the weights' values."""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer_relpos import RelPosAttention, VisionTransformerRelPos

from .base import COMMON_ARGUMENTS, Family, Reading, Tensors, grid_from_table, pooling, q_norm_width, shared_arguments


def read(sd: Tensors, in_chans: int | None, img_size: Any) -> Reading:
    block = "blocks.0."
    shared = any(k.startswith("shared_rel_pos.") for k in sd)
    rel = "shared_rel_pos." if shared else block + "attn.rel_pos."
    class_token, fc_norm = "cls_token" in sd, "fc_norm.weight" in sd
    head_width = q_norm_width(sd, block)
    kw = shared_arguments(sd) | {
        "class_token": class_token,
        "qkv_bias": block + "attn.qkv.bias" in sd,
        "qk_norm": head_width is not None,
        "init_values": 1.0 if block + "ls1.gamma" in sd else None,
        "fc_norm": fc_norm,
        "shared_rel_pos": shared,
    }
    reading = Reading("vit-relpos", kw, sd[block + "attn.qkv.weight"].shape[0] // 3, head_width=head_width)
    pooling(reading, class_token, fc_norm)
    if rel + "relative_position_bias_table" in sd:
        table = sd[rel + "relative_position_bias_table"]
        reading.heads = table.shape[1]
        kw["rel_pos_type"] = "bias"
        reading.grid = grid_from_table(table.shape[0], extra=3 * int(class_token))
    else:  # the MLP computes the bias for any grid
        reading.heads = sd[rel + "mlp.fc2.weight"].shape[0]
        kw["rel_pos_type"] = "mlp" if rel + "mlp.fc2.bias" in sd else "mlp_swin"
        kw["rel_pos_dim"] = sd[rel + "mlp.fc1.weight"].shape[0]
    reading.conventions.append(
        (None, None, "guessed pre-norm blocks (relative-position ViTs named *_rpn put the norm after attention)")
    )
    return reading


FAMILY = Family(
    name="vit-relpos",
    model_class=VisionTransformerRelPos,
    arguments=COMMON_ARGUMENTS
    + ("class_token", "fc_norm", "init_values", "qk_norm", "rel_pos_type", "rel_pos_dim", "shared_rel_pos"),
    detect=lambda keys: any(key.startswith("shared_rel_pos.") or ".attn.rel_pos." in key for key in keys),
    read=read,
    attention=(RelPosAttention,),
    timm_name=lambda values: "vit_relpos_base_patch16_224",
)
