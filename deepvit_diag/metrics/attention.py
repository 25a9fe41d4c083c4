"""Per-head statistics of softmax attention maps: entropy and mean attention distance.

Both read the softmax ("pre") maps of REFERENCE.md section 4, stacked as (L, B, H, T, T)
with ``maps[l, b, h, i, j]`` = weight query i puts on key j; maps with negative entries
(Theta-mixed "post" maps) are rejected. Both are means with equal weight per image.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiagError
from ._checks import as_float32_softmax_maps, check_prefix_tokens


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Attention entropy per block and head, (L, H), in nats.

    ``E[l, h] = mean over b, i of -sum_j A[b, h, i, j] ln A[b, h, i, j]`` with
    ``0 ln 0 = 0`` (REFERENCE.md 4.6). Uniform rows give ``ln T``, one-hot rows 0.

    Args:
        maps: softmax maps (L, B, H, T, T), any float dtype and device.
    Returns:
        float32 (L, H) on the device of ``maps``.
    """
    maps = as_float32_softmax_maps(maps, "attention_entropy")
    row_entropy = -torch.special.xlogy(maps, maps).sum(dim=-1)  # (L, B, H, T)
    return row_entropy.mean(dim=(1, 3))


def _grid_shape(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise DiagError(f"{num_patches} patch tokens do not form a square grid; pass grid_size=(rows, cols)")
        return side, side
    rows, cols = (int(n) for n in grid_size)
    if rows * cols != num_patches:
        raise DiagError(f"grid_size {rows}x{cols} does not match the {num_patches} patch tokens")
    return rows, cols


def _patch_shape(patch_size: int | tuple[int, int]) -> tuple[float, float]:
    """(height, width) of a patch in pixels from an int or a pair (timm stores a pair)."""
    sides = (patch_size, patch_size) if isinstance(patch_size, (int, float)) else tuple(patch_size)
    if len(sides) != 2 or not all(side > 0 for side in sides):
        raise DiagError(f"patch_size must be a positive number or a (height, width) pair, got {patch_size!r}")
    return float(sides[0]), float(sides[1])


def _patch_distances(
    grid_size: tuple[int, int], patch_shape: tuple[float, float], device: torch.device
) -> torch.Tensor:
    """Pixel distances between patch centres, (N, N) with N = rows * cols.

    Patches are numbered row-major (token n sits at row ``n // cols``, column ``n % cols``),
    the order of timm's ``PatchEmbed`` (``flatten(2)``).
    """
    rows, cols = grid_size
    patch_h, patch_w = patch_shape
    row_index, col_index = torch.meshgrid(
        torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
    )
    centres = torch.stack([row_index.flatten() * patch_h, col_index.flatten() * patch_w], dim=-1)
    # Explicit differences rather than torch.cdist, whose matmul shortcut rounds (~1e-5 px).
    return (centres[:, None, :] - centres[None, :, :]).norm(dim=-1)


def mean_attention_distance(
    maps: torch.Tensor,
    patch_size: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    grid_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Mean attention distance per block and head, (L, H), in pixels.

    ``MAD[l, h] = mean over b, i of sum_j A[b, h, i, j] * ||g_i - g_j|| * patch``
    over patch tokens only (ViT paper Fig. 7/11; REFERENCE.md 4.7). The prefix tokens
    (CLS, registers) are dropped as rows and columns without renormalising, so rows that
    gave weight to the prefix contribute less.

    Args:
        maps: softmax maps (L, B, H, T, T).
        patch_size: patch side in pixels (or (height, width)).
        num_prefix_tokens: tokens before the patches (1 for a CLS token).
        grid_size: patch grid (rows, cols); default: square, inferred from T - prefix.
    Returns:
        float32 (L, H) on the device of ``maps``.
    """
    maps = as_float32_softmax_maps(maps, "mean_attention_distance")
    patch_shape = _patch_shape(patch_size)
    num_patches = check_prefix_tokens(num_prefix_tokens, maps.shape[-1], needed_patches=1)
    grid = _grid_shape(num_patches, grid_size)
    patches = maps[..., num_prefix_tokens:, num_prefix_tokens:]
    distances = _patch_distances(grid, patch_shape, device=maps.device)
    row_distance = (patches * distances).sum(dim=-1)  # (L, B, H, N)
    return row_distance.mean(dim=(1, 3))
