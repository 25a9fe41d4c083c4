"""timm's ``VisionTransformerDistilled``: DeiT with a distillation token (``dist_token``, ``head_dist``).

Read as a ViT whose prefix holds the distillation token too; built as
``deit_base_distilled_patch16_224`` with the weights' values when nothing names the model.
"""

from __future__ import annotations

from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled

from .base import Family
from .vit import ARGUMENTS, built_vit_values, guess_vit_heads, read_vit

FAMILY = Family(
    name="deit-distilled",
    model_class=VisionTransformerDistilled,
    arguments=ARGUMENTS,
    detect=lambda keys: "dist_token" in keys,
    read=lambda sd, in_chans, img_size: read_vit(sd, "deit-distilled", 1, img_size),
    attention=(Attention,),
    timm_name=lambda values: "deit_base_distilled_patch16_224",
    guess_heads=guess_vit_heads,
    built_values=built_vit_values,
)
