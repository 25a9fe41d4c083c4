"""What a checkpoint says about its model, checked against the tensors it holds before anything is built.

A file decides how large a model the loader builds: its metadata names an architecture, a training
script recorded a model name, a Hugging Face ``config.json`` states sizes, or ``inference.infer_arch``
reads depth and widths off its key names and shapes. None of it is trusted until checked, so that
a small file can neither make the loader allocate a huge model nor choose what else is read. The
steps, in the loader's order, for every family and layout (new ones included):

1. ``checked_arch``: an arch (from a file's metadata, or inferred) sets only architecture arguments
   (``ARCH_ARGUMENTS``: never paths such as ``checkpoint_path``, hub names or pretrained flags), those
   with a fixed set of values or a range within it (``ARGUMENT_RULES``: activations by name, eps,
   image sizes, which size buffers no tensor is compared with); a ``timm`` family names a model
   registered with this timm (no ``hf-hub:`` names); its data config has only ``DATA_CONFIG_KEYS``,
   with values in range (``checked_data_config``).
2. ``check_depth``: a ``depth`` equals the number of blocks the tensors hold (``layouts.block_count``:
   ``blocks.0`` to ``blocks.N-1`` with no gap), and CaiT's ``depth_token_only`` the number of its
   class-attention blocks, before a single block is built.
3. ``check_fit``: the model, built on the meta device (shapes only, no memory), has exactly the file's
   keys and shapes, so every width, head count, image size and class count is the tensors' own;
   every tensor it holds as floating point is floating point in the file (integer weights are
   refused, integer buffers such as BatchNorm's ``num_batches_tracked`` are fine) and finite.

Only then is the model built for real, which costs no more memory than the file's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import timm
import torch
from torch import nn

from ..errors import DiagError
from ..hints import HintedError, Message
from ..models.presets import DATA_CONFIG_KEYS
from .inference import FAMILY_ARGUMENTS
from .layouts import block_count
from .provenance import arch_summary

ARCH_FAMILIES = ("vit", "deepvit", "timm")
# Constructor arguments an architecture read from a file may set: the shape of the network (what
# deepvit-diag itself writes, see inference.FAMILY_ARGUMENTS) and dropout rates, which do nothing in eval mode.
ARCH_ARGUMENTS = frozenset(key for keys in FAMILY_ARGUMENTS.values() for key in keys) | {
    "drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
}
MAX_IMAGE_SIZE = 8192  # pixels; relative-position ViTs size index buffers by it, which no tensor shows
# Arguments with a fixed set of values, or a range: (test, the rule in words).
ARGUMENT_RULES = {
    "act_layer": (
        lambda v: v in ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu"),
        "one of gelu, gelu_tanh, quick_gelu, relu, silu",
    ),
    "norm_eps": (lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1"),
    "img_size": (
        lambda v: (
            (_ints([v], 1) and 1 <= v <= MAX_IMAGE_SIZE) or (_ints(v, 2) and 1 <= min(v) and max(v) <= MAX_IMAGE_SIZE)
        ),
        f"a whole number from 1 to {MAX_IMAGE_SIZE}, or two (height, width)",
    ),
    "ref_feat_shape": (
        lambda v: v is None or (_ints(v, 2) and 1 <= min(v) and max(v) <= 1024),
        "two whole numbers up to 1024",
    ),
    "attn_type": (lambda v: v in ("eva", "rope"), "one of eva, rope"),
    "rope_type": (lambda v: v in ("cat", "mixed"), "one of cat, mixed"),
    "rel_pos_type": (lambda v: v in ("mlp", "mlp_swin", "bias"), "one of mlp, mlp_swin, bias"),
    "global_pool": (lambda v: v in ("", "token", "avg", "avgmax", "max", "map"), "one of token, avg, avgmax, max, map"),
    **{  # counts the tensors' shapes are checked against later, but which must first build a model at all
        key: (lambda v: _ints([v], 1) and v >= 1, "a whole number >= 1") for key in ("num_heads", "embed_dim", "depth")
    },
}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
# Every timm model uses 0.875 to 1.15; images are resized to image size / crop_pct before cropping.
CROP_PCT_RANGE = (0.5, 1.5)


def checked_arch(arch: Any, source: str) -> dict[str, Any]:
    """``arch`` (a file's metadata, parsed JSON) as an arch dict, or a ``DiagError`` naming ``source``."""
    if not isinstance(arch, dict):
        raise DiagError(f"{source}: its architecture metadata is {_kind(arch)}, not an object with family and kwargs")
    unknown = sorted(set(arch) - {"family", "name", "kwargs", "pretrained_cfg"})
    if unknown:
        raise DiagError(f"{source}: its architecture metadata has unknown entries: {', '.join(unknown)}")
    family, kwargs = arch.get("family"), arch.get("kwargs")
    if family not in ARCH_FAMILIES:
        raise DiagError(f"{source}: its architecture family {family!r} is not one of {', '.join(ARCH_FAMILIES)}")
    if not isinstance(kwargs, dict):
        raise DiagError(f"{source}: its architecture's kwargs are {_kind(kwargs)}, not an object")
    refused = sorted(set(kwargs) - ARCH_ARGUMENTS)
    if refused:
        raise DiagError(
            f"{source}: its architecture metadata sets {', '.join(map(str, refused))}: not an architecture "
            "argument deepvit-diag takes from a file (a file never chooses paths, downloads or pretrained weights)"
        )
    for key, (test, rule) in ARGUMENT_RULES.items():
        if key in kwargs and not test(kwargs[key]):
            raise DiagError(f"{source}: its architecture's {key} {kwargs[key]!r} is not {rule}")
    checked: dict[str, Any] = {"family": family}
    if family == "timm":
        name = arch.get("name")
        if not isinstance(name, str) or not timm.is_model(name):
            raise DiagError(f"{source}: its architecture names {name!r}, which is not a timm model this timm knows")
        checked["name"] = name
    elif "name" in arch:
        raise DiagError(f"{source}: a {family} architecture has no name (only timm ones do)")
    checked["kwargs"] = dict(kwargs)
    if "pretrained_cfg" in arch:
        checked["pretrained_cfg"] = checked_data_config(arch["pretrained_cfg"], source)
    return checked


def checked_data_config(config: Any, source: str) -> dict[str, Any]:
    """A file's data config (mean, std, crop, ...): only ``DATA_CONFIG_KEYS``, each of a sane type and size."""
    if not isinstance(config, dict):
        raise DiagError(f"{source}: its data config is {_kind(config)}, not an object")
    unknown = sorted(set(config) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise DiagError(f"{source}: its data config has entries deepvit-diag does not take: {', '.join(unknown)}")

    def refuse(key: str, rule: str) -> DiagError:
        return DiagError(f"{source}: its data config's {key} {config[key]!r} is not {rule}")

    if "input_size" in config and not (_ints(config["input_size"], 3) and min(config["input_size"]) >= 1):
        raise refuse("input_size", "three positive whole numbers (channels, height, width)")
    if "crop_pct" in config and not (
        _number(config["crop_pct"]) and CROP_PCT_RANGE[0] <= config["crop_pct"] <= CROP_PCT_RANGE[1]
    ):
        raise refuse("crop_pct", f"a number from {CROP_PCT_RANGE[0]} to {CROP_PCT_RANGE[1]}")
    for key in ("mean", "std"):
        values = config.get(key)
        if values is not None and not (
            isinstance(values, (list, tuple)) and 1 <= len(values) <= 4 and all(map(_number, values))
        ):
            raise refuse(key, "a list of 1 to 4 numbers")
    if "std" in config and min(config["std"]) <= 0:
        raise refuse("std", "positive")
    if "interpolation" in config and config["interpolation"] not in INTERPOLATIONS:
        raise refuse("interpolation", f"one of {', '.join(INTERPOLATIONS)}")
    if "crop_mode" in config and config["crop_mode"] not in CROP_MODES:
        raise refuse("crop_mode", f"one of {', '.join(CROP_MODES)}")
    if "num_classes" in config and not (_ints([config["num_classes"]], 1) and config["num_classes"] >= 0):
        raise refuse("num_classes", "a whole number")
    return dict(config)


def check_depth(arch: dict[str, Any], keys: Iterable[str], what: str) -> None:
    """A ``depth`` in ``arch`` must be the number of blocks the state dict's ``keys`` hold (timm names
    without one have their registered depth), and a ``depth_token_only`` the number of CaiT's
    class-attention blocks (``blocks_token_only``)."""
    keys = list(keys)
    for argument, blocks_name in (("depth", "blocks"), ("depth_token_only", "blocks_token_only")):
        depth = arch["kwargs"].get(argument)
        if depth is None:
            continue
        blocks = block_count(keys, blocks_name)
        if not _ints([depth], 1) or depth != blocks:
            held = f"{blocks} ({blocks_name}.0 to {blocks_name}.{blocks - 1})" if blocks else "none"
            raise DiagError(f"{what} does not fit the architecture ({depth!r} {blocks_name}): the file holds {held}")


def check_fit(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str, hint: Message | str = "") -> None:
    """``state_dict`` must have exactly ``model``'s keys and shapes (``model`` may live on the meta device),
    floating-point tensors where the model has them, and no NaN or infinity in them."""
    expected = model.state_dict()
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = [
        f"{label}: {_first(items)}"
        for label, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
        if items
    ]
    if problems:
        raise HintedError(
            f"{what} does not fit the architecture ({arch_summary(model.arch, model)}): {'; '.join(problems)}", hint
        )
    for key, reference in expected.items():
        tensor = state_dict[key]
        if not reference.is_floating_point():
            continue  # integer buffers (BatchNorm's num_batches_tracked) take any number
        if not tensor.is_floating_point():
            raise DiagError(
                f"{what}: tensor {key} holds {str(tensor.dtype).removeprefix('torch.')} numbers, not floating point "
                "(quantised or converted weights?); deepvit-diag reads float16, bfloat16, float32 or float64 weights"
            )
        finite = torch.isfinite(tensor if tensor.element_size() > 1 else tensor.to(torch.float16))
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise DiagError(
                f"{what}: tensor {key} holds {bad} NaN or infinite value(s) among {tensor.numel()}; "
                "the weights are damaged (or come from a diverged training run)"
            )


def _kind(value: Any) -> str:
    """How JSON would name a value's type, for messages."""
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _ints(values: Any, count: int) -> bool:
    return (
        isinstance(values, (list, tuple))
        and len(values) == count
        and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
