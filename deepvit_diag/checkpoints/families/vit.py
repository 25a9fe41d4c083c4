"""timm's ``VisionTransformer``: ViT, DeiT, DeiT III, AugReg, CLIP image towers, DINOv2, registers,
qk-norm, average pooling; also deepvit-diag's ``vit`` arch family (the paper's ViT baselines).

Read from the tensors: width, depth, MLP ratio, patch, grid (``pos_embed``), class and register tokens,
which prefix tokens carry a position (``no_embed_class``), qkv/proj bias, qk-norm, layer scale,
``norm_pre`` (pre-norm: CLIP), ``fc_norm``, scale norms (NormFormer). Conventions: heads 64 wide (timm),
12 for the paper's ViT shape; pre-norm towers get CLIP's eps 1e-5 and GELU (OpenAI: QuickGELU).
"""

from __future__ import annotations

from typing import Any

from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .. import clip
from .base import (
    ACTIVATIONS,
    COMMON_ARGUMENTS,
    OFFICIAL_HEADS,
    TIMM_EPS,
    Family,
    Guess,
    Reading,
    Tensors,
    attention_width,
    grid_from_positions,
    head_count_guess,
    is_paper_shape,
    pooling,
    q_norm_width,
    shared_arguments,
)

CLIP_EPS = 1e-5
# timm's ViTs whose heads are not 64 wide, by width: ViT-H (80), ViT-g (88), ViT-G (104); all 16 heads.
WIDE_HEADS = {1280: 16, 1408: 16, 1664: 16}

ARGUMENTS = COMMON_ARGUMENTS + (
    "class_token",
    "fc_norm",
    "final_norm",
    "init_values",
    "qk_norm",
    "pre_norm",
    "reg_tokens",
    "no_embed_class",
    "proj_bias",
    "scale_attn_norm",
    "scale_mlp_norm",
    "act_layer",
    "dynamic_img_size",
)
# Values left out of a vit arch when they are timm's defaults, to keep archs readable.
DEFAULTS = {
    "init_values": None,
    "qk_norm": False,
    "pre_norm": False,
    "reg_tokens": 0,
    "no_embed_class": False,
    "proj_bias": True,
    "scale_attn_norm": False,
    "scale_mlp_norm": False,
    "norm_eps": TIMM_EPS,
    "act_layer": "gelu",
    "dynamic_img_size": False,
}


def read_vit(sd: Tensors, family: str, extra_prefix: int, img_size: Any = None) -> Reading:
    """A ``VisionTransformer``'s arguments (``extra_prefix``: tokens beyond class and registers, such as
    DeiT's distillation token); ``img_size`` settles a grid the positions leave open."""
    block = "blocks.0."
    kw = shared_arguments(sd)
    reading = Reading(family, kw, attention_width(sd, block), head_width=q_norm_width(sd, block))
    class_token, fc_norm = "cls_token" in sd, "fc_norm.weight" in sd
    reg_tokens = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    kw.update(
        class_token=class_token,
        reg_tokens=reg_tokens,
        qkv_bias=block + "attn.qkv.bias" in sd,
        proj_bias=block + "attn.proj.bias" in sd,
        qk_norm=reading.head_width is not None,
        init_values=1.0 if block + "ls1.gamma" in sd else None,  # any value: the weights hold it
        pre_norm="norm_pre.weight" in sd,
        scale_attn_norm=block + "attn.norm.weight" in sd,
        scale_mlp_norm=block + "mlp.norm.weight" in sd,
        fc_norm=fc_norm,
        final_norm="norm.weight" in sd or fc_norm,  # timm keeps one of norm / fc_norm under final_norm
    )
    if "attn_pool.latent" in sd:  # attention pooling (SigLIP): a latent query attends over the tokens
        kw["global_pool"] = "map"
    else:
        pooling(reading, class_token, fc_norm)
    prefix = int(class_token) + reg_tokens + extra_prefix
    grid, no_embed_class, doubt = grid_from_positions(
        sd["pos_embed"].shape[1], prefix, may_skip_prefix=True, img_size=img_size, patch_size=kw["patch_size"]
    )
    kw["no_embed_class"] = no_embed_class
    reading.grid, reading.grid_doubt = grid, doubt
    return reading


def guess_vit_heads(reading: Reading, values: dict[str, Any], layout: str, guess: Guess) -> None:
    if is_paper_shape(values):
        guess("num_heads", OFFICIAL_HEADS, "")  # the paper's ViT shape: every official model has 12
    elif reading.inner_dim in WIDE_HEADS:
        heads = WIDE_HEADS[reading.inner_dim]
        guess("num_heads", heads, f"timm's ViT of width {reading.inner_dim} has {heads} heads")
    else:
        head_count_guess(reading, values, guess)


def conventions(reading: Reading, values: dict[str, Any], layout: str, guess: Guess) -> None:
    """The paper's ViT-NB shape pools the class token (every official model does); CLIP towers' eps and
    activation."""
    if is_paper_shape(values):
        guess("global_pool", "token", "")
    if layout in (clip.OPENAI, clip.HF_CLIP):
        guess("norm_eps", CLIP_EPS, "")  # every CLIP tower's: torch's LayerNorm default
        guess("act_layer", "quick_gelu", "OpenAI CLIP's; open_clip towers not named *-quickgelu use 'gelu'")
    elif layout == clip.HF_SIGLIP:
        guess("act_layer", "gelu_tanh", "SigLIP's gelu_pytorch_tanh")
    elif values.get("pre_norm"):
        guess("norm_eps", CLIP_EPS, "CLIP's convention for pre-norm ViTs")
        guess("act_layer", "gelu", "OpenCLIP's; OpenAI's CLIP image towers use 'quick_gelu'")


def built_vit_values(model: nn.Module) -> dict[str, Any]:
    act = getattr(model.blocks[0].mlp, "act", None)
    return {"act_layer": ACTIVATIONS.get(type(act), type(act).__name__), "dynamic_img_size": model.dynamic_img_size}


FAMILY = Family(
    name="vit",
    model_class=VisionTransformer,
    arguments=ARGUMENTS,
    detect=lambda keys: True,
    read=lambda sd, in_chans, img_size: read_vit(sd, "vit", 0, img_size),
    attention=(Attention,),
    timm_name=lambda values: "vit_base_patch16_224",
    own_arch=True,
    guess_heads=guess_vit_heads,
    conventions=conventions,
    defaults=DEFAULTS,
    built_values=built_vit_values,
)
