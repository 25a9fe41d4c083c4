"""Attention metrics from each block's queries and keys, in chunks of query rows.

A block's maps are never stored whole: ``AttentionScores`` keeps what they are computed
from (queries and keys, O(B * H * T * d), plus any bias and head mixing), and
``score_statistics`` recomputes them a chunk of ``r`` query rows at a time for every block
at once, so the maps take O(L * B * H * r * T) memory instead of O(L * B * H * T^2). The
numbers are those of ``collapse_statistics`` and ``softmax_statistics`` on the full maps
(docs/metrics.md; tested against the readable reference functions at several chunk sizes).

Why rows: a row's softmax needs only that row, so a chunk of rows is complete after one
query-key product, whichever axis the attention vectors lie on. Rows (``axis="rows"``) are
whole vectors and are compared chunk by chunk. Columns (the paper's vectors) get a part of
every column from each chunk, and every comparison of two columns is a sum over rows: the
dot products of block p's and block q's column t, ``sum_r A_p[r, t] A_q[r, t]`` (their
squared norms on the diagonal), add up over the chunks in an (L, L) Gram matrix per
(image, head, column), as do the (H, H) Gram matrices across heads per (block, image,
column); the cosines are taken once the last chunk is in. Those Gram matrices are
O(B * T * L * H * (L + H)) per kind of map, linear in T. Head mixing after the softmax
(Re-attention's Theta, Norm and scale; CaiT's ``proj_w``) and before it (CaiT's ``proj_l``)
acts on each (query, key) element across heads, so it applies to a chunk of rows as to the
whole map; in evaluation mode Re-attention's BatchNorm uses its running statistics, which
is elementwise too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..attention_scores import AttentionScores
from ..errors import DiagError
from ._checks import check_axis, check_neighbourhood, check_prefix_tokens, require
from .similarity import COSINE_EPS, neighbour_counts


def chunk_for_budget(
    num_blocks: int, batch: int, num_heads: int, num_tokens: int, kinds: int, budget_bytes: float
) -> int:
    """Query rows per chunk so that ``score_statistics``'s tiles fit ``budget_bytes``.

    A chunk of r rows holds, per kind of map, an (L, B, H, T, r) float32 stack, one block's
    temporaries and, for row vectors, the chunk's (B, H, r, L, L) Gram matrices; at least 1,
    at most T.
    """
    per_row = 4 * batch * num_heads * (num_tokens * (kinds * num_blocks + 3) + num_blocks * num_blocks)
    return int(max(1, min(num_tokens, budget_bytes // per_row)))


def accumulator_floats(num_blocks: int, num_heads: int, num_tokens: int, kinds: int) -> int:
    """float32 numbers ``score_statistics`` keeps per image besides its tiles: the (L, L) and
    (H, H) Gram matrices of every column per kind, and the neighbour cosine sums (at most L
    block offsets)."""
    return num_blocks * num_heads * num_tokens * (kinds * (num_blocks + num_heads) + num_blocks)


def _cosines_(gram: torch.Tensor) -> torch.Tensor:
    """(N, n, n) Gram matrices of n vectors -> their cosines, in place:
    ``G[i, j] / (max(|v_i|, eps) max(|v_j|, eps))``, as ``similarity``'s unit vectors give."""
    # Copied out of the diagonal first: elementwise work on a strided diagonal runs ~50x slower
    # (out of place: for 1 x 1 matrices the "copy" is the diagonal itself).
    inverse_norms = gram.diagonal(dim1=-2, dim2=-1).contiguous().sqrt().clamp_min_(COSINE_EPS).reciprocal_()
    return gram.mul_(inverse_norms.unsqueeze(-1) * inverse_norms.unsqueeze(-2))


@torch.no_grad()
def score_statistics(
    blocks: Sequence[AttentionScores],
    distances: torch.Tensor,
    num_prefix_tokens: int = 1,
    k: int = 2,
    tau: float = 0.5,
    axis: str = "columns",
    chunk: int | None = None,
    grid_ks: tuple[int, ...] = (),
    grid_taus: tuple[float, ...] = (),
) -> dict[str, torch.Tensor]:
    """Every per-batch attention metric of one forward from its blocks' scores, chunk by chunk.

    Returns ``similarity_{kind}`` (L, L), ``ratio_{kind}`` (L,), ``cross_head_{kind}``
    (L, H, H) for kind ``pre`` and ``post`` (the same tensors when no block mixes heads),
    and ``entropy`` and ``attention_distance`` (L, H) of the softmax maps: the numbers of
    ``collapse_statistics`` and ``softmax_statistics`` on the stacked maps (docs/metrics.md),
    each a mean with equal weight per image. Also ``uniformity_{kind}`` (L, H) (``uniformity``)
    and, with ``grid_ks`` and ``grid_taus``, ``ratio_grid_{kind}`` (len(grid_ks), len(grid_taus), L),
    the ratio at every (k, tau) of the robustness grid (``ratio_grid``'s numbers).

    Args:
        blocks: the L blocks' scores, all of one shape (B, H, T, d).
        distances: (T, T) token distances (``token_distances``) on their device.
        num_prefix_tokens: tokens before the patches.
        k, tau, axis: as in ``similarity_ratio``.
        chunk: query rows per chunk (default: all T, one pass).
    """
    check_axis(axis)
    check_neighbourhood(k)
    if not blocks:
        raise DiagError("score_statistics needs at least one block")
    blocks = [block.float() for block in blocks]
    batch, num_heads, num_tokens = blocks[0].q.shape[:3]
    if any(block.q.shape[:3] != (batch, num_heads, num_tokens) for block in blocks):
        raise DiagError("blocks must agree in batch, heads and tokens to be compared")
    num_patches = check_prefix_tokens(num_prefix_tokens, num_tokens, needed_patches=1)
    if distances.shape != (num_tokens, num_tokens):
        raise DiagError(f"maps have {num_tokens} tokens, but the token distances are for {distances.shape[0]}")
    chunk = num_tokens if chunk is None else max(1, min(int(chunk), num_tokens))
    kinds = ("pre", "post") if any(block.mix_maps is not None for block in blocks) else ("pre",)
    num_blocks = len(blocks)
    device = blocks[0].q.device
    sums = _Sums(kinds, num_blocks, batch, num_heads, num_tokens, max((k, *grid_ks)), axis == "columns", device)
    # One allocation per kind for every chunk's tiles (fresh ones cost page faults on the CPU).
    storage = {kind: torch.empty(num_blocks * batch * num_heads * num_tokens * chunk, device=device) for kind in kinds}
    for start in range(0, num_tokens, chunk):
        rows = slice(start, min(start + chunk, num_tokens))
        size = num_blocks * batch * num_heads * num_tokens * (rows.stop - start)
        # (L, H, B, V, E), each block's tile seen as (B, H, V, E).
        stacks = {
            kind: flat[:size].view(num_blocks, num_heads, batch, *sums.tile_shape(rows)).transpose(1, 2)
            for kind, flat in storage.items()
        }
        row_distances = distances[rows].reshape(-1)
        for index, block in enumerate(blocks):
            # Queries by keys, whatever the axis: the softmax and every per-row sum then run
            # along contiguous memory (along the keys of a keys-by-queries tile they ran 3x slower).
            log_pre = block.logits(rows).log_softmax(dim=-1)
            pre = log_pre.exp()
            sums.distance[index] += (pre.view(batch, num_heads, -1) @ row_distances).sum(dim=0)
            sums.entropy[index] += log_pre.mul_(pre).sum(dim=(0, 2, 3))
            maps = {"pre": pre, "post": block.post(pre)} if "post" in stacks else {"pre": pre}
            for kind, stack in stacks.items():
                sums.add_rows(kind, index, maps[kind], stack[index])
        for kind, stack in stacks.items():
            sums.add_layers(kind, stack.transpose(1, 2), rows)
    return sums.results(k, tau, grid_ks, grid_taus, num_patches)


class _Sums:
    """``score_statistics``'s running sums, and how a chunk of query rows adds to them.

    Each block's maps of a chunk are computed queries by keys, (B, H, r, T), where the softmax
    and the per-row sums (entropy, distance, uniformity) run along contiguous memory, and then
    copied into a tile (B, H, V, E): vector v of the metric's axis along V, its elements in
    this chunk along E (columns: keys by queries, a transposed copy; rows: queries by keys).
    The tiles of a chunk lie in one (L, H, B, V, E) stack, so that
    both kinds of Gram matrix are one batched product over strided views, without copies:
    across blocks, an (L, E) matrix per (head, image, vector); across heads, an (H, E) matrix
    per (image, vector). Column vectors are complete after the last chunk, so their Gram
    matrices add up until then; row vectors are complete in their chunk and go straight to
    cosines. Per-vector sums are laid out (..., H, B, T), as the stack.
    """

    def __init__(self, kinds, num_blocks, batch, num_heads, num_tokens, largest_k, columns, device):
        self.columns = columns
        self.shape = (num_blocks, num_heads, batch, num_tokens)
        zeros = dict(device=device)
        self.entropy = torch.zeros(num_blocks, num_heads, **zeros)
        self.distance = torch.zeros(num_blocks, num_heads, **zeros)
        self.similarity = {kind: torch.zeros(num_blocks, num_blocks, **zeros) for kind in kinds}
        self.cross_head = {kind: torch.zeros(num_blocks, num_heads, num_heads, **zeros) for kind in kinds}
        self.uniformity = {kind: torch.zeros(num_blocks, num_heads, **zeros) for kind in kinds}
        # Neighbour cosine sums per block offset (1 .. the largest k): each k of the grid adds a prefix of them.
        offsets = min(largest_k, num_blocks - 1)
        self.neighbour_sum = {kind: torch.zeros(offsets, *self.shape, **zeros) for kind in kinds}
        if columns:
            self.layer_gram = {
                kind: torch.zeros(num_heads * batch * num_tokens, num_blocks, num_blocks, **zeros) for kind in kinds
            }
            self.head_gram = {
                kind: torch.zeros(num_blocks, batch * num_tokens, num_heads, num_heads, **zeros) for kind in kinds
            }

    def tile_shape(self, rows: slice) -> tuple[int, int]:
        """(V, E) of a tile of query rows ``rows``."""
        width = rows.stop - rows.start
        num_tokens = self.shape[-1]
        return (num_tokens, width) if self.columns else (width, num_tokens)

    def add_rows(self, kind: str, index: int, maps: torch.Tensor, tile: torch.Tensor) -> None:
        """Add block ``index``'s maps of ``kind`` for a chunk of query rows, (B, H, r, T) queries by
        keys, to what needs only whole query rows (the uniformity), copy them into their tile
        (B, H, V, E) (a view of the stack) and add the tile's Gram products across heads."""
        batch, num_heads, vectors, elements = tile.shape
        squares = torch.linalg.vector_norm(maps, dim=-1).square_().clamp_min_(COSINE_EPS**2)
        cos_squared = maps.sum(dim=-1).square_().div_(squares.mul_(self.shape[-1]))
        self.uniformity[kind][index] += cos_squared.sum(dim=(0, 2))
        tile.copy_(maps.transpose(-1, -2) if self.columns else maps)
        # (B * V, H, E): the heads' parts of each vector, E floats apart in the stack.
        per_vector = tile.permute(0, 2, 1, 3).reshape(batch * vectors, num_heads, elements)
        if self.columns:
            gram = self.head_gram[kind][index]
            torch.baddbmm(gram, per_vector, per_vector.transpose(1, 2), out=gram)
        else:
            self.cross_head[kind][index] += _cosines_(per_vector @ per_vector.transpose(1, 2)).sum(dim=0)

    def add_layers(self, kind: str, stack: torch.Tensor, rows: slice) -> None:
        """Add the chunk's Gram products across blocks of a stack of tiles (L, H, B, V, E)."""
        num_blocks, elements = stack.shape[0], stack.shape[-1]
        # (H * B * V, L, E): a batch of matrices E floats apart, one block's row every tile apart.
        per_vector = stack.reshape(num_blocks, -1, elements).transpose(0, 1)
        if self.columns:
            gram = self.layer_gram[kind]
            torch.baddbmm(gram, per_vector, per_vector.transpose(1, 2), out=gram)
        else:
            self._add_layer_cosines(kind, per_vector @ per_vector.transpose(1, 2), rows)

    def _add_layer_cosines(self, kind: str, gram: torch.Tensor, vectors: slice) -> None:
        """Add complete (H * B * V, L, L) Gram matrices of the vectors ``vectors`` across blocks to the
        similarity and the neighbour sums."""
        num_blocks, num_heads, batch = self.shape[:3]
        cosines = _cosines_(gram)
        self.similarity[kind] += cosines.sum(dim=0)
        for offset in range(1, len(self.neighbour_sum[kind]) + 1):
            pairs = cosines.diagonal(offset, dim1=-2, dim2=-1).T.reshape(num_blocks - offset, num_heads, batch, -1)
            self.neighbour_sum[kind][offset - 1, :-offset, ..., vectors] += pairs
            self.neighbour_sum[kind][offset - 1, offset:, ..., vectors] += pairs

    def results(self, k, tau, grid_ks, grid_taus, num_patches) -> dict[str, torch.Tensor]:
        num_blocks, num_heads, batch, num_tokens = self.shape
        results = {}
        for kind in self.similarity:
            if self.columns:
                self._add_layer_cosines(kind, self.layer_gram[kind], slice(None))
                self.cross_head[kind] += _cosines_(self.head_gram[kind]).sum(dim=1)
            results[f"similarity_{kind}"] = self.similarity[kind] / (batch * num_heads * num_tokens)
            results[f"ratio_{kind}"] = _ratios(self.neighbour_sum[kind], k, (tau,))[0]
            results[f"cross_head_{kind}"] = self.cross_head[kind] / (batch * num_tokens)
            results[f"uniformity_{kind}"] = self.uniformity[kind] / (batch * num_tokens)
            if grid_ks and grid_taus:
                results[f"ratio_grid_{kind}"] = torch.stack(
                    [_ratios(self.neighbour_sum[kind], g, grid_taus) for g in grid_ks]
                )
        if "post" not in self.similarity:
            results.update({name.replace("_pre", "_post"): value for name, value in list(results.items())})
        results["entropy"] = self.entropy.neg() / (batch * num_tokens)
        results["attention_distance"] = self.distance / (batch * num_patches)
        # Softmax maps of finite logits are finite, and NaN or Inf in any map reaches these sums
        # (the ratios are NaN by definition in a model whose blocks have no neighbours).
        finite = torch.stack(
            [value.isfinite().all() for name, value in results.items() if not name.startswith("ratio")]
        )
        require(finite.all(), "maps contains NaN or Inf values")
        return results


def _ratios(neighbour_sum: torch.Tensor, k: int, taus: Sequence[float]) -> torch.Tensor:
    """(len(taus), L) similarity ratios at k from per-offset neighbour sums (K, L, ...): ``share_above``
    at every tau in one comparison (a block without neighbours, NaN averages, gets NaN)."""
    num_blocks = neighbour_sum.shape[1]
    counts = neighbour_counts(num_blocks, k, neighbour_sum.device).view(-1, 1)
    averages = neighbour_sum[:k].sum(dim=0).view(num_blocks, -1) / counts
    thresholds = torch.tensor(taus, device=averages.device).view(-1, 1, 1)
    shares = (averages > thresholds).float().mean(dim=-1)
    return shares.masked_fill_(averages.isnan().any(dim=-1), float("nan"))


@torch.no_grad()
def query_weights(block: AttentionScores, query: int | None, chunk: int | None = None) -> tuple[torch.Tensor, ...]:
    """float32 (pre, post) weights (B, H, T) of query ``query`` on every key of one block, or
    with ``query=None`` the mean over all queries (computed ``chunk`` rows at a time)."""
    block = block.float()
    if query is not None:
        pre = block.logits(slice(query, query + 1)).softmax(dim=-1)
        return pre[:, :, 0], block.post(pre)[:, :, 0]
    num_tokens = block.q.shape[2]
    chunk = chunk or num_tokens
    pre_sum = post_sum = 0.0
    for start in range(0, num_tokens, chunk):
        pre = block.logits(slice(start, start + chunk)).softmax(dim=-1)
        pre_sum = pre_sum + pre.sum(dim=-2)
        post_sum = post_sum + block.post(pre).sum(dim=-2)
    return pre_sum / num_tokens, post_sum / num_tokens
