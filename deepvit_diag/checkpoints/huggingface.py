"""Hugging Face ``transformers`` ViT, DeiT, DINOv2 (with registers) and BEiT / Data2VecVision checkpoints,
converted to timm's keys without
``transformers`` (docs/checkpoints.md, "Hugging Face layouts").

A checkpoint is a folder with ``model.safetensors`` (or ``pytorch_model.bin``) and usually a
``config.json``, or one of those files alone. Keys (``vit.`` / ``deit.`` / ``dinov2.`` before the
backbone's keys in the classification models; both the files' names and the names ``transformers`` 5
uses in memory are read):

=================================================================  ============================================
Hugging Face                                                       timm
=================================================================  ============================================
``embeddings.cls_token``                                           ``cls_token``
``embeddings.distillation_token`` (DeiT)                           ``dist_token`` (with the teacher's head),
                                                                   else ``reg_token`` (see below)
``embeddings.position_embeddings``                                 ``pos_embed``
``embeddings.patch_embeddings.projection.*``                       ``patch_embed.proj.*``
``embeddings.mask_token`` (DINOv2)                                 dropped: used only for masked inputs
``encoder.layer.N.attention.attention.{query,key,value}.*``        ``blocks.N.attn.qkv.*`` (q, k, v stacked)
``encoder.layer.N.attention.output.dense.*``                       ``blocks.N.attn.proj.*``
``encoder.layer.N.layernorm_before.*`` / ``norm1.*`` (DINOv2)      ``blocks.N.norm1.*``
``encoder.layer.N.layernorm_after.*`` / ``norm2.*``                ``blocks.N.norm2.*``
``encoder.layer.N.intermediate.dense.*`` / ``mlp.fc1.*``           ``blocks.N.mlp.fc1.*``
``encoder.layer.N.output.dense.*`` / ``mlp.fc2.*``                 ``blocks.N.mlp.fc2.*``
``encoder.layer.N.layer_scale{1,2}.lambda1`` (DINOv2)              ``blocks.N.ls{1,2}.gamma``
``layernorm.*``                                                    ``norm.*``
``classifier.*`` (ViT, DeiT without teacher)                       ``head.*``
``cls_classifier.*`` / ``distillation_classifier.*`` (DeiT)         ``head.*`` / ``head_dist.*``
``pooler.dense.*`` (``ViTModel``)                                  dropped (announced): timm has no pooler
``classifier.*`` (DINOv2: on the class token and the mean patch)   dropped (announced): no timm head does that
``embeddings.register_tokens`` (Dinov2WithRegisters)                ``reg_token``; the class token's position is
                                                                   added to ``cls_token`` (timm's ``no_embed_class``)
``encoder.layer.N.lambda_1`` / ``lambda_2`` (BEiT)                 ``blocks.N.gamma_1`` / ``gamma_2``
``...attention.attention.{query,value}.bias`` (BEiT: no key bias)  ``blocks.N.attn.q_bias`` / ``v_bias``
``...relative_position_bias.relative_position_bias_table``         ``blocks.N.attn.relative_position_bias_table``
``encoder.relative_position_bias.*`` (shared)                      ``rel_pos_bias.*``
``pooler.layernorm.*`` (BEiT: mean pooling, then a LayerNorm)      ``fc_norm.*`` (average pooling)
=================================================================  ============================================

The in-memory names of ``transformers`` 5 (``layers.N.attention.{q,k,v,o}_proj``,
``layers.N.mlp.fc1``, ...) map the same way. A DeiT without the teacher's head
(``DeiTForImageClassification``, ``DeiTModel``) classifies from the class token alone: its
distillation token becomes timm's register token, which sits at the same place ([class,
distillation, patches], all with positions), so the logits are the same.

``config.json`` supplies what the tensors cannot: ``num_attention_heads``, ``layer_norm_eps``
and ``hidden_act`` (``image_size``, ``patch_size`` and the widths are compared with the tensors).
Without it the guesses are announced: 64-wide heads and ``transformers``' default eps (1e-12 for
ViT and DeiT, 1e-6 for DINOv2). DINOv2 with SwiGLU MLPs (``use_swiglu_ffn``, the giant model) is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import DiagError
from ..hints import Hint, Message
from ..jsonfiles import check_depth
from . import clip

Tensors = dict[str, torch.Tensor]

HF_VIT, HF_DEIT, HF_DINOV2, HF_BEIT = "hf-vit", "hf-deit", "hf-dinov2", "hf-beit"
HF_LAYOUTS = (HF_VIT, HF_DEIT, HF_DINOV2, HF_BEIT)
# Layouts whose config.json is read (CLIP's image tower converts in ``clip``).
CONFIG_LAYOUTS = (*HF_LAYOUTS, clip.HF_CLIP, clip.HF_SIGLIP)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
DEFAULT_EPS = {HF_VIT: 1e-12, HF_DEIT: 1e-12, HF_DINOV2: 1e-6, HF_BEIT: 1e-12, clip.HF_CLIP: 1e-5, clip.HF_SIGLIP: 1e-6}
# transformers' hidden_act names -> timm's act_layer names.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_BACKBONES = ("vit.", "deit.", "dinov2_with_registers.", "dinov2.", "beit.", "data2vec_vision.")
_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"

# Per-block key (after the backbone prefix and "encoder.layer.N." / "layers.N.") -> timm's.
_BLOCK_RENAMES = {
    "attention.output.dense.": "attn.proj.",
    "attention.o_proj.": "attn.proj.",
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "lambda_1": "gamma_1",  # BEiT
    "lambda_2": "gamma_2",
    "attention.attention.relative_position_bias.": "attn.",
    "relative_position_bias.": "attn.",
}
_QKV = {"attention.attention.query.": 0, "attention.attention.key.": 1, "attention.attention.value.": 2}
_QKV.update({"attention.q_proj.": 0, "attention.k_proj.": 1, "attention.v_proj.": 2})
_DINOV2_CLASSIFIER = (
    "dropped the classifier (DINOv2's head reads the class token and the mean patch token, which no timm head "
    "does): the model's output is its class-token features"
)
_POOLER = "dropped the pooler (dense + tanh on the class token), which timm's ViT does not have"
_BLOCK = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_OTHER_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.layernorm.weight": "fc_norm.weight",  # BEiT's mean pooling, then a LayerNorm
    "pooler.layernorm.bias": "fc_norm.bias",
    "encoder.relative_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
}


def detect(sd: Tensors) -> str | None:
    """The Hugging Face layout of ``sd``'s keys, or None."""
    backbone = {_strip(key) for key in sd}
    if any(key.startswith("embeddings.patch_embeddings.backbone.") for key in backbone):
        raise DiagError(
            "a Hugging Face ViT-hybrid: a convolutional backbone (BiT) makes its patch tokens, which no layout "
            "deepvit-diag reads converts; timm's vit_base_r50_s16_384 is that model with timm's keys"
        )
    if _PATCH_KEY not in backbone:
        return None
    if "embeddings.distillation_token" in backbone:
        return HF_DEIT
    if any(key.endswith(".lambda_1") or "relative_position_bias" in key for key in backbone):
        return HF_BEIT
    if "embeddings.mask_token" in backbone or any(".layer_scale1." in key or ".norm1." in key for key in backbone):
        return HF_DINOV2
    return HF_VIT


def convert(sd: Tensors, layout: str) -> tuple[Tensors, list[Message]]:
    """``sd`` in timm's keys, and notes on what was dropped."""
    out: Tensors = {}
    qkv: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    dropped: set[str] = set()
    with_teacher = "distillation_classifier.weight" in sd
    for key, tensor in sd.items():
        name = _strip(key)
        if (block := _BLOCK.match(name)) is not None:
            index, rest = int(block.group(1)), block.group(2)
            if rest.startswith("mlp.weights_in") or rest.startswith("mlp.w12"):
                raise DiagError("a DINOv2 with SwiGLU MLPs (use_swiglu_ffn) is not supported")
            part = next((p for p in _QKV if rest.startswith(p)), None)
            if part is not None:
                qkv.setdefault((index, rest[len(part) :]), [None, None, None])[_QKV[part]] = tensor
                continue
            prefix = next((p for p in _BLOCK_RENAMES if rest.startswith(p)), None)
            out[f"blocks.{index}." + (_BLOCK_RENAMES[prefix] + rest[len(prefix) :] if prefix else rest)] = tensor
        elif name in _OTHER_RENAMES:
            out[_OTHER_RENAMES[name]] = tensor
        elif name == "embeddings.distillation_token":
            out["dist_token" if with_teacher else "reg_token"] = tensor
        elif name == "embeddings.mask_token" or name.endswith("relative_position_index"):
            continue
        elif name == "embeddings.register_tokens":
            out["reg_token"] = tensor
        elif key.startswith(("cls_classifier.", "classifier.")) and layout != HF_DINOV2:
            out["head." + key.split(".", 1)[1]] = tensor
        elif key.startswith("distillation_classifier."):
            out["head_dist." + key.split(".", 1)[1]] = tensor
        elif key.startswith("classifier."):
            dropped.add(_DINOV2_CLASSIFIER)
        elif name.startswith("pooler."):
            dropped.add(_POOLER)
        else:
            out[key] = tensor  # unknown keys stay; the strict fit names them
    for (index, suffix), parts in sorted(qkv.items()):
        if layout == HF_BEIT and suffix == "bias":  # BEiT: q and v biases, no k bias (timm's q_bias, v_bias)
            out[f"blocks.{index}.attn.q_bias"], out[f"blocks.{index}.attn.v_bias"] = parts[0], parts[2]
            continue
        if any(part is None for part in parts):
            raise DiagError(f"block {index} lacks its query, key or value {suffix} (a damaged Hugging Face file?)")
        out[f"blocks.{index}.attn.qkv.{suffix}"] = torch.cat(parts)
    if layout == HF_DINOV2 and "reg_token" in out and "cls_token" in out and "pos_embed" in out:
        # DINOv2 with registers adds the class token's position before inserting the registers, which carry none:
        # timm's no_embed_class layout once that position is added to the class token.
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out, [Message(note) for note in (_DINOV2_CLASSIFIER, _POOLER) if note in dropped]


def config_hints(layout: str, config: dict[str, Any] | None) -> tuple[dict[str, Any], str, list[Message]]:
    """What ``config.json`` (or, without one, ``transformers``' defaults) says, as timm's constructor
    arguments for ``inference.infer_arch``'s hints; their label in notes; the guesses made without a config."""
    if config is None:
        eps = DEFAULT_EPS[layout]
        guesses = [
            Message(
                f"guessed norm_eps={eps!r} (transformers' default for {layout.removeprefix('hf-')}; no config.json "
                "beside the weights); pass ",
                Hint("norm_eps"),
                " if that is wrong",
            )
        ]
        return {"norm_eps": eps}, "transformers' defaults", guesses
    kwargs: dict[str, Any] = {}
    for field, key in (
        ("num_attention_heads", "num_heads"),
        ("hidden_size", "embed_dim"),
        ("num_hidden_layers", "depth"),
        ("image_size", "img_size"),
        ("patch_size", "patch_size"),
        ("num_channels", "in_chans"),
        ("layer_norm_eps", "norm_eps"),
        ("hidden_act", "act_layer"),
        ("qkv_bias", "qkv_bias"),
    ):
        if field in config:
            kwargs[key] = config[field]
    kwargs.setdefault("norm_eps", DEFAULT_EPS[layout])
    if "act_layer" in kwargs:
        kwargs["act_layer"] = ACTIVATIONS[kwargs["act_layer"]]
    return kwargs, "its config.json", []


def folder_files(folder: Path) -> tuple[list[Path], Path | None]:
    """The weights files of a Hugging Face model folder (one, or the shards its index names) and its
    ``config.json`` (None when absent)."""
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    config = folder / CONFIG_FILE
    config_path = config if config.is_file() else None
    if weights is not None:
        return [weights], config_path
    index = next(
        (folder / f"{name}.index.json" for name in WEIGHT_FILES if (folder / f"{name}.index.json").is_file()), None
    )
    if index is None:
        raise DiagError(
            f"{folder} is a folder without {' or '.join(WEIGHT_FILES)} or a sharded index of them: not a Hugging Face "
            "model folder"
        )
    return _shards(index), config_path


def _shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` maps tensors to: plain names in its own folder, each present."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError) as err:
        raise DiagError(f"{index} is not a readable shard index: {err}") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise DiagError(f"{index} has no weight_map of tensor names to shard files")
    names = sorted(set(weight_map.values()), key=str)
    bad = next((n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")), None)
    if bad is not None:
        raise DiagError(f"{index} names a shard {bad!r} outside its folder")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise DiagError(f"{index} names shards that are not in the folder: {', '.join(missing[:3])}")
    return [index.parent / n for n in names]


def read_config(path: Path) -> dict[str, Any]:
    """The entries of ``config.json`` deepvit-diag reads, each checked (a config is metadata from a file)."""
    try:
        text = path.read_text()
        check_depth(text, str(path))
        config = json.loads(text)
    except (OSError, ValueError) as err:
        raise DiagError(f"{path} is not a readable JSON file: {err}") from None
    if not isinstance(config, dict):
        raise DiagError(f"{path} holds no JSON object")
    if isinstance(config.get("vision_config"), dict):  # CLIPModel: the image tower's own config
        config = config["vision_config"]
    checked: dict[str, Any] = {}
    for key, check, rule in (
        ("num_attention_heads", lambda v: _whole(v, 1, 4096), "a whole number from 1 to 4096"),
        ("hidden_size", lambda v: _whole(v, 1, 1 << 16), "a whole number"),
        ("num_hidden_layers", lambda v: _whole(v, 1, 4096), "a whole number"),
        ("image_size", lambda v: _whole(v, 1, 8192), "a whole number of pixels"),
        ("patch_size", lambda v: _whole(v, 1, 1024), "a whole number of pixels"),
        ("num_channels", lambda v: _whole(v, 1, 64), "a whole number"),
        ("layer_norm_eps", lambda v: isinstance(v, float) and 0 < v < 1, "a number between 0 and 1"),
        ("hidden_act", lambda v: isinstance(v, str) and v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
        ("qkv_bias", lambda v: isinstance(v, bool), "true or false"),
    ):
        if key in config:
            if not check(config[key]):
                raise DiagError(f"{path}: {key} {config[key]!r} is not {rule}")
            checked[key] = config[key]
    if config.get("use_swiglu_ffn"):
        raise DiagError(f"{path}: a DINOv2 with SwiGLU MLPs (use_swiglu_ffn) is not supported")
    return checked


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _strip(key: str) -> str:
    """A key without the classification models' backbone prefix (``vit.``, ``deit.``, ``dinov2.``)."""
    return next((key[len(p) :] for p in _BACKBONES if key.startswith(p)), key)
