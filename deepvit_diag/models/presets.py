"""The paper's architectures as named presets, registered with timm.

``timm.create_model("deepvit32")`` and ``build_model(PRESETS["deepvit32"])`` give the
same network. An *arch* is a plain JSON-able dict, which is also what the project's
checkpoint format embeds::

    {"family": "vit" | "deepvit", "kwargs": {...constructor arguments...},
     "pretrained_cfg": {...timm data config: input_size, mean, std, crop_pct, ...}}

``family="vit"`` is ``timm.models.vision_transformer.VisionTransformer`` (the paper's
ViT-NB baselines load into it strictly); ``family="deepvit"`` is
``DeepVisionTransformer``. Architectures from the paper and the official repository
(docs/checkpoints.md).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

from timm.layers import LayerNorm
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    model_entrypoint,
    register_model,
)
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .deepvit import DeepVisionTransformer

# Official default_cfgs: mean/std 0.5, crop 0.9, bicubic (dvit_repo models/deep_vision_transformer.py).
PAPER_DATA_CFG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "crop_pct": 0.9,
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "num_classes": 1000,
    "first_conv": "patch_embed.proj",
    "classifier": "head",
}

# The data config (timm's pretrained_cfg) entries that say how images are preprocessed, and nothing
# about where weights come from (no file, url or hub id).
DATA_CONFIG_KEYS = (
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "first_conv",
    "classifier",
)


def data_config(name: str, pretrained_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``DATA_CONFIG_KEYS`` entries of ``pretrained_cfg``, by default timm's for model ``name``."""
    if pretrained_cfg is None:
        cfg = get_pretrained_cfg(name)
        pretrained_cfg = cfg.to_dict() if cfg else {}
    return {k: v for k, v in pretrained_cfg.items() if k in DATA_CONFIG_KEYS and v is not None}


_PAPER_COMMON = dict(
    img_size=224, patch_size=16, embed_dim=384, num_heads=12, mlp_ratio=3.0, qkv_bias=True, num_classes=1000
)


def _vit(depth: int) -> dict[str, Any]:
    return {"family": "vit", "kwargs": {**_PAPER_COMMON, "depth": depth}}


def _deepvit(depth: int, reattn_last: int | None = None, **extra: Any) -> dict[str, Any]:
    flags = [True] * depth if reattn_last is None else [False] * (depth - reattn_last) + [True] * reattn_last
    return {"family": "deepvit", "kwargs": {**_PAPER_COMMON, "depth": depth, "apply_transform": flags, **extra}}


PRESETS: dict[str, dict[str, Any]] = {
    "vit16": _vit(16),
    "vit24": _vit(24),
    "vit32": _vit(32),
    "deepvit16": _deepvit(16),
    "deepvit24": _deepvit(24),
    "deepvit32": _deepvit(32),
    "deepvit_s": _deepvit(16, 5, embed_dim=396, embed_layer="cnn", transform_scale=True, scale_adjustment=0.5),
    "deepvit_l": _deepvit(32, 12, embed_dim=420, embed_layer="cnn", scale_adjustment=0.5),
}
for _arch in PRESETS.values():
    _arch["pretrained_cfg"] = dict(PAPER_DATA_CFG)

PRESET_DESCRIPTIONS = {
    "vit16": "ViT-16B: 16 blocks, dim 384, 12 heads (paper baseline)",
    "vit24": "ViT-24B: 24 blocks, dim 384, 12 heads (paper baseline)",
    "vit32": "ViT-32B: 32 blocks, dim 384, 12 heads (paper baseline)",
    "deepvit16": "DeepViT-16B: Re-attention in all 16 blocks",
    "deepvit24": "DeepViT-24B: Re-attention in all 24 blocks",
    "deepvit32": "DeepViT-32B: Re-attention in all 32 blocks",
    "deepvit_s": "DeepViT-S: 16 blocks, dim 396, CNN stem, Re-attention in the last 5",
    "deepvit_l": "DeepViT-L: 32 blocks, dim 420, CNN stem, Re-attention in the last 12",
}

# The model class of each arch family (see the module docstring).
FAMILY_CLASSES = {"vit": VisionTransformer, "deepvit": DeepVisionTransformer}


def with_overrides(arch: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A copy of ``arch`` with constructor arguments replaced (timm names).

    A new ``depth`` on a DeepViT keeps the Re-attention pattern's tail: blocks counted
    from the end keep their flag, new leading blocks get the first block's flag.
    """
    arch = copy.deepcopy(arch)
    kwargs = arch["kwargs"]
    flags = kwargs.get("apply_transform")
    if "depth" in overrides and isinstance(flags, list) and "apply_transform" not in overrides:
        depth = int(overrides["depth"])
        flags = ([flags[0]] * max(0, depth - len(flags)) + flags)[-depth:]
        kwargs["apply_transform"] = flags
    kwargs.update(overrides)
    if "img_size" in overrides and "pretrained_cfg" in arch:
        size = overrides["img_size"]
        height, width = (size, size) if isinstance(size, int) else size  # (height, width): a non-square grid
        arch["pretrained_cfg"]["input_size"] = (kwargs.get("in_chans", 3), int(height), int(width))
    if "num_classes" in overrides and "pretrained_cfg" in arch:
        arch["pretrained_cfg"]["num_classes"] = kwargs["num_classes"]
    return arch


def constructor_kwargs(family: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An arch's kwargs as a constructor takes them. Archs are plain JSON, so timm classes get their
    LayerNorm eps as ``norm_eps`` (made into ``norm_layer``; DeepViT takes ``norm_eps`` itself) and their
    activation by timm's name (``act_layer="quick_gelu"``)."""
    kwargs = dict(kwargs)
    if family != "deepvit" and "norm_eps" in kwargs:
        kwargs["norm_layer"] = partial(LayerNorm, eps=kwargs.pop("norm_eps"))
    return kwargs


def create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm model ``name`` with random weights and constructor ``kwargs`` as given. Unlike
    ``timm.create_model``, which drops arguments set to None, this keeps them: ``init_values=None`` is how
    a checkpoint without layer scale says so to a name whose default has it."""
    return model_entrypoint(name)(pretrained=False, **constructor_kwargs("timm", kwargs))


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Instantiate an arch dict (random weights); the model keeps it as ``model.arch``."""
    family = arch.get("family")
    if family not in FAMILY_CLASSES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILY_CLASSES)}")
    model = FAMILY_CLASSES[family](**constructor_kwargs(family, arch["kwargs"]))
    attach_arch(model, arch)
    return model


def attach_arch(model: nn.Module, arch: dict[str, Any]) -> None:
    """Record ``arch`` on the model and expose its data config the way timm does."""
    model.arch = copy.deepcopy(arch)
    if "pretrained_cfg" in arch:
        cfg = {**getattr(model, "pretrained_cfg", {}), **arch["pretrained_cfg"]}
        model.pretrained_cfg = cfg
        model.default_cfg = cfg


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    # timm's create_model passes its own loading options along with the model's arguments.
    loading = {k: kwargs.pop(k) for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir") if k in kwargs}
    arch = with_overrides(PRESETS[variant], **kwargs)
    loading = {k: v for k, v in loading.items() if v is not None}
    kwargs = constructor_kwargs(arch["family"], arch["kwargs"])
    model = build_model_with_cfg(FAMILY_CLASSES[arch["family"]], variant, pretrained, **loading, **kwargs)
    attach_arch(model, arch)
    return model


default_cfgs = generate_default_cfgs({name: {**PAPER_DATA_CFG, "license": "apache-2.0"} for name in PRESETS})


@register_model
def vit16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("vit16", pretrained, **kwargs)


@register_model
def vit24(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("vit24", pretrained, **kwargs)


@register_model
def vit32(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("vit32", pretrained, **kwargs)


@register_model
def deepvit16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("deepvit16", pretrained, **kwargs)


@register_model
def deepvit24(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("deepvit24", pretrained, **kwargs)


@register_model
def deepvit32(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("deepvit32", pretrained, **kwargs)


@register_model
def deepvit_s(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("deepvit_s", pretrained, **kwargs)


@register_model
def deepvit_l(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("deepvit_l", pretrained, **kwargs)
