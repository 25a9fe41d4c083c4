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
Hugging Face SigLIP (``SiglipVisionModel``, ``SiglipModel``) has no class token and pools with attention:
``head.probe`` -> ``attn_pool.latent``, ``head.attention.in_proj_*`` split into ``attn_pool.q`` and
``attn_pool.kv``, ``out_proj`` -> ``attn_pool.proj``, ``head.layernorm`` -> ``attn_pool.norm``, ``head.mlp``
-> ``attn_pool.mlp`` (timm's ``global_pool='map'``); its output is the pooled embedding.
Activation: OpenAI's towers use QuickGELU, open_clip's mostly GELU (names ending in ``-quickgelu``
excepted): the guess is announced (``act_layer=``); a Hugging Face ``config.json`` says it.
"""

from __future__ import annotations

import torch

from ..errors import DiagError
from ..hints import Message
from .keys import Tensors, renamed, renames

OPENAI, HF_CLIP, HF_SIGLIP = "openai-clip", "hf-clip", "hf-siglip"
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
# SigLIP's attention-pooling head -> timm's AttentionPoolLatent (``global_pool='map'``).
_SIGLIP_RENAMES = renames(
    [
        (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
        (r"^head\.probe$", "attn_pool.latent"),
        (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
        (r"^head\.layernorm\.", "attn_pool.norm."),
        (r"^head\.mlp\.", "attn_pool.mlp."),
    ]
)


def detect(sd: Tensors) -> str | None:
    """``OPENAI``, ``HF_CLIP`` or ``HF_SIGLIP`` where ``sd`` holds a CLIP or SigLIP image tower, else None."""
    if any(key in sd for key in ("visual.conv1.weight", "conv1.weight")) and any(
        key in sd for key in ("visual.class_embedding", "class_embedding")
    ):
        return OPENAI
    if f"{_HF_VISUAL}embeddings.class_embedding" in sd or "embeddings.class_embedding" in sd:
        return HF_CLIP
    if any(k in sd for k in (f"{_HF_VISUAL}embeddings.patch_embedding.weight", "embeddings.patch_embedding.weight")):
        return HF_SIGLIP
    return None


def convert(sd: Tensors, layout: str) -> tuple[Tensors, list[Message]]:
    """The image tower in timm's keys, and a note on what else the file held."""
    prefix = _VISUAL if layout == OPENAI else _HF_VISUAL
    if not any(key.startswith(prefix) for key in sd):
        prefix = ""
    tower = {key[len(prefix) :]: tensor for key, tensor in sd.items() if key.startswith(prefix)}
    projection = sd.get("visual_projection.weight") if layout == HF_CLIP else tower.pop("proj", None)
    if layout == OPENAI:
        if any(key.startswith("attn_pool.") for key in tower):  # built as a class-token tower, it would be wrong
            raise DiagError(
                "this open_clip image tower pools its tokens with attention (attn_pool, as in CoCa), which "
                "deepvit-diag does not convert yet; only class-token CLIP towers load"
            )
        out = renamed(tower, _OPENAI_RENAMES)
        cls, positions = out.pop("class_embedding"), out.pop("positional_embedding")
        if projection is not None:
            projection = projection.T
    elif layout == HF_SIGLIP:  # no class token: positions for the patches alone, attention pooling
        tower.pop("embeddings.position_ids", None)
        out = _stacked_qkv(renamed(renamed(tower, _SIGLIP_RENAMES), _HF_RENAMES))
        width = out["pos_embed"].shape[-1]
        for part in ("weight", "bias"):
            packed = out.pop(f"head.attention.in_proj_{part}")
            out[f"attn_pool.q.{part}"], out[f"attn_pool.kv.{part}"] = packed[:width], packed[width:]
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
        return out, _dropped_note(sd, prefix)
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
    return out, _dropped_note(sd, prefix)


def _dropped_note(sd: Tensors, prefix: str) -> list[Message]:
    """What the file held beside the image tower (the text tower, ``logit_scale``), announced."""
    if not prefix:
        return []
    left = sorted(
        {key.split(".", 1)[0] for key in sd if not key.startswith(prefix) and key != "visual_projection.weight"}
    )
    return [Message(f"dropped what is not the image tower: {', '.join(left)}")] if left else []


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
