"""State-dict layouts: detect them from the keys, convert them to our modules' keys, infer the arch.

Layouts (docs/checkpoints.md):

* ``official``: the official DeepViT keys (``blocks.N.attn.reatten_matrix``, ``var_norm``, CNN stem
  ``patch_embed.conv1``...), which are also the keys of ``DeepVisionTransformer``'s own state dict;
* ``timm``: ``timm.models.vision_transformer.VisionTransformer`` (the official ViT-NB baselines too);
* ``lucidrains-vit`` / ``lucidrains-deepvit``: vit-pytorch's ``vit.py`` / ``deepvit.py``, renamed into
  ``DeepVisionTransformer`` with ``embed_layer="linear"`` and ``theta="param"``.

``infer_arch`` reads every value the weights determine (depth, width, MLP ratio, patch size, image size
from ``pos_embed``, qkv bias, classes, stem, which blocks have Re-attention, heads from Theta). The rest
comes, in this order, from the caller's overrides, a base arch (``arch=``, a checkpoint's recorded model
name), a documented rule, or a guess that the caller must announce:

* plain ViT in the official/timm layout: 12 heads (every official model has 12; announced when the
  width and MLP ratio are not the paper's 384 and 3);
* official/timm LayerNorm eps 1e-6, vit-pytorch's 1e-5 (``nn.LayerNorm``'s default it uses);
* class token: ``global_pool="avg"`` with ``fc_norm`` weights (timm's rule), else ``"token"``;
* CNN stem: ``scale_adjustment=0.5`` (DeepViT-S and -L both); ``transform_scale`` from the preset
  with the same width and depth, else guessed ``False``;
* vit-pytorch: 3 input channels when the patch width allows it, else 1; guessed: ViT heads from
  ``dim_head=64`` and DeepViT ``pool="cls"`` (vit-pytorch's defaults).

The data config (mean/std, crop) cannot be read from weights: it comes from the base arch or is
the paper's (``PAPER_DATA_CFG``).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import DiagError
from ..models.presets import PAPER_DATA_CFG, PRESETS

Tensors = dict[str, torch.Tensor]

OFFICIAL, TIMM, LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT, NATIVE = (
    "official",
    "timm",
    "lucidrains-vit",
    "lucidrains-deepvit",
    "native",
)

_DEEPVIT_ONLY_MARKERS = (".reatten_matrix.", ".reattn_weights", "patch_embed.conv1.", "patch_embed.layers.")

# vit-pytorch key -> our key; the first matching pattern wins.
_LUCIDRAINS_RENAMES = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
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
]

# Constructor arguments each family takes; anything a base arch carries for the other family is dropped.
_COMMON_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "class_token",
    "global_pool",
    "fc_norm",
    "final_norm",
)
_VIT_ONLY_DEFAULTS = {
    "init_values": None,
    "qk_norm": False,
    "pre_norm": False,
    "reg_tokens": 0,
    "no_embed_class": False,
}
_DEEPVIT_ONLY_KEYS = (
    "apply_transform",
    "theta",
    "embed_layer",
    "head_dim",
    "norm_eps",
    "transform_scale",
    "scale_adjustment",
)
FAMILY_KEYS = {"vit": _COMMON_KEYS + tuple(_VIT_ONLY_DEFAULTS), "deepvit": _COMMON_KEYS + _DEEPVIT_ONLY_KEYS}

OFFICIAL_HEADS = 12
LUCIDRAINS_DIM_HEAD = 64
PAPER_VIT_SHAPE = {"embed_dim": 384, "mlp_ratio": 3.0, "patch_size": 16}


_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


def block_count(keys: Iterable[str]) -> int:
    """How many blocks state-dict keys (in our names) hold: ``blocks.0.*`` to ``blocks.N-1.*``, every one
    present (0 without blocks). A gap is refused, so that one stray key such as ``blocks.100000000.norm1.weight``
    cannot make anything build a model of that depth."""
    indices = sorted({int(match.group(1)) for key in keys if (match := _BLOCK_KEY.match(key))})
    gap = next((expected for expected, index in enumerate(indices) if index != expected), None)
    if gap is not None:
        raise DiagError(
            f"its blocks are not numbered from 0 without gaps: it has blocks.{indices[-1]} but no blocks.{gap} "
            f"({len(indices)} blocks in all)"
        )
    return len(indices)


def detect_layout(sd: Tensors) -> str:
    """Which layout the keys are in (``official``, ``timm``, ``lucidrains-vit``, ``lucidrains-deepvit``)."""
    if "to_patch_embedding.2.weight" in sd and "transformer.layers.0.0.to_qkv.weight" in sd:
        return LUCIDRAINS_DEEPVIT if any(k.endswith(".reattn_weights") for k in sd) else LUCIDRAINS_VIT
    if "pos_embed" in sd and "blocks.0.attn.qkv.weight" in sd:
        return OFFICIAL if any(m in k for k in sd for m in _DEEPVIT_ONLY_MARKERS) else TIMM
    first = ", ".join(list(sd)[:4]) or "none"
    raise DiagError(
        f"not a ViT/DeepViT checkpoint: its keys ({first}, ...) match none of the official DeepViT, timm ViT, "
        "vit-pytorch ViT/DeepViT or deepvit-diag layouts"
    )


def to_our_keys(layout: str, sd: Tensors) -> Tensors:
    """The state dict renamed and reshaped for our modules (a no-op for official/timm/native keys)."""
    if layout in (LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT):
        return convert_lucidrains(sd)
    return dict(sd)


def convert_lucidrains(sd: Tensors) -> Tensors:
    """vit-pytorch ViT/DeepViT keys -> ``DeepVisionTransformer`` keys.

    ViT stores ``pos_embedding`` without a batch axis and ``cls_token`` as (1, D), or (0, D) with
    ``pool="mean"`` (no class token at all); DeepViT stores both with a batch axis.
    """
    out: Tensors = {}
    for key, tensor in sd.items():
        for pattern, replacement in _LUCIDRAINS_RENAMES:
            new_key, found = pattern.subn(replacement, key)
            if found:
                break
        else:
            new_key = key  # unknown keys stay; the strict load names them
        out[new_key] = tensor
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"].reshape(1, -1, out["pos_embed"].shape[-1])
    cls_token = out.pop("cls_token", None)
    if cls_token is not None and cls_token.numel() > 0:
        out["cls_token"] = cls_token.reshape(1, 1, -1)
    return out


def weight_facts(sd: Tensors, in_chans: int | None = None) -> dict[str, Any]:
    """Every constructor argument the weights (in our keys) determine, plus ``inner_dim`` (heads x head width)."""
    try:
        return _weight_facts(sd, in_chans)
    except KeyError as err:
        raise DiagError(f"checkpoint lacks {err.args[0]!r}, needed to read its architecture") from None
    except (IndexError, ZeroDivisionError):
        shapes = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in ("pos_embed", "blocks.0.attn.qkv.weight") if k in sd)
        raise DiagError(f"its tensors do not have the shapes of a ViT ({shapes})") from None


def _weight_facts(sd: Tensors, in_chans: int | None) -> dict[str, Any]:
    embed_dim = sd["pos_embed"].shape[-1]
    facts: dict[str, Any] = {"embed_dim": embed_dim}
    if "patch_embed.conv1.weight" in sd:
        facts.update(
            embed_layer="cnn",
            patch_size=2 * sd["patch_embed.proj.weight"].shape[-1],
            in_chans=sd["patch_embed.conv1.weight"].shape[1],
        )
    elif "patch_embed.layers.2.weight" in sd:
        channels, patch = _split_patch_width(sd["patch_embed.layers.2.weight"].shape[1], in_chans)
        facts.update(embed_layer="linear", patch_size=patch, in_chans=channels)
    else:
        proj = sd["patch_embed.proj.weight"]
        facts.update(embed_layer="conv", patch_size=proj.shape[-1], in_chans=proj.shape[1])

    facts["class_token"] = "cls_token" in sd
    facts["reg_tokens"] = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    prefix = int(facts["class_token"]) + facts["reg_tokens"]
    positions = sd["pos_embed"].shape[1]
    grid = math.isqrt(max(positions - prefix, 0))
    facts["no_embed_class"] = grid * grid != positions - prefix
    if facts["no_embed_class"]:  # timm's no_embed_class: prefix tokens carry no position
        grid = math.isqrt(positions)
        if grid * grid != positions or prefix == 0:
            raise DiagError(f"pos_embed holds {positions} positions: not a square patch grid (+{prefix} prefix tokens)")
    facts["img_size"] = grid * facts["patch_size"]

    depth = block_count(sd)
    if depth == 0:
        raise DiagError("checkpoint has no transformer blocks (blocks.N.*)")
    facts["depth"] = depth
    facts["inner_dim"] = sd["blocks.0.attn.qkv.weight"].shape[0] // 3
    facts["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    facts["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    facts["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0

    thetas = [
        sd.get(f"blocks.{i}.attn.reatten_matrix.weight", sd.get(f"blocks.{i}.attn.reattn_weights"))
        for i in range(depth)
    ]
    facts["apply_transform"] = [theta is not None for theta in thetas]
    if any(facts["apply_transform"]):
        facts["num_heads"] = next(theta for theta in thetas if theta is not None).shape[0]
        if any(k.endswith(".attn.reattn_weights") for k in sd):
            facts["theta"] = "param"

    facts["fc_norm"] = "fc_norm.weight" in sd
    facts["final_norm"] = "norm.weight" in sd
    if not facts["class_token"]:
        facts["global_pool"] = "avg"
    facts["init_values"] = 1.0 if "blocks.0.ls1.gamma" in sd else None  # the value is in the weights
    facts["qk_norm"] = "blocks.0.attn.q_norm.weight" in sd
    facts["pre_norm"] = "norm_pre.weight" in sd
    return facts


def _split_patch_width(patch_width: int, in_chans: int | None) -> tuple[int, int]:
    """vit-pytorch flattens (p, p, C) patches: RGB when the width allows it, else greyscale."""
    for channels in [in_chans] if in_chans else [3, 1]:
        patch = math.isqrt(patch_width // channels)
        if patch * patch * channels == patch_width:
            return channels, patch
    raise DiagError(
        f"cannot split the patch embedding's input width {patch_width} into channels x patch x patch; pass in_chans=N"
    )


def infer_arch(
    sd: Tensors, layout: str, *, base: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The arch that ``sd`` (in our keys) fits, and the guesses made (one sentence each, to announce).

    Precedence: overrides > the weights > ``base`` kwargs > documented rules > guesses.
    """
    overrides = dict(overrides or {})
    base_kwargs = dict(base["kwargs"]) if base else {}
    facts = weight_facts(sd, in_chans=overrides.get("in_chans", base_kwargs.get("in_chans")))
    inner_dim = facts.pop("inner_dim")
    lucidrains = layout in (LUCIDRAINS_VIT, LUCIDRAINS_DEEPVIT)
    if lucidrains:
        facts["norm_eps"] = 1e-5
        if facts["class_token"] and layout == LUCIDRAINS_VIT:
            facts["global_pool"] = "token"  # vit-pytorch ViT has a class token only with pool='cls'
    given = {**base_kwargs, **overrides}
    guesses: list[str] = []

    def fill(key: str, value: Any, guess_reason: str | None = None) -> None:
        if key in facts or key in given:
            return
        facts[key] = value
        if guess_reason:
            guesses.append(f"guessed {key}={value!r} ({guess_reason}); pass {key}=... or arch=... if that is wrong")

    if layout == LUCIDRAINS_DEEPVIT:
        fill("global_pool", "token", "vit-pytorch DeepViT's default pool='cls'")
    else:
        fill(
            "global_pool", "avg" if facts["fc_norm"] else "token"
        )  # timm: fc_norm exists exactly when pooling is 'avg'
    if layout == LUCIDRAINS_VIT:
        if inner_dim % LUCIDRAINS_DIM_HEAD == 0:
            fill("num_heads", inner_dim // LUCIDRAINS_DIM_HEAD, f"vit-pytorch's default dim_head={LUCIDRAINS_DIM_HEAD}")
    elif inner_dim % OFFICIAL_HEADS == 0:
        paper_shaped = all(facts[k] == v for k, v in PAPER_VIT_SHAPE.items())
        fill("num_heads", OFFICIAL_HEADS, None if paper_shaped else "every official DeepViT/ViT model has 12")
    if "num_heads" not in facts and "num_heads" not in given:
        raise DiagError(
            f"cannot tell the number of attention heads (qkv width {inner_dim}) from the weights; "
            "pass num_heads=N (--num-heads N) or arch=NAME"
        )
    if facts["embed_layer"] == "cnn":
        fill("scale_adjustment", 0.5)
        twin = next(
            (
                p
                for p in PRESETS.values()
                if p["kwargs"].get("embed_layer") == "cnn"
                and (p["kwargs"]["embed_dim"], p["kwargs"]["depth"]) == (facts["embed_dim"], facts["depth"])
            ),
            None,
        )
        if twin:
            fill("transform_scale", twin["kwargs"].get("transform_scale", False))
        else:
            fill("transform_scale", False, "DeepViT-L's value; DeepViT-S uses True")

    kwargs = {**facts, **{k: v for k, v in given.items() if k not in facts}, **overrides}
    family = _family(kwargs, inner_dim, lucidrains, base)
    if family == "vit" and kwargs["fc_norm"]:
        kwargs["final_norm"] = True  # timm keeps one of norm / fc_norm, both under final_norm=True
    heads = kwargs["num_heads"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise DiagError(f"num_heads must be a whole number of at least 1, got {heads!r}")
    if inner_dim % heads:
        raise DiagError(f"num_heads={heads} does not divide the qkv width {inner_dim}")
    if inner_dim != kwargs["embed_dim"]:
        kwargs.setdefault("head_dim", inner_dim // heads)
    if family == "deepvit" and kwargs.get("theta") != "param":
        kwargs.pop("theta", None)
    ordered = [k for k in FAMILY_KEYS[family] if k in kwargs] + [k for k in overrides if k not in FAMILY_KEYS[family]]
    kwargs = {k: kwargs[k] for k in ordered if k in overrides or _not_default(family, k, kwargs[k])}

    data_cfg = copy.deepcopy((base or {}).get("pretrained_cfg") or PAPER_DATA_CFG)
    data_cfg.update(
        input_size=(kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"]), num_classes=kwargs["num_classes"]
    )
    return {"family": family, "kwargs": kwargs, "pretrained_cfg": data_cfg}, guesses


def _family(kwargs: dict[str, Any], inner_dim: int, lucidrains: bool, base: dict[str, Any] | None) -> str:
    vit_only = sorted(k for k, default in _VIT_ONLY_DEFAULTS.items() if kwargs.get(k, default) != default)
    deepvit_only = (
        lucidrains
        or any(kwargs["apply_transform"])
        or kwargs["embed_layer"] != "conv"
        or inner_dim != kwargs["embed_dim"]
    )
    if vit_only and deepvit_only:
        raise DiagError(
            f"checkpoint mixes DeepViT parts with timm-only ViT options ({', '.join(vit_only)}); not supported"
        )
    if deepvit_only or (base is not None and base.get("family") == "deepvit" and not vit_only):
        return "deepvit"
    return "vit"


def _not_default(family: str, key: str, value: Any) -> bool:
    """Keep arch dicts readable: timm-only options appear only when a checkpoint uses them."""
    return not (family == "vit" and key in _VIT_ONLY_DEFAULTS and value == _VIT_ONLY_DEFAULTS[key])
