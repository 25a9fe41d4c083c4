"""Per-head statistics of softmax attention maps: entropy and mean attention distance.

All read the softmax ("pre") maps (docs/metrics.md), stacked as (L, B, H, T, T)
with ``maps[l, b, h, i, j]`` = weight query i puts on key j; maps with negative entries
(Theta-mixed "post" maps) are rejected. All are means with equal weight per image.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiagError
from ._checks import as_float32_softmax_maps, check_prefix_tokens, checked_maps

# The smallest normal float32: its logarithm is finite, so 0 * log(0 clamped to it) = 0.
_TINY = torch.finfo(torch.float32).tiny


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Attention entropy per block and head, (L, H), in nats.

    ``E[l, h] = mean over b, i of -sum_j A[b, h, i, j] ln A[b, h, i, j]`` with
    ``0 ln 0 = 0`` (docs/metrics.md, attention entropy). Uniform rows give ``ln T``, one-hot rows 0.

    Args:
        maps: softmax maps (L, B, H, T, T), any float dtype and device.
    Returns:
        float32 (L, H) on the device of ``maps``.

    Example:
        >>> dd.attention_entropy(capture.pre).shape  # (L, H)
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
    over patch tokens only (ViT paper Fig. 7/11; docs/metrics.md, mean attention distance). The prefix tokens
    (CLS, registers) are dropped as rows and columns without renormalising, so rows that
    gave weight to the prefix contribute less.

    Args:
        maps: softmax maps (L, B, H, T, T).
        patch_size: patch side in pixels (or (height, width)).
        num_prefix_tokens: tokens before the patches (1 for a CLS token).
        grid_size: patch grid (rows, cols); default: square, inferred from T - prefix.
    Returns:
        float32 (L, H) on the device of ``maps``.

    Example:
        >>> dd.mean_attention_distance(capture.pre, patch_size=16).shape  # (L, H)
    """
    maps = as_float32_softmax_maps(maps, "mean_attention_distance")
    patch_shape = _patch_shape(patch_size)
    num_patches = check_prefix_tokens(num_prefix_tokens, maps.shape[-1], needed_patches=1)
    grid = _grid_shape(num_patches, grid_size)
    patches = maps[..., num_prefix_tokens:, num_prefix_tokens:]
    distances = _patch_distances(grid, patch_shape, device=maps.device)
    row_distance = (patches * distances).sum(dim=-1)  # (L, B, H, N)
    return row_distance.mean(dim=(1, 3))


def token_distances(
    grid_size: tuple[int, int],
    patch_size: int | tuple[int, int],
    num_prefix_tokens: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(T, T) float32: the pixel distance between the centres of tokens i and j, 0 where
    either is a prefix token; T = num_prefix_tokens + rows * cols. ``softmax_statistics``
    takes it, so that a streaming loop builds it once per model and device."""
    rows, cols = (int(n) for n in grid_size)
    check_prefix_tokens(num_prefix_tokens, num_prefix_tokens + rows * cols, needed_patches=1)
    num_tokens = num_prefix_tokens + rows * cols
    padded = torch.zeros(num_tokens, num_tokens, device=device)
    padded[num_prefix_tokens:, num_prefix_tokens:] = _patch_distances((rows, cols), _patch_shape(patch_size), device)
    return padded


def softmax_statistics(
    maps: torch.Tensor, distances: torch.Tensor, num_prefix_tokens: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention entropy and mean attention distance (L, H) of softmax maps at once, fast path.

    The numbers of ``attention_entropy`` and ``mean_attention_distance`` (the readable
    reference, tested against this) up to float rounding, block by block with one reused
    float32 scratch block (which also holds the cast of bfloat16 maps), never a maps-sized
    temporary. The distance is a matrix-vector product with ``distances`` (from
    ``token_distances``; its zeros drop the prefix rows and columns without renormalising,
    as the reference does); the entropy sums ``A ln A`` with the logarithm's argument
    clamped at the smallest normal float, which gives ``0 ln 0 = 0``. Both are means with
    equal weight per image.

    Args:
        maps: softmax maps (L, B, H, T, T), any float dtype and device.
        distances: (T, T) token distances on the device of ``maps``.
        num_prefix_tokens: tokens before the patches (the distance averages over patch queries).
    Returns:
        float32 (entropy, distance), each (L, H), on the device of ``maps``.
    """
    maps = checked_maps(maps, nonnegative_for="attention entropy and distance")
    num_blocks, batch, num_heads, num_tokens = maps.shape[:4]
    if distances.shape != (num_tokens, num_tokens):
        raise DiagError(
            f"maps have {num_tokens} tokens, but the token distances are for {distances.shape[0]} "
            "(the model's patch grid and prefix tokens)"
        )
    num_patches = check_prefix_tokens(num_prefix_tokens, num_tokens, needed_patches=1)
    flat_distances = distances.reshape(-1)
    scratch = maps.new_empty(maps.shape[1:], dtype=torch.float32)
    entropy = maps.new_empty((num_blocks, num_heads), dtype=torch.float32)
    distance = maps.new_empty((num_blocks, num_heads), dtype=torch.float32)
    for index, block in enumerate(maps):
        values = block if block.dtype == torch.float32 else scratch.copy_(block)
        distance[index] = (values.reshape(batch, num_heads, -1) @ flat_distances).sum(dim=0)
        logs = torch.clamp(values, min=_TINY, out=scratch).log_()
        entropy[index] = logs.mul_(block).sum(dim=(0, 2, 3))
    return entropy.neg_() / (batch * num_tokens), distance / (batch * num_patches)
