"""State-dict layouts: detect them from the keys and convert them to timm's / our modules' keys.

Layouts (docs/checkpoints.md):

* ``official``: the official DeepViT keys (``blocks.N.attn.reatten_matrix``, ``var_norm``, CNN stem
  ``patch_embed.conv1``...), which are also the keys of ``DeepVisionTransformer``'s own state dict;
* ``timm``: the keys of timm's ViT families (``VisionTransformer`` and the official ViT-NB baselines,
  distilled DeiT, EVA, BEiT, CaiT, relative-position ViTs; ``families.detect_family`` tells them apart);
* ``lucidrains-vit`` / ``lucidrains-deepvit``: vit-pytorch's ``vit.py`` / ``deepvit.py``, renamed into
  ``DeepVisionTransformer`` with ``embed_layer="linear"`` and ``theta="param"``;
* ``hf-vit`` / ``hf-deit`` / ``hf-dinov2``: Hugging Face ``transformers`` checkpoints, renamed into
  timm's keys (``deepvit_diag.checkpoints.huggingface``);
* ``openai-clip`` / ``hf-clip``: CLIP image towers (``deepvit_diag.checkpoints.clip``);
* ``torchvision``: torchvision's ``VisionTransformer`` (``deepvit_diag.checkpoints.torchvision_vit``);
* ``dinov2-hub``: the DINOv2 torch-hub release files with registers (``register_tokens``; the class token's
  position moves into the class token, as timm's ``no_embed_class`` models hold it);
* ``deit3``: the official DeiT III files (``blocks.N.gamma_1`` / ``gamma_2`` -> ``ls1.gamma`` / ``ls2.gamma``).

The architecture is then read from the converted keys (``deepvit_diag.checkpoints.inference``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ..errors import DiagError
from ..hints import Message
from . import clip, huggingface, torchvision_vit
from .keys import renamed, renames

Tensors = dict[str, torch.Tensor]

OFFICIAL, TIMM, LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT, NATIVE = (
    "official",
    "timm",
    "lucidrains-vit",
    "lucidrains-deepvit",
    "native",
)
DINOV2_HUB, DEIT3 = "dinov2-hub", "deit3"

# Layouts whose models classify from (or output the features of) the class token: their pooling is no guess
# (Hugging Face BEiT's pooler averages the patch tokens and normalises them, timm's fc_norm).
CLASS_TOKEN_LAYOUTS = (
    *huggingface.HF_LAYOUTS,
    clip.OPENAI,
    clip.HF_CLIP,
    torchvision_vit.LAYOUT,
    DINOV2_HUB,
    DEIT3,
)

# Keys only DeepViT checkpoints have (official, or vit-pytorch converted to our keys).
DEEPVIT_MARKERS = (".reatten_matrix.", ".reattn_weights", "patch_embed.conv1.", "patch_embed.layers.")

# vit-pytorch key -> our key; the first matching pattern wins.
_LUCIDRAINS_RENAMES = renames(
    [
        (r"^to_patch_embedding\.(\d)\.", r"patch_embed.layers.\1."),
        (r"^pos_embedding$", "pos_embed"),
        (r"^transformer\.layers\.(\d+)\.0\.norm\.", r"blocks.\1.norm1."),
        (r"^transformer\.layers\.(\d+)\.0\.to_qkv\.", r"blocks.\1.attn.qkv."),
        (r"^transformer\.layers\.(\d+)\.0\.to_out\.0\.", r"blocks.\1.attn.proj."),
        (r"^transformer\.layers\.(\d+)\.0\.reattn_weights$", r"blocks.\1.attn.reattn_weights"),
        (r"^transformer\.layers\.(\d+)\.0\.reattn_norm\.1\.", r"blocks.\1.attn.reattn_norm.norm."),
        (r"^transformer\.layers\.(\d+)\.1\.net\.0\.", r"blocks.\1.norm2."),
        (r"^transformer\.layers\.(\d+)\.1\.net\.1\.", r"blocks.\1.mlp.fc1."),
        (r"^transformer\.layers\.(\d+)\.1\.net\.4\.", r"blocks.\1.mlp.fc2."),
        (r"^transformer\.norm\.", "norm."),
        (r"^mlp_head\.0\.", "fc_norm."),  # DeepViT: LayerNorm then Linear after pooling
        (r"^mlp_head\.1\.", "head."),
        (r"^mlp_head\.", "head."),  # ViT: a single Linear
    ]
)
_DEIT3_RENAMES = renames([(r"^blocks\.(\d+)\.gamma_([12])$", r"blocks.\1.ls\2.gamma")])


def block_count(keys: Iterable[str], blocks: str = "blocks") -> int:
    """How many blocks state-dict keys (in our names) hold: ``blocks.0.*`` to ``blocks.N-1.*``, every one
    present (0 without blocks). A gap is refused, so that one stray key such as ``blocks.100000000.norm1.weight``
    cannot make anything build a model of that depth. ``blocks`` names another list (CaiT's
    ``blocks_token_only``)."""
    pattern = re.compile(rf"{re.escape(blocks)}\.(\d+)\.")
    indices = sorted({int(match.group(1)) for key in keys if (match := pattern.match(key))})
    gap = next((expected for expected, index in enumerate(indices) if index != expected), None)
    if gap is not None:
        raise DiagError(
            f"its {blocks} are not numbered from 0 without gaps: it has {blocks}.{indices[-1]} but no "
            f"{blocks}.{gap} ({len(indices)} in all)"
        )
    return len(indices)


def layout_pooling(layout: str, sd: Tensors) -> str | None:
    """The pooling a layout's models use, where the layout decides it (None: a guess of the family)."""
    if layout == huggingface.HF_BEIT and "fc_norm.weight" in sd:
        return "avg"
    return "token" if layout in CLASS_TOKEN_LAYOUTS and "cls_token" in sd else None


def detect_layout(sd: Tensors) -> str:
    """Which layout the keys are in (see the module's docstring)."""
    if "to_patch_embedding.2.weight" in sd and "transformer.layers.0.0.to_qkv.weight" in sd:
        if "pos_embedding" not in sd:
            raise DiagError(
                "a vit-pytorch SimpleViT: its 2-D sine-cosine position embedding is computed, not stored in the "
                "file, and no layout deepvit-diag reads builds it; save a vit-pytorch ViT or DeepViT instead"
            )
        return LUCIDRAINS_DEEPVIT if any(k.endswith(".reattn_weights") for k in sd) else LUCIDRAINS_VIT
    foreign = huggingface.detect(sd) or clip.detect(sd)
    if foreign is not None:
        return foreign
    if torchvision_vit.detect(sd):
        return torchvision_vit.LAYOUT
    if ("pos_embed" in sd or "patch_embed.proj.weight" in sd) and (
        "blocks.0.attn.qkv.weight" in sd or "blocks.0.attn.q_proj.weight" in sd
    ):
        if any(m in k for k in sd for m in DEEPVIT_MARKERS):
            return OFFICIAL
        if "register_tokens" in sd:
            return DINOV2_HUB
        deit3 = all(k in sd for k in ("pos_embed", "blocks.0.gamma_1", "blocks.0.attn.qkv.bias"))
        if deit3 and not any(k in sd for k in ("rope.freqs", "blocks.0.attn.proj_l.weight")):
            return DEIT3  # EVA keeps q_bias / v_bias, CaiT has talking heads; RoPE-ViTs with these keys lack pos_embed
        return TIMM
    first = ", ".join(list(sd)[:4]) or "none"
    raise DiagError(
        f"not a ViT/DeepViT checkpoint: its keys ({first}, ...) match none of the official DeepViT, timm ViT "
        "(ViT, DeiT, EVA, BEiT, CaiT, relative-position ViT), vit-pytorch, Hugging Face ViT/DeiT/DINOv2/CLIP, "
        "OpenAI CLIP / open_clip, torchvision ViT, DINOv2 hub or deepvit-diag layouts"
    )


def to_our_keys(layout: str, sd: Tensors) -> tuple[Tensors, list[Message]]:
    """The state dict renamed and reshaped for our modules or timm's (a no-op for official/timm keys),
    and notes on anything dropped."""
    if layout in (LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT):
        return convert_lucidrains(sd), []
    if layout in huggingface.HF_LAYOUTS:
        return huggingface.convert(sd, layout)
    if layout in (clip.OPENAI, clip.HF_CLIP, clip.HF_SIGLIP):
        return clip.convert(sd, layout)
    if layout == torchvision_vit.LAYOUT:
        return torchvision_vit.convert(sd)
    if layout == DINOV2_HUB:
        return _dinov2_hub(sd), []
    if layout == DEIT3:
        return renamed(sd, _DEIT3_RENAMES), []
    return dict(sd), []


def _dinov2_hub(sd: Tensors) -> Tensors:
    """DINOv2 hub weights with registers: the class token carries ``pos_embed[:, 0]`` and the registers no
    position, which is timm's ``no_embed_class`` layout once that position is added to the class token."""
    out = {k: v for k, v in sd.items() if k != "register_tokens"}
    out["reg_token"] = sd["register_tokens"]
    if "cls_token" in sd and "pos_embed" in sd:
        out["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
        out["pos_embed"] = sd["pos_embed"][:, 1:]
    return out


def convert_lucidrains(sd: Tensors) -> Tensors:
    """vit-pytorch ViT/DeepViT keys -> ``DeepVisionTransformer`` keys.

    ViT stores ``pos_embedding`` without a batch axis and ``cls_token`` as (1, D), or (0, D) with
    ``pool="mean"`` (no class token at all); DeepViT stores both with a batch axis.
    """
    out = renamed(sd, _LUCIDRAINS_RENAMES)
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"].reshape(1, -1, out["pos_embed"].shape[-1])
    cls_token = out.pop("cls_token", None)
    if cls_token is not None and cls_token.numel() > 0:
        out["cls_token"] = cls_token.reshape(1, 1, -1)
    return out
