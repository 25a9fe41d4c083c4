"""timm's ``Eva`` (EVA, EVA-02): ``attn.q_bias``/``v_bias`` or separate ``attn.{q,k,v}_proj``, layer scale
``gamma_1``/``gamma_2``, SwiGLU MLPs (``mlp.fc1_g`` or a ``fc1`` twice as wide: EVA-02), scale norms.
Rotary embeddings hold no weights: EVA-02 (SwiGLU) has them, EVA not (announced). Built as
``eva02_base_patch14_224`` (SwiGLU) or ``eva_giant_patch14_224`` with the weights' values."""

from __future__ import annotations

from typing import Any

from timm.layers import AttentionRope
from timm.models.eva import Eva, EvaAttention
from torch import nn

from .base import (
    COMMON_ARGUMENTS,
    Family,
    Reading,
    Tensors,
    attention_width,
    grid_from_positions,
    has_part,
    pooling,
    q_norm_width,
    shared_arguments,
)


def read(sd: Tensors, in_chans: int | None, img_size: Any) -> Reading:
    block = "blocks.0."
    hidden = sd[block + "mlp.fc2.weight"].shape[1]
    class_token, fc_norm = "cls_token" in sd, "fc_norm.weight" in sd
    reg_tokens = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    head_width = q_norm_width(sd, block)
    kw = shared_arguments(sd) | {
        "class_token": class_token,
        "num_reg_tokens": reg_tokens,
        "qkv_fused": block + "attn.qkv.weight" in sd,
        "qkv_bias": any(block + f"attn.{bias}" in sd for bias in ("q_bias", "q_proj.bias", "qkv.bias")),
        # timm's AttentionRope (RoPE-ViT) keeps one fused qkv bias; EVA's attention a q_bias and a v_bias
        "attn_type": "rope" if block + "attn.qkv.bias" in sd else "eva",
        "qk_norm": head_width is not None,
        "init_values": 1.0 if block + "gamma_1" in sd else None,
        "swiglu_mlp": block + "mlp.fc1_g.weight" in sd
        or (block + "mlp.fc1.weight" in sd and sd[block + "mlp.fc1.weight"].shape[0] == 2 * hidden),
        "scale_mlp": block + "mlp.norm.weight" in sd,
        "scale_attn_inner": block + "attn.norm.weight" in sd,
        "use_pre_transformer_norm": "norm_pre.weight" in sd,
        "use_fc_norm": fc_norm,
        "use_abs_pos_emb": "pos_embed" in sd,
        "no_embed_class": False,
    }
    if "rope.freqs" in sd:  # learned rotary frequencies: RoPE-ViT's mixed rotary embedding
        kw["rope_type"] = "mixed"
    reading = Reading("eva", kw, attention_width(sd, block), head_width=head_width)
    pooling(reading, class_token, fc_norm)
    if "pos_embed" in sd:
        reading.grid, kw["no_embed_class"], reading.grid_doubt = grid_from_positions(
            sd["pos_embed"].shape[1], int(class_token) + reg_tokens, True, img_size, kw["patch_size"]
        )
    rotary = kw["swiglu_mlp"] or not kw["use_abs_pos_emb"] or kw["attn_type"] == "rope" or "rope_type" in kw
    reading.conventions.append(
        (
            "use_rot_pos_emb",
            rotary,
            "rotary embeddings hold no weights; EVA-02 models (SwiGLU MLPs), RoPE-ViTs (one qkv bias) and models "
            "without pos_embed have them, EVA models do not",
        )
    )
    reading.conventions.append((None, None, "guessed pre-norm blocks (EVA models with use_post_norm differ)"))
    return reading


def timm_name(values: dict[str, Any]) -> str:
    """The registered model whose rotary settings (grid indexing, temperature) such weights were made with."""
    if values.get("attn_type") == "rope":
        mixed = "_mixed" if values.get("rope_type") == "mixed" else ""
        return f"vit_base_patch16_rope{mixed}{'_ape' if values.get('use_abs_pos_emb') else ''}_224"
    if not values.get("use_abs_pos_emb", True):
        return "vit_medium_patch16_rope_reg1_gap_256"
    return "eva02_base_patch14_224" if values.get("swiglu_mlp") else "eva_giant_patch14_224"


def built_values(model: nn.Module) -> dict[str, Any]:
    return {"use_rot_pos_emb": model.rope is not None, "dynamic_img_size": bool(model.dynamic_img_size)}


FAMILY = Family(
    name="eva",
    model_class=Eva,
    arguments=COMMON_ARGUMENTS
    + (
        "class_token",
        "init_values",
        "qk_norm",
        "num_reg_tokens",
        "no_embed_class",
        "qkv_fused",
        "swiglu_mlp",
        "scale_mlp",
        "scale_attn_inner",
        "use_abs_pos_emb",
        "use_rot_pos_emb",
        "attn_type",
        "rope_type",
        "use_post_norm",
        "use_pre_transformer_norm",
        "use_fc_norm",
        "ref_feat_shape",
        "dynamic_img_size",
    ),
    detect=lambda keys: has_part(keys, ".attn.q_bias", ".attn.q_proj.", ".mlp.fc1_g.", ".gamma_1"),
    read=read,
    attention=(EvaAttention, AttentionRope),
    timm_name=timm_name,
    built_values=built_values,
)
