"""Input validation shared by the metrics: every bad input becomes a one-line DiagError."""
from __future__ import annotations

import torch

from ..errors import DiagError

AXES = ("columns", "rows")


def as_float32(tensor: object, name: str, ndim: int, layout: str) -> torch.Tensor:
    """``tensor`` checked (torch tensor, ``ndim`` dims, none empty, finite) and cast to float32.

    ``layout`` names the dims for the message, e.g. ``"(L, B, H, T, T)"``. The cast keeps
    the device; float32 input is returned as is (no copy).
    """
    if not isinstance(tensor, torch.Tensor):
        raise DiagError(f"{name} must be a torch.Tensor {layout}, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        raise DiagError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise DiagError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise DiagError(f"{name} has an empty dimension: {tuple(tensor.shape)}")
    tensor = tensor.detach().float()
    if not bool(torch.isfinite(tensor).all()):
        raise DiagError(f"{name} contains NaN or Inf values")
    return tensor


def as_float32_maps(maps: object) -> torch.Tensor:
    """Stacked attention maps (L, B, H, T, T) checked and cast to float32."""
    maps = as_float32(maps, "maps", 5, "(L, B, H, T, T)")
    if maps.shape[-1] != maps.shape[-2]:
        raise DiagError(f"maps must be square in the last two dims (L, B, H, T, T), got {tuple(maps.shape)}")
    return maps


def as_float32_softmax_maps(maps: object, metric: str) -> torch.Tensor:
    """Like ``as_float32_maps`` but also rejects negative weights (Theta-mixed "post" maps)."""
    maps = as_float32_maps(maps)
    if bool((maps < 0).any()):
        raise DiagError(f"{metric} needs softmax (pre) attention maps, but maps has negative values")
    return maps


def as_float32_hidden(hidden: object) -> torch.Tensor:
    """Stacked block outputs (L, B, T, D) checked and cast to float32."""
    return as_float32(hidden, "hidden", 4, "(L, B, T, D)")


def check_axis(axis: str) -> None:
    if axis not in AXES:
        raise DiagError(f"axis must be 'columns' or 'rows', got {axis!r}")


def check_neighbourhood(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DiagError(f"k (neighbour blocks on each side) must be an integer >= 1, got {k!r}")


def check_prefix_tokens(num_prefix_tokens: int, num_tokens: int, needed_patches: int) -> int:
    """Number of patch tokens left after the prefix; at least ``needed_patches``."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise DiagError(f"num_prefix_tokens must be an integer >= 0, got {num_prefix_tokens!r}")
    num_patches = num_tokens - num_prefix_tokens
    if num_patches < needed_patches:
        raise DiagError(
            f"{num_tokens} tokens with {num_prefix_tokens} prefix tokens leave {num_patches} patch tokens; "
            f"need at least {needed_patches}"
        )
    return num_patches
