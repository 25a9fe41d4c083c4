"""What every checkpoint family declares (``Family``), what its reader returns (``Reading``), and the
tensor arithmetic the families share (MLP ratio, patch grids from position tables).

A family is one kind of architecture that a state dict in timm's / deepvit-diag's keys can hold: its
timm (or deepvit-diag) model class, how its keys are recognised, how its constructor arguments are read
from the tensors, and its conventions for what no tensor shows. Each family lives in one module of
this package and is registered in ``families.FAMILIES`` (docs/checkpoints.md, "Adding a family").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import QuickGELU
from torch import nn

from ...errors import DiagError
from ..layouts import block_count

Tensors = dict[str, torch.Tensor]
# ``guess(key, value, reason)``: use ``value`` for ``key`` unless the caller, a base or the tensors set it;
# announce it with the option that settles it when ``reason`` is given.
Guess = Callable[[str, Any, str], None]

TIMM_EPS = 1e-6
TIMM_HEAD_WIDTH = 64
OFFICIAL_HEADS = 12
PAPER_VIT_SHAPE = {"embed_dim": 384, "mlp_ratio": 3.0, "patch_size": 16}
ACTIVATIONS = {nn.GELU: "gelu", QuickGELU: "quick_gelu", nn.SiLU: "silu", nn.ReLU: "relu"}

# Constructor arguments of every family (``num_heads`` is decided by ``inference``).
COMMON_ARGUMENTS = (
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


@dataclass
class Reading:
    """What a state dict (in timm/our keys) determines.

    Attributes:
        family: the ``Family.name``.
        kwargs: constructor arguments the tensors determine.
        inner_dim: the attention width (heads x head width).
        heads: the head count where a tensor has one entry per head, else None.
        head_width: the head width where ``q_norm`` holds it, else None.
        grid: the patch grid a tensor holds (rows, columns), else None.
        grid_doubt: why the grid is a guess where the tensors fit another one ("" when they fit one).
        conventions: the family's answers to what no tensor shows, as (argument or None, value,
            reason); a base's values replace them, else they are announced.
    """

    family: str
    kwargs: dict[str, Any]
    inner_dim: int
    heads: int | None = None
    head_width: int | None = None
    grid: tuple[int, int] | None = None
    grid_doubt: str = ""
    conventions: list[tuple[str | None, Any, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """One checkpoint family.

    Attributes:
        name: the family's name in messages (``vit``, ``eva``, ...).
        model_class: timm's (or deepvit-diag's) class; ``family_of_class`` finds the most specific one.
        arguments: the constructor arguments its archs may carry (what deepvit-diag writes into files and
            reads back; ``validation.ARCH_ARGUMENTS`` is their union).
        detect: ``detect(keys)``: whether a state dict with these keys (ours) is of this family. Families are
            asked in ``FAMILIES`` order, so a family's test may assume the earlier ones said no.
        read: ``read(sd, in_chans, img_size)`` -> ``Reading``: every argument the tensors determine
            (``in_chans`` and ``img_size``, the caller's or a base's, settle what the tensors leave open).
        attention: the attention module classes its blocks use (each has a reader in ``readers.READERS``).
        timm_name: ``timm_name(values)``: the registered timm name it is built as when nothing names one.
        own_arch: built as deepvit-diag's own arch family of this name (``vit``, ``deepvit``) unless a timm
            name is the base.
        guess_heads: ``guess_heads(reading, values, layout, guess)``: the head count when no tensor, caller
            or base says it (None: timm's 64-wide heads, else 12).
        conventions: ``conventions(reading, values, layout, guess)``: the family's other guesses, after
            the heads.
        defaults: values left out of an own arch (deepvit-diag's classes) when equal, to keep archs readable.
        built_values: ``built_values(model)``: values a built model shows that its tensors do not (activation,
            rotary embedding), compared with the tensors' when a name is the base.
    """

    name: str
    model_class: type
    arguments: tuple[str, ...]
    detect: Callable[[frozenset[str]], bool]
    read: Callable[[Tensors, int | None, Any], Reading]
    attention: tuple[type, ...]
    timm_name: Callable[[dict[str, Any]], str] | None = None
    own_arch: bool = False
    guess_heads: Callable[[Reading, dict[str, Any], str, Guess], None] | None = None
    conventions: Callable[[Reading, dict[str, Any], str, Guess], None] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    built_values: Callable[[nn.Module], dict[str, Any]] | None = None


def shared_arguments(sd: Tensors) -> dict[str, Any]:
    """What the tensors of every timm ViT family say alike: width, depth, patch, channels, classes, MLP ratio."""
    proj = sd["patch_embed.proj.weight"]
    return {
        "embed_dim": proj.shape[0],
        "depth": block_count(sd),
        "patch_size": proj.shape[-1],
        "in_chans": proj.shape[1],
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "mlp_ratio": mlp_ratio(sd["blocks.0.mlp.fc2.weight"].shape[1], proj.shape[0]),
    }


def q_norm_width(sd: Tensors, block: str) -> int | None:
    """The head width ``q_norm`` holds (qk-norm), else None."""
    key = block + "attn.q_norm.weight"
    return sd[key].shape[0] if key in sd else None


def has_part(keys: Iterable[str], *parts: str) -> bool:
    """Whether any key contains any of ``parts``."""
    return any(part in key for key in keys for part in parts)


def attention_width(sd: Tensors, block: str) -> int:
    """The attention width of ``block`` (``blocks.0.``): fused qkv or a separate query projection."""
    if block + "attn.qkv.weight" in sd:
        return sd[block + "attn.qkv.weight"].shape[0] // 3
    return sd[block + "attn.q_proj.weight"].shape[0]


def mlp_ratio(hidden: int, width: int) -> float:
    """An MLP ratio r with ``int(width * r) == hidden``, as timm computes the hidden width."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # float rounding can land just below
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def is_paper_shape(values: dict[str, Any]) -> bool:
    """The paper's ViT shape (width 384, MLP ratio 3, patch 16), which every official DeepViT/ViT-NB has."""
    return all(values.get(k) == v for k, v in PAPER_VIT_SHAPE.items())


def head_count_guess(reading: Reading, values: dict[str, Any], guess: Guess) -> None:
    """timm's convention: heads 64 wide, else the official 12."""
    inner = reading.inner_dim
    if inner % TIMM_HEAD_WIDTH == 0:
        guess("num_heads", inner // TIMM_HEAD_WIDTH, f"timm's convention of {TIMM_HEAD_WIDTH}-wide heads")
    elif inner % OFFICIAL_HEADS == 0:
        guess("num_heads", OFFICIAL_HEADS, "every official DeepViT/ViT model has 12")


def pooling(reading: Reading, class_token: bool, fc_norm: bool) -> None:
    """Average pooling without a class token; with one, timm's rule (``fc_norm`` exactly with average
    pooling) is a convention, announced: both poolings fit the same tensors, with other logits."""
    if not class_token:
        reading.kwargs["global_pool"] = "avg"
    elif fc_norm:
        reading.conventions.append(("global_pool", "avg", "timm's rule for a norm after pooling (fc_norm)"))
    else:
        reading.conventions.append(("global_pool", "token", "timm's rule for a class token without fc_norm"))


def square_side(count: int) -> int | None:
    side = math.isqrt(max(count, 0))
    return side if side > 0 and side * side == count else None


def grid_from_table(rows: int, extra: int) -> tuple[int, int]:
    """The grid g x g of a relative-position table with ``(2g - 1)^2 + extra`` rows."""
    side = square_side(rows - extra)
    if side is None or side % 2 == 0:
        raise DiagError(f"a relative position table of {rows} rows fits no square patch grid")
    return (side + 1) // 2, (side + 1) // 2


def grid_from_positions(
    positions: int, prefix: int, may_skip_prefix: bool, img_size: Any, patch_size: int
) -> tuple[tuple[int, int], bool, str]:
    """The patch grid (rows, columns) of a ``pos_embed`` with ``positions`` rows, whether its ``prefix``
    tokens carry no position (timm's ``no_embed_class``, possible where ``may_skip_prefix``), and, where the
    tensors leave the grid open, why the answer is a guess ("" when it is not).

    ``img_size`` (an int, (height, width), or None) decides a non-square grid; without it a square grid is
    read, with the prefix tokens' positions where they fit, else without them."""
    if img_size is not None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        rows, columns = height // patch_size, width // patch_size
        if rows * columns == positions - prefix:
            return (rows, columns), False, ""
        if may_skip_prefix and prefix and rows * columns == positions:
            return (rows, columns), True, ""
    side = square_side(positions - prefix)
    if side is not None:
        return (side, side), False, ""
    side = square_side(positions)
    if may_skip_prefix and prefix and side is not None:
        other = _near_square_factors(positions - prefix)
        doubt = f"{positions - prefix} = {other[0]} x {other[1]} patches would also fit" if other else ""
        return (side, side), True, doubt
    raise DiagError(
        f"pos_embed holds {positions} positions: not a square patch grid (+{prefix} prefix tokens); "
        "a non-square grid needs its image size: img_size=HxW (--img-size HxW)"
    )


def _near_square_factors(count: int) -> tuple[int, int] | None:
    """The factors h <= w of ``count`` closest to a square, if within an aspect ratio of 2."""
    for rows in range(math.isqrt(count), 0, -1):
        if count % rows == 0:
            return (rows, count // rows) if count // rows <= 2 * rows else None
    return None


def image_size(grid: tuple[int, int], patch_size: int) -> int | tuple[int, int]:
    """timm's ``img_size`` for a patch grid: one number for a square, else (height, width)."""
    height, width = grid[0] * patch_size, grid[1] * patch_size
    return height if height == width else (height, width)
