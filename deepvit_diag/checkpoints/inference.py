"""A checkpoint's architecture, read from its tensors first (docs/checkpoints.md, "Architecture from the weights").

Every constructor argument the tensors determine is read from them: depth, width, MLP width, patch
size, grid and image size (``pos_embed``, or a relative-position table), prefix tokens (class,
distillation, registers), qkv/proj bias, qk-norm and its head width, layer scale, norm placement
(pre-norm, ``fc_norm``), classes, and each family's own parts. What they cannot say comes, in this
order, from the caller's ``overrides``, a *base* (``arch=``, a recorded model name, a Hugging Face
``config.json``) and the family's convention:

==================  ===============================  ===================================================
value               convention                       announced
==================  ===============================  ===================================================
heads               a per-head tensor (Θ, BEiT and   when guessed: 12 for the paper's ViT shape (width
                    relative-position tables, CaiT's  384, MLP ratio 3, patch 16) is the official rule;
                    talking heads) or ``q_norm``'s    else 64-wide heads (timm), else 12 (official
                    width decides; else a guess       DeepViT/ViT); vit-pytorch: ``dim_head=64``
LayerNorm eps       1e-6 (timm, official); 1e-5      CLIP-style pre-norm ViTs (1e-5, with GELU)
                    (vit-pytorch)
pooling             ``fc_norm`` means average         vit-pytorch DeepViT's ``pool='cls'``
                    pooling (timm's rule), no class
                    token too; else the class token
activation          GELU                              with the pre-norm guess (OpenAI CLIP: QuickGELU)
EVA rotary          SwiGLU MLP (EVA-02) means rotary  always
                    embeddings, else none (EVA)
relative-position   pre-norm blocks                   always (``*_rpn`` models are post-norm)
ViT blocks
==================  ===============================  ===================================================

A value of the base that the tensors contradict is no error: the tensors win and the difference is
listed (``Inference.notes``), as is every guess; the loader turns the notes into one warning and keeps
them in the model's provenance. The class count is not compared (fine-tuning replaces the head).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import QuickGELU
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_relpos import VisionTransformerRelPos
from torch import nn

from ..errors import DiagError
from ..models.deepvit import DeepVisionTransformer
from ..models.presets import PAPER_DATA_CFG, PRESETS, create_timm, data_config
from .layouts import DEEPVIT_MARKERS, LUCIDRAINS_DEEPVIT, LUCIDRAINS_VIT, Tensors, block_count

# ----------------------------------------------------------------------------- families and their arguments

# Constructor arguments each family's architectures may carry (what deepvit-diag writes into files and
# reads back; ``validation.ARCH_ARGUMENTS`` is their union). ``norm_eps`` and ``act_layer`` are plain
# values that ``presets.constructor_kwargs`` turns into timm's norm and activation layers.
_COMMON = (
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "global_pool",
    "norm_eps",
)
_VIT = (
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
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "vit": _COMMON + _VIT,
    "deepvit": _COMMON
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
    "eva": _COMMON
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
        "use_post_norm",
        "use_pre_transformer_norm",
        "use_fc_norm",
        "ref_feat_shape",
        "dynamic_img_size",
    ),
    "beit": _COMMON
    + ("init_values", "swiglu_mlp", "scale_mlp", "use_abs_pos_emb", "use_rel_pos_bias", "use_shared_rel_pos_bias")
    + ("use_fc_norm",),
    "cait": _COMMON + ("depth_token_only", "mlp_ratio_token_only"),
    "vit-relpos": _COMMON
    + ("class_token", "fc_norm", "init_values", "qk_norm", "rel_pos_type", "rel_pos_dim", "shared_rel_pos"),
}
FAMILY_KEYS["deit-distilled"] = FAMILY_KEYS["vit"]

# timm's model class of each family, and the registered name built when nothing names one.
MODEL_CLASSES: dict[str, type] = {
    "deepvit": DeepVisionTransformer,
    "deit-distilled": VisionTransformerDistilled,  # before its base class: the most specific class wins
    "vit": VisionTransformer,
    "eva": Eva,
    "beit": Beit,
    "cait": Cait,
    "vit-relpos": VisionTransformerRelPos,
}
CONVENTIONAL_NAMES = {
    "deit-distilled": "deit_base_distilled_patch16_224",
    "eva": "eva_giant_patch14_224",
    "eva-02": "eva02_base_patch14_224",
    "beit": "beit_base_patch16_224",
    "cait": "cait_s24_224",
    "vit-relpos": "vit_relpos_base_patch16_224",
}

OFFICIAL_HEADS = 12
TIMM_HEAD_WIDTH = 64
LUCIDRAINS_DIM_HEAD = 64
PAPER_VIT_SHAPE = {"embed_dim": 384, "mlp_ratio": 3.0, "patch_size": 16}
TIMM_EPS, CLIP_EPS, LUCIDRAINS_EPS = 1e-6, 1e-5, 1e-5
# Values deepvit-diag leaves out of a vit arch when they are timm's defaults, to keep archs readable.
_VIT_DEFAULTS = {
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
ACTIVATIONS = {nn.GELU: "gelu", QuickGELU: "quick_gelu", nn.SiLU: "silu", nn.ReLU: "relu"}
# Differences between a base and the tensors that are no contradiction worth a line.
_NOT_COMPARED = ("num_classes", "apply_transform")


# ----------------------------------------------------------------------------- what the tensors say


@dataclass
class Reading:
    """What a state dict (in timm/our keys) determines.

    Attributes:
        family: ``MODEL_CLASSES`` key.
        kwargs: constructor arguments the tensors determine.
        inner_dim: the attention width (heads x head width).
        heads: the head count where a tensor has one entry per head, else None.
        head_width: the head width where ``q_norm`` holds it, else None.
        grid_known: whether a tensor holds the patch grid (``pos_embed`` or a position table).
        conventions: the family's answers to what no tensor shows, as (argument or None, value,
            reason); a base's values replace them, else they are announced.
    """

    family: str
    kwargs: dict[str, Any]
    inner_dim: int
    heads: int | None = None
    head_width: int | None = None
    grid_known: bool = True
    conventions: list[tuple[str | None, Any, str]] = field(default_factory=list)


def detect_family(sd: Tensors) -> str:
    """Which family's keys ``sd`` (in our keys) has: one of ``MODEL_CLASSES``."""
    keys = list(sd)

    def has(*parts: str) -> bool:
        return any(part in key for key in keys for part in parts)

    if has("blocks_token_only.", ".attn.proj_l."):
        return "cait"
    if any(key.startswith("shared_rel_pos.") for key in keys) or has(".attn.rel_pos."):
        return "vit-relpos"
    if has("relative_position_bias_table"):
        return "beit"
    if has(*DEEPVIT_MARKERS):
        return "deepvit"
    if "dist_token" in sd:
        return "deit-distilled"
    if has(".attn.q_bias", ".attn.q_proj.", ".mlp.fc1_g.", ".gamma_1"):
        return "eva"
    return "vit"


def read_tensors(sd: Tensors, family: str, in_chans: int | None = None, img_size: int | None = None) -> Reading:
    """Every constructor argument ``sd`` (our keys) determines for ``family``; ``img_size`` is the caller's,
    used where no tensor holds the grid."""
    try:
        return _read(sd, family, in_chans, img_size)
    except KeyError as err:
        raise DiagError(f"checkpoint lacks {err.args[0]!r}, needed to read its architecture") from None
    except (IndexError, ZeroDivisionError, ValueError):
        shapes = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in ("pos_embed", "patch_embed.proj.weight") if k in sd)
        raise DiagError(f"its tensors do not have the shapes of a ViT ({shapes})") from None


def _read(sd: Tensors, family: str, in_chans: int | None, img_size: int | None) -> Reading:
    depth = block_count(sd)
    if depth == 0:
        raise DiagError("checkpoint has no transformer blocks (blocks.N.*)")
    if family == "deepvit":
        return _read_deepvit(sd, depth, in_chans)
    proj = sd["patch_embed.proj.weight"]
    embed_dim = proj.shape[0]
    kw: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": proj.shape[-1],
        "in_chans": proj.shape[1],
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    }
    block = "blocks.0."
    inner_dim = _attention_width(sd, block)
    hidden = sd[block + "mlp.fc2.weight"].shape[1]
    kw["mlp_ratio"] = _ratio(hidden, embed_dim)
    reading = Reading(family, kw, inner_dim)
    if block + "attn.q_norm.weight" in sd:
        reading.head_width = sd[block + "attn.q_norm.weight"].shape[0]
    class_token = "cls_token" in sd
    fc_norm = "fc_norm.weight" in sd
    reg_tokens = sd["reg_token"].shape[1] if "reg_token" in sd else 0

    if family in ("vit", "deit-distilled"):
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
        _pooling(reading, class_token, fc_norm)
        prefix = int(class_token) + reg_tokens + int(family == "deit-distilled")
        grid, no_embed_class = _grid_from_positions(sd["pos_embed"].shape[1], prefix, family == "vit")
        kw["no_embed_class"] = no_embed_class
    elif family == "eva":
        kw.update(
            class_token=class_token,
            num_reg_tokens=reg_tokens,
            qkv_fused=block + "attn.qkv.weight" in sd,
            qkv_bias=block + "attn.q_bias" in sd or block + "attn.q_proj.bias" in sd,
            qk_norm=reading.head_width is not None,
            init_values=1.0 if block + "gamma_1" in sd else None,
            swiglu_mlp=block + "mlp.fc1_g.weight" in sd
            or (block + "mlp.fc1.weight" in sd and sd[block + "mlp.fc1.weight"].shape[0] == 2 * hidden),
            scale_mlp=block + "mlp.norm.weight" in sd,
            scale_attn_inner=block + "attn.norm.weight" in sd,
            use_pre_transformer_norm="norm_pre.weight" in sd,
            use_fc_norm=fc_norm,
            use_abs_pos_emb="pos_embed" in sd,
        )
        _pooling(reading, class_token, fc_norm)
        grid, no_embed_class = None, False
        if "pos_embed" in sd:
            grid, no_embed_class = _grid_from_positions(sd["pos_embed"].shape[1], int(class_token) + reg_tokens, True)
        kw["no_embed_class"] = no_embed_class
        reading.conventions.append(
            (
                "use_rot_pos_emb",
                kw["swiglu_mlp"],
                "rotary embeddings hold no weights; EVA-02 models, with SwiGLU MLPs, have them, EVA models do not",
            )
        )
        reading.conventions.append((None, None, "guessed pre-norm blocks (EVA models with use_post_norm differ)"))
        reading.grid_known = grid is not None
    elif family == "beit":
        shared = "rel_pos_bias.relative_position_bias_table" in sd
        table = sd[("rel_pos_bias." if shared else block + "attn.") + "relative_position_bias_table"]
        reading.heads = table.shape[1]
        kw.update(
            qkv_bias=block + "attn.q_bias" in sd,
            init_values=1.0 if block + "gamma_1" in sd else None,
            swiglu_mlp=block + "mlp.fc1_g.weight" in sd,
            scale_mlp=block + "mlp.norm.weight" in sd,
            use_abs_pos_emb="pos_embed" in sd,
            use_rel_pos_bias=not shared,
            use_shared_rel_pos_bias=shared,
            use_fc_norm=fc_norm,
        )
        _pooling(reading, True, fc_norm)
        grid = _grid_from_table(table.shape[0], extra=3)
    elif family == "cait":
        reading.heads = sd[block + "attn.proj_l.weight"].shape[0]
        depth_token_only = block_count(sd, "blocks_token_only")
        kw.update(
            qkv_bias=block + "attn.qkv.bias" in sd,
            depth_token_only=depth_token_only,
            mlp_ratio_token_only=_ratio(sd["blocks_token_only.0.mlp.fc2.weight"].shape[1], embed_dim)
            if depth_token_only
            else 4.0,
            global_pool="token",
        )
        grid, _ = _grid_from_positions(sd["pos_embed"].shape[1], 0, False)
    elif family == "vit-relpos":
        shared = any(k.startswith("shared_rel_pos.") for k in sd)
        rel = "shared_rel_pos." if shared else block + "attn.rel_pos."
        kw.update(
            class_token=class_token,
            qkv_bias=block + "attn.qkv.bias" in sd,
            qk_norm=reading.head_width is not None,
            init_values=1.0 if block + "ls1.gamma" in sd else None,
            fc_norm=fc_norm,
            shared_rel_pos=shared,
        )
        _pooling(reading, class_token, fc_norm)
        if rel + "relative_position_bias_table" in sd:
            table = sd[rel + "relative_position_bias_table"]
            reading.heads = table.shape[1]
            kw["rel_pos_type"] = "bias"
            grid = _grid_from_table(table.shape[0], extra=3 * int(class_token))
        else:
            reading.heads = sd[rel + "mlp.fc2.weight"].shape[0]
            kw["rel_pos_type"] = "mlp" if rel + "mlp.fc2.bias" in sd else "mlp_swin"
            kw["rel_pos_dim"] = sd[rel + "mlp.fc1.weight"].shape[0]
            grid = None  # the MLP computes the bias for any grid
            reading.grid_known = False
        reading.conventions.append(
            (None, None, "guessed pre-norm blocks (relative-position ViTs named *_rpn put the norm after attention)")
        )
    else:
        raise DiagError(f"no architecture reader for the {family} family")
    if grid is not None:
        kw["img_size"] = grid * kw["patch_size"]
    elif img_size is not None:
        kw["img_size"] = img_size
    return reading


def _read_deepvit(sd: Tensors, depth: int, in_chans: int | None) -> Reading:
    """Official DeepViT and vit-pytorch keys (after ``layouts.to_our_keys``)."""
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
    grid, _ = _grid_from_positions(sd["pos_embed"].shape[1], int(kw["class_token"]), False)
    kw["img_size"] = grid * kw["patch_size"]
    inner_dim = sd["blocks.0.attn.qkv.weight"].shape[0] // 3
    kw["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    kw["mlp_ratio"] = _ratio(sd["blocks.0.mlp.fc1.weight"].shape[0], embed_dim)
    kw["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    thetas = [
        sd.get(f"blocks.{i}.attn.reatten_matrix.weight", sd.get(f"blocks.{i}.attn.reattn_weights"))
        for i in range(depth)
    ]
    kw["apply_transform"] = [theta is not None for theta in thetas]
    reading = Reading("deepvit", kw, inner_dim)
    if any(kw["apply_transform"]):
        reading.heads = next(theta for theta in thetas if theta is not None).shape[0]
        if any(k.endswith(".attn.reattn_weights") for k in sd):
            kw["theta"] = "param"
    kw["fc_norm"] = "fc_norm.weight" in sd
    kw["final_norm"] = "norm.weight" in sd
    if not kw["class_token"]:
        kw["global_pool"] = "avg"
    return reading


def _pooling(reading: Reading, class_token: bool, fc_norm: bool) -> None:
    """Average pooling without a class token or with a norm after pooling (timm's ``fc_norm`` rule);
    otherwise the class token is the convention, which a base's pooling replaces."""
    if fc_norm or not class_token:
        reading.kwargs["global_pool"] = "avg"
    else:
        reading.conventions.append(("global_pool", "token", ""))


def _attention_width(sd: Tensors, block: str) -> int:
    if block + "attn.qkv.weight" in sd:
        return sd[block + "attn.qkv.weight"].shape[0] // 3
    return sd[block + "attn.q_proj.weight"].shape[0]


def _ratio(hidden: int, width: int) -> float:
    """An MLP ratio r with ``int(width * r) == hidden``, as timm computes the hidden width."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # float rounding can land just below
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _grid_from_positions(positions: int, prefix: int, may_skip_prefix: bool) -> tuple[int, bool]:
    """The square patch grid of ``pos_embed``, and whether its prefix tokens carry no position
    (timm's ``no_embed_class``, possible where ``may_skip_prefix``)."""
    grid = math.isqrt(max(positions - prefix, 0))
    if grid * grid == positions - prefix and grid > 0:
        return grid, False
    grid = math.isqrt(positions)
    if may_skip_prefix and prefix and grid * grid == positions:
        return grid, True
    raise DiagError(
        f"pos_embed holds {positions} positions: not a square patch grid (+{prefix} prefix tokens); "
        "deepvit-diag reads square grids"
    )


def _grid_from_table(rows: int, extra: int) -> int:
    """The grid g of a relative-position table with ``(2g - 1)^2 + extra`` rows."""
    side = math.isqrt(rows - extra)
    if side * side != rows - extra or side % 2 == 0:
        raise DiagError(f"a relative position table of {rows} rows fits no square patch grid")
    return (side + 1) // 2


def _split_patch_width(patch_width: int, in_chans: int | None) -> tuple[int, int]:
    """vit-pytorch flattens (p, p, C) patches: RGB when the width allows it, else greyscale."""
    for channels in [in_chans] if in_chans else [3, 1]:
        patch = math.isqrt(patch_width // channels)
        if patch * patch * channels == patch_width:
            return channels, patch
    raise DiagError(
        f"cannot split the patch embedding's input width {patch_width} into channels x patch x patch; "
        "pass in_chans=N (--in-chans N)"
    )


# ----------------------------------------------------------------------------- what a base says


def family_of_class(cls: type) -> str | None:
    """The family of a model class (the most specific one)."""
    return next((family for family, base in MODEL_CLASSES.items() if issubclass(cls, base)), None)


@functools.lru_cache(maxsize=64)
def _named_values(name: str, kwargs_json: str) -> tuple[str, dict[str, Any]]:
    """The family of timm model ``name`` built with ``kwargs``, and every value the inference compares:
    what its tensors would say, plus heads, eps, activation, pooling (built on the meta device)."""
    with torch.device("meta"):
        model = create_timm(name, **json.loads(kwargs_json))
    family = family_of_class(type(model))
    if family is None:
        return "", {}
    sd = model.state_dict()
    values = dict(_read(sd, family, None, None).kwargs)
    values["num_heads"] = model.blocks[0].attn.num_heads
    eps = next((m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)), None)
    if eps is not None:
        values["norm_eps"] = eps
    if family in ("vit", "deit-distilled"):
        act = getattr(model.blocks[0].mlp, "act", None)
        values["act_layer"] = ACTIVATIONS.get(type(act), type(act).__name__)
        values["dynamic_img_size"] = bool(model.dynamic_img_size)
    if family == "eva":
        values["use_rot_pos_emb"] = model.rope is not None
        values["dynamic_img_size"] = bool(model.dynamic_img_size)
    values["global_pool"] = model.global_pool
    if "img_size" not in values:
        values["img_size"] = model.patch_embed.img_size[0]
    return family, values


def named_values(arch: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The family of a base arch and the values it states (a timm name: everything it builds with)."""
    if arch["family"] == "timm":
        try:
            family, values = _named_values(arch["name"], json.dumps(arch["kwargs"], sort_keys=True))
        except Exception as err:  # a name's own constructor refusing the base's kwargs
            raise DiagError(f"cannot build {arch['name']} to compare it with the weights: {err}") from None
        return family or None, {**values, **arch["kwargs"]}
    return arch["family"], dict(arch["kwargs"])


# ----------------------------------------------------------------------------- inference


@dataclass
class Inference:
    """``infer_arch``'s answer: the arch dict and the notes to announce (contradictions, guesses)."""

    arch: dict[str, Any]
    notes: list[str]


def infer_arch(
    sd: Tensors,
    layout: str,
    *,
    base: dict[str, Any] | None = None,
    hints: dict[str, Any] | None = None,
    label: str = "",
    overrides: dict[str, Any] | None = None,
) -> Inference:
    """The arch ``sd`` (in our keys) fits: overrides > the tensors > ``base`` (an arch of the same family)
    and ``hints`` (values for any family, e.g. from a Hugging Face config) > the family's convention.
    ``label`` names the base or the hints in notes, e.g. "the model name 'vit_base_patch16_224'"."""
    overrides = dict(overrides or {})
    family = detect_family(sd)
    base_family, stated = named_values(base) if base else (None, {})
    notes: list[str] = []
    if base and base_family != family:
        notes.append(
            f"{label} is a {base_family or base['family']} architecture but the weights are {family}: "
            "built as the weights say, ignoring it"
        )
        base, stated = None, {}
    stated.update(hints or {})
    in_chans = overrides.get("in_chans", stated.get("in_chans"))
    reading = read_tensors(sd, family, in_chans, overrides.get("img_size", stated.get("img_size")))
    facts = reading.kwargs
    differences = [
        f"{key} {stated[key]!r} -> {facts[key]!r}"
        for key in facts
        if key in stated and key not in overrides and key not in _NOT_COMPARED and stated[key] != facts[key]
    ]
    if differences:
        notes.append(f"the weights differ from {label} in {', '.join(differences)}; built as the weights say")
    values = {**stated, **facts, **overrides}

    def guess(key: str, value: Any, reason: str) -> None:
        if key not in overrides and key not in stated and key not in facts:
            values[key] = value
            if reason:
                notes.append(f"guessed {key}={value!r} ({reason}); {hint(key)} if that is wrong")

    _fill_heads(reading, values, stated, overrides, layout, notes, guess)
    if family == "deepvit":
        _fill_deepvit(values, layout, guess)
    if family == "vit" and values.get("pre_norm"):
        guess("norm_eps", CLIP_EPS, "CLIP's convention for pre-norm ViTs")
        guess("act_layer", "gelu", "OpenCLIP's; OpenAI's CLIP image towers use 'quick_gelu'")
    for key, value, reason in reading.conventions:
        if key is not None:
            guess(key, value, reason)
        elif base is None:
            notes.append(f"{reason}; pass arch=NAME (--arch NAME) if that is wrong")
    if not reading.grid_known and "img_size" not in values:
        guess("img_size", 224, "no tensor holds the patch grid")
    _check_heads(values, reading.inner_dim)
    return Inference(_arch(family, values, reading, base, overrides), notes)


# What a caller may state about a file beyond ``arch=``: ``load_model``'s keyword arguments, which are
# also the CLI's options (``--num-heads``; ``--num-heads-a`` / ``-b`` for compare).
HINTS = (
    "num_heads",
    "embed_dim",
    "depth",
    "mlp_ratio",
    "img_size",
    "patch_size",
    "num_classes",
    "in_chans",
    "global_pool",
    "norm_eps",
    "act_layer",
    "dynamic_img_size",
    "transform_scale",
)


def hint(key: str) -> str:
    """How a caller states ``key``: the API argument and the CLI option (``arch=`` for the rest)."""
    if key in HINTS:
        return f"pass {key}=... (--{key.replace('_', '-')})"
    return "pass arch=NAME (--arch NAME)"


Guess = Callable[[str, Any, str], None]


def _fill_heads(
    reading: Reading,
    values: dict[str, Any],
    stated: dict[str, Any],
    overrides: dict[str, Any],
    layout: str,
    notes: list[str],
    guess: Guess,
) -> None:
    """The head count: a per-head tensor or ``q_norm``'s width, the caller, a base of the weights' width,
    a base of another width scaled, or the layout's convention."""
    inner = reading.inner_dim
    if reading.heads is not None:
        values["num_heads"] = overrides.get("num_heads", reading.heads)
        return
    if reading.head_width is not None:
        values["num_heads"] = overrides.get("num_heads", inner // reading.head_width)
        return
    if "num_heads" in overrides:
        return
    if "num_heads" in stated:
        named_heads, named_width = stated["num_heads"], stated.get("embed_dim")
        if named_width in (None, values["embed_dim"]) or not isinstance(named_heads, int) or named_heads < 1:
            return  # the base is of the weights' width: its head count holds
        head_width = named_width // named_heads
        if inner % head_width == 0:
            heads, why = inner // head_width, f"heads of width {head_width} as in {named_heads} for width {named_width}"
        else:
            heads, why = named_heads, f"the base's head count, although its width is {named_width}"
        values["num_heads"] = heads
        notes.append(f"guessed num_heads={heads} ({why}); {hint('num_heads')} if that is wrong")
        return
    if layout == LUCIDRAINS_VIT:
        if inner % LUCIDRAINS_DIM_HEAD == 0:
            guess("num_heads", inner // LUCIDRAINS_DIM_HEAD, f"vit-pytorch's default dim_head={LUCIDRAINS_DIM_HEAD}")
    elif reading.family in ("vit", "deepvit") and all(values.get(k) == v for k, v in PAPER_VIT_SHAPE.items()):
        guess("num_heads", OFFICIAL_HEADS, "")  # the paper's ViT shape: every official model has 12
    elif reading.family != "deepvit" and inner % TIMM_HEAD_WIDTH == 0:
        guess("num_heads", inner // TIMM_HEAD_WIDTH, f"timm's convention of {TIMM_HEAD_WIDTH}-wide heads")
    elif inner % OFFICIAL_HEADS == 0:
        guess("num_heads", OFFICIAL_HEADS, "every official DeepViT/ViT model has 12")
    if "num_heads" not in values:
        raise DiagError(
            f"cannot tell the number of attention heads (qkv width {inner}) from the weights; "
            f"{hint('num_heads')} or arch=NAME (--arch NAME)"
        )


def _fill_deepvit(values: dict[str, Any], layout: str, guess: Guess) -> None:
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


def _check_heads(values: dict[str, Any], inner_dim: int) -> None:
    heads = values["num_heads"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise DiagError(f"num_heads must be a whole number of at least 1, got {heads!r}")
    if inner_dim % heads:
        raise DiagError(f"num_heads={heads} does not divide the qkv width {inner_dim}")


def _arch(
    family: str, values: dict[str, Any], reading: Reading, base: dict[str, Any] | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The arch dict: family ``vit``/``deepvit`` (deepvit-diag's classes) or ``timm`` with a name."""
    if family == "deepvit" or (family == "vit" and not (base and base["family"] == "timm")):
        arch_family = family
        kwargs = _arch_kwargs(arch_family, values, reading, overrides)
        data_cfg = copy.deepcopy((base or {}).get("pretrained_cfg") or PAPER_DATA_CFG)
        arch = {"family": arch_family, "kwargs": kwargs}
    else:
        name = base["name"] if base and base["family"] == "timm" else _conventional_name(family, values)
        _, defaults = named_values({"family": "timm", "name": name, "kwargs": {}})
        keys = FAMILY_KEYS[family]
        kwargs = {
            k: values[k] for k in keys if k in values and (k in overrides or defaults.get(k, _MISSING) != values[k])
        }
        kwargs.update({k: v for k, v in overrides.items() if k not in kwargs})
        data_cfg = data_config(name)
        if base and base.get("pretrained_cfg"):
            data_cfg.update(base["pretrained_cfg"])
        arch = {"family": "timm", "name": name, "kwargs": kwargs}
    img = values.get("img_size", 224)
    data_cfg.update(input_size=(values.get("in_chans", 3), img, img), num_classes=values["num_classes"])
    arch["pretrained_cfg"] = data_cfg
    return arch


_MISSING = object()


def _conventional_name(family: str, values: dict[str, Any]) -> str:
    if family == "eva" and values.get("swiglu_mlp"):
        return CONVENTIONAL_NAMES["eva-02"]
    if family == "vit":
        return "vit_base_patch16_224"
    return CONVENTIONAL_NAMES[family]


def _arch_kwargs(
    arch_family: str, values: dict[str, Any], reading: Reading, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The kwargs of a ``vit``/``deepvit`` arch in ``FAMILY_KEYS`` order, timm's defaults left out."""
    if arch_family == "deepvit" and reading.inner_dim != values["embed_dim"]:
        values.setdefault("head_dim", reading.inner_dim // values["num_heads"])
    if arch_family == "deepvit" and values.get("theta") != "param":
        values.pop("theta", None)
    keys = FAMILY_KEYS[arch_family]
    ordered = [k for k in keys if k in values] + [k for k in overrides if k not in keys]
    return {
        k: values[k]
        for k in ordered
        if k in overrides or not (arch_family == "vit" and k in _VIT_DEFAULTS and values[k] == _VIT_DEFAULTS[k])
    }
