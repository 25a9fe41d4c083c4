"""CLIP image towers in timm's keys: OpenAI CLIP and open_clip (``visual.*``, full models or the tower
alone) and Hugging Face ``CLIPModel`` / ``CLIPVisionModel(WithProjection)`` (``vision_model.*``).

=====================================================  ================================================
OpenAI / open_clip (``visual.``)                        timm (pre-norm ``VisionTransformer``)
=====================================================  ================================================
``class_embedding`` (D), ``positional_embedding``       ``cls_token`` (1, 1, D), ``pos_embed`` (1, T, D)
``conv1.weight`` (no bias), ``ln_pre``                  ``patch_embed.proj.weight``, ``norm_pre``
``transformer.resblocks.N.ln_1`` / ``ln_2``             ``blocks.N.norm1`` / ``norm2``
``...attn.in_proj_weight`` / ``in_proj_bias``           ``blocks.N.attn.qkv.*``
``...attn.out_proj``, ``mlp.c_fc``, ``mlp.c_proj``      ``blocks.N.attn.proj``, ``mlp.fc1``, ``mlp.fc2``
``...ls_1.gamma`` / ``ls_2.gamma`` (open_clip)          ``blocks.N.ls1.gamma`` / ``ls2.gamma``
``ln_post``, ``proj`` (D, E)                            ``norm``, ``head.weight`` = ``proj``^T (zero bias)
=====================================================  ================================================

Hugging Face: ``embeddings.class_embedding``, ``embeddings.patch_embedding``,
``embeddings.position_embedding.weight``, ``pre_layrnorm``, ``encoder.layers.N.self_attn.{q,k,v}_proj``
(stacked into ``qkv``), ``out_proj``, ``layer_norm1/2``, ``mlp.fc1/2``, ``post_layernorm``, and
``visual_projection.weight`` (E, D) as the head. The text tower, ``logit_scale`` and ``position_ids`` are
dropped (announced). The image embedding is then the model's output: ``ln_post(x[:, 0]) @ proj``.
Activation: OpenAI's towers use QuickGELU, open_clip's mostly GELU (names ending in ``-quickgelu``
excepted): the guess is announced (``act_layer=``); a Hugging Face ``config.json`` says it.
"""

from __future__ import annotations

import torch

from ..errors import DiagError
from ..hints import Message
from .keys import Tensors, renamed, renames

OPENAI, HF_CLIP = "openai-clip", "hf-clip"
_VISUAL, _HF_VISUAL = "visual.", "vision_model."
_OPENAI_BLOCK = r"^transformer\.resblocks\.(\d+)\."
_OPENAI_RENAMES = renames(
    [
        (r"^conv1\.", "patch_embed.proj."),
        (r"^ln_pre\.", "norm_pre."),
        (r"^ln_post\.", "norm."),
        (_OPENAI_BLOCK + r"ln_1\.", r"blocks.\1.norm1."),
        (_OPENAI_BLOCK + r"ln_2\.", r"blocks.\1.norm2."),
        (_OPENAI_BLOCK + r"attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
        (_OPENAI_BLOCK + r"attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
        (_OPENAI_BLOCK + r"attn\.out_proj\.", r"blocks.\1.attn.proj."),
        (_OPENAI_BLOCK + r"mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
        (_OPENAI_BLOCK + r"mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
        (_OPENAI_BLOCK + r"ls_1\.gamma$", r"blocks.\1.ls1.gamma"),
        (_OPENAI_BLOCK + r"ls_2\.gamma$", r"blocks.\1.ls2.gamma"),
    ]
)
_HF_BLOCK = r"^encoder\.layers\.(\d+)\."
_HF_RENAMES = renames(
    [
        (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
        (r"^pre_layrnorm\.", "norm_pre."),
        (r"^post_layernorm\.", "norm."),
        (_HF_BLOCK + r"layer_norm1\.", r"blocks.\1.norm1."),
        (_HF_BLOCK + r"layer_norm2\.", r"blocks.\1.norm2."),
        (_HF_BLOCK + r"self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
        (_HF_BLOCK + r"mlp\.", r"blocks.\1.mlp."),
    ]
)
_HF_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def detect(sd: Tensors) -> str | None:
    """``OPENAI`` or ``HF_CLIP`` where ``sd`` holds a CLIP image tower, else None."""
    if any(key in sd for key in ("visual.conv1.weight", "conv1.weight")) and any(
        key in sd for key in ("visual.class_embedding", "class_embedding")
    ):
        return OPENAI
    if f"{_HF_VISUAL}embeddings.class_embedding" in sd or "embeddings.class_embedding" in sd:
        return HF_CLIP
    return None


def convert(sd: Tensors, layout: str) -> tuple[Tensors, list[Message]]:
    """The image tower in timm's keys, and a note on what else the file held."""
    prefix = _VISUAL if layout == OPENAI else _HF_VISUAL
    if not any(key.startswith(prefix) for key in sd):
        prefix = ""
    tower = {key[len(prefix) :]: tensor for key, tensor in sd.items() if key.startswith(prefix)}
    projection = sd.get("visual_projection.weight") if layout == HF_CLIP else tower.pop("proj", None)
    left = sorted(
        {key.split(".", 1)[0] for key in sd if not key.startswith(prefix) and key != "visual_projection.weight"}
    )
    if layout == OPENAI:
        out = renamed(tower, _OPENAI_RENAMES)
        cls, positions = out.pop("class_embedding"), out.pop("positional_embedding")
        if projection is not None:
            projection = projection.T
    else:
        tower.pop("embeddings.position_ids", None)
        out = _stacked_qkv(renamed(tower, _HF_RENAMES))
        cls, positions = out.pop("embeddings.class_embedding"), out.pop("embeddings.position_embedding.weight")
    if cls.ndim != 1 or positions.ndim != 2:
        raise DiagError("a CLIP image tower's class embedding must be (D,) and its positions (T, D)")
    out["cls_token"], out["pos_embed"] = cls.reshape(1, 1, -1), positions.unsqueeze(0)
    if projection is not None:  # the image embedding: a linear map without bias
        out["head.weight"] = projection.contiguous()
        out["head.bias"] = torch.zeros(projection.shape[0], dtype=projection.dtype)
    notes = [Message(f"dropped what is not the image tower: {', '.join(left)}")] if left else []
    return out, notes


def _stacked_qkv(sd: Tensors) -> Tensors:
    """Hugging Face's separate q, k, v projections stacked into timm's ``qkv``."""
    out: Tensors = {}
    parts: dict[tuple[str, str], list[torch.Tensor | None]] = {}
    for key, tensor in sd.items():
        head, dot, rest = key.partition(".self_attn.")
        name, _, suffix = rest.partition(".")
        if dot and name in _HF_QKV:
            parts.setdefault((head, suffix), [None, None, None])[_HF_QKV[name]] = tensor
        else:
            out[key] = tensor
    for (head, suffix), qkv in parts.items():
        if any(part is None for part in qkv):
            raise DiagError(f"{head} lacks its query, key or value {suffix} (a damaged file?)")
        block = head.replace("encoder.layers.", "blocks.")
        out[f"{block}.attn.qkv.{suffix}"] = torch.cat(qkv)
    return out
