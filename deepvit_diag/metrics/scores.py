"""Attention metrics from each block's queries and keys, in chunks of attention vectors.

A block's maps are never stored whole: ``AttentionScores`` keeps what they are computed
from (queries and keys, O(B * H * T * d), plus any bias and head mixing), and
``score_statistics`` recomputes them a chunk of ``c`` attention vectors at a time for
every block at once, so the maps take O(L * B * H * T * c) memory instead of
O(L * B * H * T^2). The numbers are those of ``collapse_statistics`` and
``softmax_statistics`` on the full maps (docs/metrics.md; tested against the readable
reference functions at several chunk sizes).

Why chunks of vectors: every metric of the similarity family compares whole attention
vectors (a column ``A[:, t]`` or a row ``A[t, :]``), and every vector's cosine needs its
norm over all of it. A chunk of rows holds whole rows; a chunk of columns needs every
row's softmax normaliser first, so for ``axis="columns"`` (when the chunk is not all of T)
a first pass computes each row's log-sum-exp (O(L * B * H * T)) and a tile is then
``exp(logits - lse)``. Head mixing after the softmax (Re-attention's Theta, Norm and
scale; CaiT's ``proj_w``) and before it (CaiT's ``proj_l``) acts on each (query, key)
element across heads, so it applies to a tile as to the whole map; in evaluation mode
Re-attention's BatchNorm uses its running statistics, which is elementwise too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..attention_scores import ALL, AttentionScores
from ..errors import DiagError
from ._checks import check_axis, check_neighbourhood, check_prefix_tokens, require
from .similarity import COSINE_EPS, neighbour_counts, share_above


def chunk_for_budget(
    num_blocks: int, batch: int, num_heads: int, num_tokens: int, kinds: int, budget_bytes: float
) -> int:
    """Attention vectors per chunk so that ``score_statistics``'s tiles fit ``budget_bytes``.

    A chunk of c vectors holds, per kind of map, a (L, B, H, T, c) float32 stack plus one
    block's temporaries; at least 1, at most T.
    """
    per_vector = 4 * batch * num_heads * num_tokens * (kinds * num_blocks + 3)
    return int(max(1, min(num_tokens, budget_bytes // per_vector)))


def _log_normalisers(blocks: Sequence[AttentionScores], rows_per_chunk: int) -> list[torch.Tensor]:
    """Each block's (B, H, T, 1) row log-sum-exp, a chunk of rows at a time."""
    normalisers = []
    for block in blocks:
        batch, num_heads, num_tokens = block.q.shape[:3]
        lse = block.q.new_empty(batch, num_heads, num_tokens, 1)
        for start in range(0, num_tokens, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            logits = block.logits(rows)
            # log_softmax is one fused pass where logsumexp takes several: lse = s - log_softmax(s),
            # read at the row's largest logit, where neither term has lost digits.
            lse[:, :, rows] = logits.amax(dim=-1, keepdim=True) - logits.log_softmax(dim=-1).amax(dim=-1, keepdim=True)
        normalisers.append(lse)
    return normalisers


@torch.no_grad()
def score_statistics(
    blocks: Sequence[AttentionScores],
    distances: torch.Tensor,
    num_prefix_tokens: int = 1,
    k: int = 2,
    tau: float = 0.5,
    axis: str = "columns",
    chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """Every per-batch attention metric of one forward from its blocks' scores, chunk by chunk.

    Returns ``similarity_{kind}`` (L, L), ``ratio_{kind}`` (L,), ``cross_head_{kind}``
    (L, H, H) for kind ``pre`` and ``post`` (the same tensors when no block mixes heads),
    and ``entropy`` and ``attention_distance`` (L, H) of the softmax maps: the numbers of
    ``collapse_statistics`` and ``softmax_statistics`` on the stacked maps (docs/metrics.md),
    each a mean with equal weight per image.

    Args:
        blocks: the L blocks' scores, all of one shape (B, H, T, d).
        distances: (T, T) token distances (``token_distances``) on their device.
        num_prefix_tokens: tokens before the patches.
        k, tau, axis: as in ``similarity_ratio``.
        chunk: attention vectors per chunk (default: all T, one pass).
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
    columns = axis == "columns"
    vector_dim = -2 if columns else -1
    kinds = ("pre", "post") if any(block.mix_maps is not None for block in blocks) else ("pre",)
    normalisers = _log_normalisers(blocks, chunk) if columns and chunk < num_tokens else None

    num_blocks = len(blocks)
    device = blocks[0].q.device
    similarity = {kind: torch.zeros(num_blocks, num_blocks, device=device) for kind in kinds}
    cross_head = {kind: torch.zeros(num_blocks, num_heads, num_heads, device=device) for kind in kinds}
    neighbour_sum = {kind: torch.zeros(num_blocks, batch, num_heads, num_tokens, device=device) for kind in kinds}
    entropy = torch.zeros(num_blocks, num_heads, device=device)
    distance = torch.zeros(num_blocks, num_heads, device=device)
    # One allocation per kind for every chunk's tiles (fresh ones cost page faults on the CPU).
    tile_size = batch * num_heads * num_tokens * chunk
    storage = {kind: torch.empty(num_blocks * tile_size, device=device) for kind in kinds}
    scratch = torch.empty(tile_size, device=device)
    for start in range(0, num_tokens, chunk):
        vectors = slice(start, min(start + chunk, num_tokens))
        width = vectors.stop - start
        rows, cols = (ALL, vectors) if columns else (vectors, ALL)
        shape = (num_blocks, batch, num_heads, *((num_tokens, width) if columns else (width, num_tokens)))
        tiles = {
            kind: flat[: num_blocks * batch * num_heads * num_tokens * width].view(shape)
            for kind, flat in storage.items()
        }
        tile_distances = distances[rows, cols].reshape(-1)
        for index, block in enumerate(blocks):
            logits = block.logits(rows, cols)
            if normalisers is None:
                log_pre = logits.log_softmax(dim=-1)
            else:
                log_pre = logits.sub_(normalisers[index][:, :, rows])
            pre = torch.exp(log_pre, out=tiles["pre"][index])
            distance[index] += (pre.view(batch, num_heads, -1) @ tile_distances).sum(dim=0)
            entropy[index] += torch.mul(pre, log_pre, out=log_pre).sum(dim=(0, 2, 3))
            if "post" in tiles:
                tiles["post"][index] = block.post(pre)
            # Each block is normalised and compared with its head and neighbours while its tile is fresh.
            for kind, stack in tiles.items():
                _add_block(stack, index, vector_dim, k, scratch, cross_head[kind], neighbour_sum[kind], vectors)
        for kind, stack in tiles.items():
            # One Gram product per (image, head), summed: each adds up r * c terms, which keeps
            # float32 rounding ~1e-7 where one product over whole blocks would be off by ~1e-4.
            per_image_head = stack.view(num_blocks, batch * num_heads, -1).transpose(0, 1)
            similarity[kind] += (per_image_head @ per_image_head.transpose(1, 2)).sum(dim=0)
    counts = neighbour_counts(num_blocks, k, device).view(-1, 1, 1, 1)
    results = {}
    for kind in kinds:
        results[f"similarity_{kind}"] = similarity[kind] / (batch * num_heads * num_tokens)
        results[f"ratio_{kind}"] = share_above(neighbour_sum[kind] / counts, tau)
        results[f"cross_head_{kind}"] = cross_head[kind] / (batch * num_tokens)
    if "post" not in kinds:
        results.update({name.replace("_pre", "_post"): value for name, value in list(results.items())})
    results["entropy"] = entropy.neg_() / (batch * num_tokens)
    results["attention_distance"] = distance / (batch * num_patches)
    # Softmax maps of finite logits are finite, and NaN or Inf in any map reaches these sums
    # (the ratios are NaN by definition in a model whose blocks have no neighbours).
    finite = torch.stack([value.isfinite().all() for name, value in results.items() if not name.startswith("ratio")])
    require(finite.all(), "maps contains NaN or Inf values")
    return results


def _add_block(
    stack: torch.Tensor,
    index: int,
    vector_dim: int,
    k: int,
    scratch: torch.Tensor,
    cross_head: torch.Tensor,
    neighbour_sum: torch.Tensor,
    vectors: slice,
) -> None:
    """Normalise block ``index``'s tile of ``stack`` (L, B, H, r, c) to unit vectors in place, add
    its Gram products across heads (per image) to ``cross_head``, and its cosines with the
    blocks up to k before it (already unit vectors) to both blocks' ``neighbour_sum``
    (``scratch``: room for one tile)."""
    batch, num_heads = stack.shape[1:3]
    tile = stack[index]
    products = scratch[: tile.numel()].view(tile.shape)
    # A reduction along the strided axis runs faster on a product than inside a norm.
    norms = torch.mul(tile, tile, out=products).sum(dim=vector_dim, keepdim=True)
    tile.div_(norms.sqrt_().clamp_min_(COSINE_EPS))
    per_image = tile.view(batch, num_heads, -1)
    cross_head[index] += (per_image @ per_image.transpose(1, 2)).sum(dim=0)
    for earlier in range(max(0, index - k), index):
        cosines = torch.mul(stack[earlier], tile, out=products).sum(dim=vector_dim)
        neighbour_sum[earlier, ..., vectors] += cosines
        neighbour_sum[index, ..., vectors] += cosines


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
