"""Attention-map similarity across blocks and heads (DeepViT paper Eqn 2, Fig. 3).

Every function takes stacked maps of shape (L, B, H, T, T), ``maps[l, b, h, i, j]`` =
weight query token i of block l puts on key token j (docs/metrics.md), and
compares *attention vectors*: with ``axis="columns"`` (default, paper Eqn 2) the vector
of token t is the column ``A[b, h, :, t]``, with ``axis="rows"`` it is the row
``A[b, h, t, :]``. Cosines use ``cos(u, v) = u.v / (max(|u|, eps) * max(|v|, eps))``
with ``eps = COSINE_EPS``, so a zero vector has cosine 0 with everything (itself included).

``cross_layer_similarity``, ``neighbour_similarity``, ``similarity_ratio`` and
``cross_head_similarity`` follow the formulas literally (the readable reference path);
``collapse_statistics`` gives the same numbers from one normalisation and batched Gram
products (the fast path the analysis runs per batch; tested against the reference).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..choices import check_threshold
from ..errors import DiagError
from ._checks import as_float32_maps, check_axis, check_neighbourhood, checked_maps

COSINE_EPS = 1e-12


class SimilarBlocks(NamedTuple):
    """Blocks whose similarity ratio exceeds rho: how many, and their 0-based indices."""

    count: int
    indices: list[int]


def _attention_vectors(maps: torch.Tensor, axis: str) -> torch.Tensor:
    """(L, B, H, T, T) -> (L, B, H, T, T) whose ``[l, b, h, t, :]`` is the vector of token t."""
    return maps.transpose(-1, -2) if axis == "columns" else maps


def _cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dim, 0 for a zero vector (see the module docstring)."""
    norms = u.norm(dim=-1).clamp_min(COSINE_EPS) * v.norm(dim=-1).clamp_min(COSINE_EPS)
    return (u * v).sum(dim=-1) / norms


def share_above(neighbour_averages: torch.Tensor, tau: float) -> torch.Tensor:
    """(L, B, H, T) -> (L,): share of vectors whose neighbour average exceeds tau.

    A block without neighbours (NaN averages, a 1-block model) gets NaN rather than 0:
    its ratio is undefined, not "nothing is similar".
    """
    above = (neighbour_averages > tau).float().masked_fill(neighbour_averages.isnan(), float("nan"))
    return above.mean(dim=(1, 2, 3))


def neighbour_counts(num_blocks: int, k: int, device: torch.device | None = None) -> torch.Tensor:
    """(L,) float32: how many blocks lie within k of each block (0 for a 1-block model)."""
    counts = torch.zeros(num_blocks, device=device)
    for offset in range(1, min(k, num_blocks - 1) + 1):
        counts[:-offset] += 1
        counts[offset:] += 1
    return counts


def cross_layer_similarity(maps: torch.Tensor, axis: str = "columns") -> torch.Tensor:
    """Layer-by-layer similarity matrix S (L, L) of attention maps.

    ``S[p, q] = mean over b, h, t of cos(A_p vec(b, h, t), A_q vec(b, h, t))``
    (docs/metrics.md, cross-layer similarity; paper Eqn 2). A mean with equal weight per image.

    Args:
        maps: (L, B, H, T, T), any float dtype and device.
        axis: ``"columns"`` (paper) or ``"rows"``.
    Returns:
        float32 (L, L) on the device of ``maps``; symmetric, diagonal 1 unless a vector is zero.

    Example:
        >>> dd.cross_layer_similarity(capture.pre).shape  # (L, L)
    """
    check_axis(axis)
    vectors = _attention_vectors(as_float32_maps(maps), axis)
    num_blocks = vectors.shape[0]
    similarity = vectors.new_empty(num_blocks, num_blocks)
    for p in range(num_blocks):
        for q in range(num_blocks):
            similarity[p, q] = _cosine(vectors[p], vectors[q]).mean()
    return similarity


def neighbour_similarity(maps: torch.Tensor, k: int = 2, axis: str = "columns") -> torch.Tensor:
    """Per-vector similarity to the neighbouring blocks, (L, B, H, T).

    ``out[p, b, h, t] = mean over q with 1 <= |q - p| <= k and 0 <= q < L of
    cos(A_p vec(b, h, t), A_q vec(b, h, t))`` (docs/metrics.md, similarity ratio). Blocks near the ends
    average over the neighbours that exist; with a single block there are none and the
    result is NaN.

    Example:
        >>> dd.neighbour_similarity(capture.pre, k=2).shape  # (L, B, H, T)
    """
    check_axis(axis)
    check_neighbourhood(k)
    vectors = _attention_vectors(as_float32_maps(maps), axis)
    num_blocks = vectors.shape[0]
    averages = []
    for p in range(num_blocks):
        neighbours = [q for q in range(p - k, p + k + 1) if q != p and 0 <= q < num_blocks]
        if neighbours:
            averages.append(torch.stack([_cosine(vectors[p], vectors[q]) for q in neighbours]).mean(dim=0))
        else:
            averages.append(torch.full(vectors.shape[1:4], float("nan"), device=vectors.device))
    return torch.stack(averages)


def similarity_ratio(maps: torch.Tensor, k: int = 2, tau: float = 0.5, axis: str = "columns") -> torch.Tensor:
    """Similarity ratio per block (L,): share of block p's vectors (b, h, t) whose
    ``neighbour_similarity`` exceeds ``tau`` (docs/metrics.md; paper Fig. 3a).

    k and tau are this project's reading of the paper (it states neither). A mean with
    equal weight per image (every image has H * T vectors). NaN for a 1-block model.

    Example:
        >>> ratio = dd.similarity_ratio(capture.pre, k=2, tau=0.5)  # (L,)
        >>> dd.similarity_ratio(list_of_block_maps)  # a list of (B, H, T, T) maps or a numpy array works too
    """
    tau = check_threshold(tau, "tau")
    return share_above(neighbour_similarity(maps, k=k, axis=axis), tau)


def similar_blocks(ratio: torch.Tensor, rho: float = 0.9) -> SimilarBlocks:
    """Blocks whose similarity ratio exceeds ``rho`` (docs/metrics.md, similar blocks; paper Table/Fig. 3b).

    Args:
        ratio: (L,) similarity ratios (tensor, array or sequence); NaN never counts.
    Not a per-image mean: apply it to the dataset-level ratio, not per batch.

    Example:
        >>> dd.similar_blocks(ratio, rho=0.9)  # SimilarBlocks(count=..., indices=[...])
    """
    rho = check_threshold(rho, "rho")
    try:
        ratio = torch.as_tensor(ratio)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DiagError(
            f"ratio must be (L,) similarity ratios (a tensor, array or sequence of numbers): {err}"
        ) from None
    if ratio.ndim != 1 or ratio.is_meta or not (ratio.is_floating_point() or ratio.dtype == torch.int64):
        raise DiagError(f"ratio must be (L,) similarity ratios with values, got {ratio.dtype} {tuple(ratio.shape)}")
    indices = torch.nonzero(ratio > rho).flatten().tolist()
    return SimilarBlocks(count=len(indices), indices=indices)


def cross_head_similarity(maps: torch.Tensor, axis: str = "columns") -> torch.Tensor:
    """Head-by-head similarity inside each block, (L, H, H).

    ``C[l, g, h] = mean over b, t of cos(A_l[b, g] vec(t), A_l[b, h] vec(t))``
    (docs/metrics.md, cross-head similarity; paper Fig. 3c). A mean with equal weight per image.

    Example:
        >>> dd.cross_head_similarity(capture.pre).shape  # (L, H, H)
    """
    check_axis(axis)
    vectors = _attention_vectors(as_float32_maps(maps), axis)
    num_heads = vectors.shape[2]
    per_block = [
        torch.stack(
            [
                torch.stack([_cosine(block[:, g], block[:, h]).mean() for h in range(num_heads)])
                for g in range(num_heads)
            ]
        )
        for block in vectors
    ]
    return torch.stack(per_block)


def mean_off_diagonal(matrices: torch.Tensor) -> torch.Tensor:
    """Mean of the off-diagonal entries of square matrices: (..., H, H) -> (...).

    The scalar cross-head similarity (docs/metrics.md). NaN when H == 1 (no off-diagonal).

    Example:
        >>> dd.mean_off_diagonal(dd.cross_head_similarity(capture.pre)).shape  # (L,)
    """
    if not isinstance(matrices, torch.Tensor) or matrices.ndim < 2 or matrices.shape[-1] != matrices.shape[-2]:
        shape = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
        raise DiagError(f"matrices must be a tensor of square matrices (..., H, H), got {shape}")
    matrices = matrices.float()
    size = matrices.shape[-1]
    off_diagonal_sum = matrices.sum(dim=(-1, -2)) - matrices.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return off_diagonal_sum / (size * (size - 1))


def uniformity(maps: torch.Tensor) -> torch.Tensor:
    """How close each head's maps are to the uniform map, (L, H), in [0, 1].

    ``U[l, h] = mean over b, i of cos^2(A_l[b, h, i, :], 1) = mean of (sum_j A_ij)^2 / (T sum_j A_ij^2)``
    (docs/metrics.md, attention regimes), 0 for a zero row. For a softmax row this is the
    inverse Simpson index over T: the share of the T tokens the query effectively spreads
    its weight over (1 for uniform attention, 1/T for one-hot). For signed (post-Θ) maps it
    is the squared cosine with a constant row, 1 when Θ and the Norm leave constant rows.
    Rows are used whatever the similarity axis: near-uniform rows make every column
    constant, so both axes see trivially similar maps. A mean with equal weight per image.

    Args:
        maps: (L, B, H, T, T), any float dtype and device.
    Returns:
        float32 (L, H) on the device of ``maps``.
    """
    maps = checked_maps(maps)
    num_tokens = maps.shape[-1]
    per_block = []
    for block in maps:  # one block at a time: no maps-sized temporary
        block = block.float()
        sums, squares = block.sum(dim=-1), block.square().sum(dim=-1)
        cos_squared = sums.square() / (num_tokens * squares.clamp_min(COSINE_EPS**2))
        per_block.append(cos_squared.mean(dim=(0, 2)))
    return torch.stack(per_block)


def near_uniform_blocks(block_uniformity: torch.Tensor, cutoff: float) -> list[int]:
    """0-based blocks whose head-averaged ``uniformity`` (L, H) exceeds ``cutoff``."""
    block_uniformity = torch.as_tensor(block_uniformity)
    if block_uniformity.ndim != 2:
        raise DiagError(f"uniformity must have shape (L, H), got {tuple(block_uniformity.shape)}")
    return torch.nonzero(block_uniformity.float().mean(dim=1) > cutoff).flatten().tolist()


def ratio_grid(maps: torch.Tensor, ks: tuple[int, ...], taus: tuple[float, ...], axis: str = "columns") -> torch.Tensor:
    """Similarity ratios at every (k, tau) of a grid, (len(ks), len(taus), L): the reference.

    ``out[i, j] = similarity_ratio(maps, ks[i], taus[j], axis)``; ``collapse_statistics``
    computes the same grid from its one normalisation (docs/metrics.md, robustness grid).
    """
    return torch.stack([torch.stack([similarity_ratio(maps, k=k, tau=tau, axis=axis) for tau in taus]) for k in ks])


def collapse_statistics(
    maps: torch.Tensor,
    k: int = 2,
    tau: float = 0.5,
    axis: str = "columns",
    *,
    overwrite: bool = False,
    grid_ks: tuple[int, ...] = (),
    grid_taus: tuple[float, ...] = (),
) -> dict[str, torch.Tensor]:
    """The similarity metrics of one batch at once, fast path.

    Returns ``{"similarity": (L, L), "ratio": (L,), "cross_head": (L, H, H)}``, the same
    numbers as ``cross_layer_similarity``, ``similarity_ratio`` and
    ``cross_head_similarity`` (docs/metrics.md) up to float rounding. All three
    are means with equal weight per image.

    How: the maps are normalised once into float32 unit vectors, in place of a transposed
    copy (a vector runs along dim -2 for columns, -1 for rows). S sums unit-vector products
    over every element, so it is a sum of Gram products of the flattened (image, head)
    maps across blocks; C likewise, of the flattened (block, image) maps across heads; the
    neighbour cosines are computed only for the k block offsets. Large elementwise
    temporaries go into one reused float32 block of scratch (fresh ones cost page faults
    on the CPU and allocator traffic on a GPU); bfloat16 maps are cast block by block.
    Nothing of size (L, L, B, H, T) is built, and nothing waits for the device (the input
    check is deferrable, see ``_checks``).

    ``overwrite=True`` lets float32 maps be normalised in place, saving a maps-sized
    buffer; the maps hold unit vectors afterwards. Other dtypes are never overwritten.

    With ``grid_ks`` and ``grid_taus`` it adds ``"ratio_grid"`` (len(grid_ks), len(grid_taus), L),
    the ratio at every (k, tau) of the grid (``ratio_grid``'s numbers), from the same
    per-offset cosines: each k is a prefix of the offsets, each tau one more threshold.
    """
    check_axis(axis)
    check_neighbourhood(k)
    tau = check_threshold(tau, "tau")
    maps = checked_maps(maps)
    dim = -2 if axis == "columns" else -1
    num_blocks, batch, num_heads, num_vectors = maps.shape[:4]
    scratch = maps.new_empty(maps.shape[1:], dtype=torch.float32)
    in_place = overwrite and maps.dtype == torch.float32 and maps.is_contiguous()
    unit = maps if in_place else maps.new_empty(maps.shape, dtype=torch.float32)
    for block, out in zip(maps, unit):
        # Squared in float32 also for bfloat16 maps (squaring in bfloat16 would round).
        squares = (
            torch.mul(block, block, out=scratch) if block.dtype == torch.float32 else scratch.copy_(block).square_()
        )
        norms = squares.sum(dim=dim, keepdim=True).sqrt_().clamp_min_(COSINE_EPS)
        torch.div(block, norms, out=out)

    # One Gram product per (image, head), summed: each adds up T * T terms, which keeps
    # float32 rounding ~1e-7 where one product over whole blocks (B * H * T * T terms) is
    # off by ~1e-4. A strided view, no copy.
    per_image_head = unit.view(num_blocks, batch * num_heads, -1).transpose(0, 1)
    similarity = (per_image_head @ per_image_head.transpose(1, 2)).sum(dim=0) / (batch * num_heads * num_vectors)

    # cos(block p, block p + offset) serves both blocks as a neighbour.
    neighbour_sum = unit.new_zeros(unit.shape[:4])
    neighbour_count = unit.new_zeros(num_blocks)
    grid = {}
    largest_k = max((k, *grid_ks))
    for offset in range(0, largest_k + 1):
        if 0 < offset < num_blocks:
            for p in range(num_blocks - offset):
                cosines = torch.mul(unit[p], unit[p + offset], out=scratch).sum(dim=dim)
                neighbour_sum[p] += cosines
                neighbour_sum[p + offset] += cosines
            neighbour_count[:-offset] += 1
            neighbour_count[offset:] += 1
        # A block without neighbours divides 0 by 0: NaN, as in neighbour_similarity.
        if offset == k:
            ratio = share_above(neighbour_sum / neighbour_count.view(-1, 1, 1, 1), tau)
        if offset in grid_ks:
            averages = neighbour_sum / neighbour_count.view(-1, 1, 1, 1)
            grid[offset] = torch.stack([share_above(averages, threshold) for threshold in grid_taus])

    per_block_image = unit.view(num_blocks * batch, num_heads, -1)
    cross_head = (
        (per_block_image @ per_block_image.transpose(1, 2)).view(num_blocks, batch, num_heads, num_heads).sum(dim=1)
    )
    statistics = {"similarity": similarity, "ratio": ratio, "cross_head": cross_head / (batch * num_vectors)}
    if grid_ks and grid_taus:
        statistics["ratio_grid"] = torch.stack([grid[grid_k] for grid_k in grid_ks])
    return statistics
