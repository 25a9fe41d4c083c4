"""torchvision's ``VisionTransformer`` (``vit_b_16`` ...) in timm's keys (docs/checkpoints.md, "Layouts").

=================================================================  ==========================
torchvision                                                        timm
=================================================================  ==========================
``class_token`` (1, 1, D), ``encoder.pos_embedding``               ``cls_token``, ``pos_embed``
``conv_proj.*``                                                    ``patch_embed.proj.*``
``encoder.layers.encoder_layer_N.ln_1`` / ``ln_2``                 ``blocks.N.norm1`` / ``norm2``
``...self_attention.in_proj_weight`` / ``in_proj_bias``            ``blocks.N.attn.qkv.weight`` / ``bias``
``...self_attention.out_proj.*``                                   ``blocks.N.attn.proj.*``
``...mlp.0.*`` / ``mlp.3.*`` (older: ``mlp.linear_1`` / ``linear_2``)  ``blocks.N.mlp.fc1`` / ``fc2``
``encoder.ln.*``, ``heads.head.*``                                 ``norm.*``, ``head.*``
=================================================================  ==========================

torchvision's ViTs use LayerNorm eps 1e-6 and exact GELU (timm's defaults) and classify from the class token.
A ``heads.pre_logits`` layer (``representation_size``) has no timm counterpart and is refused.
"""

from __future__ import annotations

from ..errors import DiagError
from ..hints import Message
from .keys import Tensors, renamed, renames

LAYOUT = "torchvision"
_BLOCK = r"^encoder\.layers\.encoder_layer_(\d+)\."
_RENAMES = renames(
    [
        (r"^class_token$", "cls_token"),
        (r"^encoder\.pos_embedding$", "pos_embed"),
        (r"^conv_proj\.", "patch_embed.proj."),
        (_BLOCK + r"ln_1\.", r"blocks.\1.norm1."),
        (_BLOCK + r"ln_2\.", r"blocks.\1.norm2."),
        (_BLOCK + r"self_attention\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
        (_BLOCK + r"self_attention\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
        (_BLOCK + r"self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
        (_BLOCK + r"mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
        (_BLOCK + r"mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
        (r"^encoder\.ln\.", "norm."),
        (r"^heads\.head\.", "head."),
    ]
)


def detect(sd: Tensors) -> bool:
    return "conv_proj.weight" in sd and "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" in sd


def convert(sd: Tensors) -> tuple[Tensors, list[Message]]:
    if any(key.startswith("heads.pre_logits.") for key in sd):
        raise DiagError("torchvision ViT with a pre-logits layer (representation_size): timm's ViT has none")
    return renamed(sd, _RENAMES), []
