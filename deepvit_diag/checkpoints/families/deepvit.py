"""deepvit-diag's ``DeepVisionTransformer``: official DeepViT keys (``attn.reatten_matrix``, ``var_norm``,
the CNN patch stem ``patch_embed.conv1``...) and vit-pytorch's ViT/DeepViT after renaming
(``layouts.convert_lucidrains``: ``attn.reattn_weights``, the linear patch embedding ``patch_embed.layers``).

Θ has one row per head. Conventions: vit-pytorch's ``dim_head=64`` and ``pool='cls'``, LayerNorm eps 1e-5;
the CNN stem's ``scale_adjustment=0.5`` and ``transform_scale`` of the preset of that width and depth
(DeepViT-S: True), else False (announced).
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import DiagError
from ...hints import Hint, HintedError
from ...models.attention import ReAttention
from ...models.deepvit import DeepVisionTransformer
from ...models.presets import PRESETS
from ..layouts import DEEPVIT_MARKERS, LUCIDRAINS_DEEPVIT, LUCIDRAINS_VIT, block_count
from .base import (
    COMMON_ARGUMENTS,
    OFFICIAL_HEADS,
    Family,
    Guess,
    Reading,
    Tensors,
    grid_from_positions,
    has_part,
    is_paper_shape,
    mlp_ratio,
)

LUCIDRAINS_DIM_HEAD = 64
LUCIDRAINS_EPS = 1e-5


def read(sd: Tensors, in_chans: int | None, img_size: Any) -> Reading:
    """Official DeepViT and vit-pytorch keys (after ``layouts.to_our_keys``)."""
    depth = block_count(sd)
    embed_dim = sd["pos_embed"].shape[-1]
    kw: dict[str, Any] = {"embed_dim": embed_dim, "depth": depth}
    if "patch_embed.conv1.weight" in sd:
        kw.update(
            embed_layer="cnn",
            patch_size=2 * sd["patch_embed.proj.weight"].shape[-1],
            in_chans=sd["patch_embed.conv1.weight"].shape[1],
        )
    elif "patch_embed.layers.2.weight" in sd:
        channels, patch = _split_patch_width(sd["patch_embed.layers.2.weight"].shape[1], in_chans)
        kw.update(embed_layer="linear", patch_size=patch, in_chans=channels)
    else:
        proj = sd["patch_embed.proj.weight"]
        kw.update(embed_layer="conv", patch_size=proj.shape[-1], in_chans=proj.shape[1])
    kw["class_token"] = "cls_token" in sd
    grid, _, _ = grid_from_positions(sd["pos_embed"].shape[1], int(kw["class_token"]), False, None, kw["patch_size"])
    if grid[0] != grid[1]:
        raise DiagError("DeepViT models take square images; this pos_embed holds a non-square grid")
    kw["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    kw["mlp_ratio"] = mlp_ratio(sd["blocks.0.mlp.fc1.weight"].shape[0], embed_dim)
    kw["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    thetas = [
        sd.get(f"blocks.{i}.attn.reatten_matrix.weight", sd.get(f"blocks.{i}.attn.reattn_weights"))
        for i in range(depth)
    ]
    kw["apply_transform"] = [theta is not None for theta in thetas]
    reading = Reading("deepvit", kw, sd["blocks.0.attn.qkv.weight"].shape[0] // 3, grid=grid)
    if any(kw["apply_transform"]):
        reading.heads = next(theta for theta in thetas if theta is not None).shape[0]
        if any(k.endswith(".attn.reattn_weights") for k in sd):
            kw["theta"] = "param"
    kw["fc_norm"] = "fc_norm.weight" in sd
    kw["final_norm"] = "norm.weight" in sd
    if not kw["class_token"]:
        kw["global_pool"] = "avg"
    return reading


def _split_patch_width(patch_width: int, in_chans: int | None) -> tuple[int, int]:
    """vit-pytorch flattens (p, p, C) patches: RGB when the width allows it, else greyscale."""
    for channels in [in_chans] if in_chans else [3, 1]:
        patch = math.isqrt(patch_width // channels)
        if patch * patch * channels == patch_width:
            return channels, patch
    raise HintedError(
        f"cannot split the patch embedding's input width {patch_width} into channels x patch x patch; pass ",
        Hint("in_chans", "N", "N"),
    )


def guess_heads(reading: Reading, values: dict[str, Any], layout: str, guess: Guess) -> None:
    inner = reading.inner_dim
    if layout == LUCIDRAINS_VIT:
        if inner % LUCIDRAINS_DIM_HEAD == 0:
            guess("num_heads", inner // LUCIDRAINS_DIM_HEAD, f"vit-pytorch's default dim_head={LUCIDRAINS_DIM_HEAD}")
    elif is_paper_shape(values):
        guess("num_heads", OFFICIAL_HEADS, "")  # the paper's ViT shape: every official model has 12
    elif inner % OFFICIAL_HEADS == 0:
        guess("num_heads", OFFICIAL_HEADS, "every official DeepViT/ViT model has 12")


def conventions(reading: Reading, values: dict[str, Any], layout: str, guess: Guess) -> None:
    """What official DeepViT and vit-pytorch weights cannot say (docs/checkpoints.md)."""
    if layout in (LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT):
        values["norm_eps"] = LUCIDRAINS_EPS
        if values["class_token"] and layout == LUCIDRAINS_VIT:
            values["global_pool"] = "token"  # vit-pytorch ViT has a class token only with pool='cls'
    if layout == LUCIDRAINS_DEEPVIT:
        guess("global_pool", "token", "vit-pytorch DeepViT's default pool='cls'")
    else:
        guess("global_pool", "avg" if values["fc_norm"] else "token", "")  # timm: fc_norm exactly with 'avg'
    if values["embed_layer"] == "cnn":
        guess("scale_adjustment", 0.5, "")
        twin = next(
            (
                p
                for p in PRESETS.values()
                if p["kwargs"].get("embed_layer") == "cnn"
                and (p["kwargs"]["embed_dim"], p["kwargs"]["depth"]) == (values["embed_dim"], values["depth"])
            ),
            None,
        )
        if twin:
            guess("transform_scale", twin["kwargs"].get("transform_scale", False), "")
        else:
            guess("transform_scale", False, "DeepViT-L's value; DeepViT-S uses True")
    if reading.inner_dim != values["embed_dim"]:
        values.setdefault("head_dim", reading.inner_dim // values["num_heads"])
    if values.get("theta") != "param":
        values.pop("theta", None)


FAMILY = Family(
    name="deepvit",
    model_class=DeepVisionTransformer,
    arguments=COMMON_ARGUMENTS
    + (
        "class_token",
        "fc_norm",
        "final_norm",
        "apply_transform",
        "theta",
        "embed_layer",
        "head_dim",
        "transform_scale",
        "scale_adjustment",
    ),
    detect=lambda keys: has_part(keys, *DEEPVIT_MARKERS),
    read=read,
    attention=(ReAttention,),
    own_arch=True,
    guess_heads=guess_heads,
    conventions=conventions,
)
