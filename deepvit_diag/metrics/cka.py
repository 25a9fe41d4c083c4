"""Linear CKA between representations (Kornblith et al. 2019; docs/metrics.md, linear CKA).

``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear-kernel Grams
``K = X X^T`` of feature matrices X (n examples, p features). Two HSIC estimators:

* unbiased (Song et al. 2012, used by Nguyen, Raghu & Kornblith 2021), with
  ``K~``, ``L~`` the Grams with zeroed diagonals::

      HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))

  (needs n >= 4);
* biased: ``HSIC_0 = tr(K_c L_c) / (n-1)^2`` with centred Grams ``K_c = C K C``,
  ``C = I - 11^T/n``; with it CKA equals Kornblith's feature-space linear CKA.

``MinibatchCKA`` accumulates the unbiased HSIC over fixed-size minibatches of images,
the layer-by-layer CKA of Nguyen et al. 2021. CKA is not a per-image mean: for a dataset
use ``MinibatchCKA``, not a weighted mean of ``linear_cka`` over batches.
"""

from __future__ import annotations

import torch

from ..choices import MIN_UNBIASED_EXAMPLES
from ..errors import DiagError
from ._checks import as_float32


def _centre_features(features: torch.Tensor) -> torch.Tensor:
    """Subtract the mean example, (..., n, p). Leaves both HSIC estimators unchanged
    (the Gram only gains terms ``a 1^T + 1 a^T``, which both cancel exactly), but keeps
    float32 from losing the signal under large shared offsets that block outputs have."""
    return features - features.mean(dim=-2, keepdim=True)


def _hsic_pairs(grams_x: torch.Tensor, grams_y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC of every pair of Grams: (Lx, n, n) x (Ly, n, n) -> (Lx, Ly), as batched products."""
    n = grams_x.shape[-1]
    if not unbiased:
        centred_x = _centre(grams_x).flatten(1)
        centred_y = _centre(grams_y).flatten(1)
        return centred_x @ centred_y.T / (n - 1) ** 2
    hollow_x = grams_x - torch.diag_embed(grams_x.diagonal(dim1=-2, dim2=-1))
    hollow_y = grams_y - torch.diag_embed(grams_y.diagonal(dim1=-2, dim2=-1))
    trace_term = hollow_x.flatten(1) @ hollow_y.flatten(1).T  # tr(K~ L~), Grams symmetric
    sum_term = torch.outer(hollow_x.sum(dim=(1, 2)), hollow_y.sum(dim=(1, 2))) / ((n - 1) * (n - 2))
    row_term = hollow_x.sum(dim=2) @ hollow_y.sum(dim=2).T  # 1^T K~ L~ 1
    return (trace_term + sum_term - 2.0 / (n - 2) * row_term) / (n * (n - 3))


def _centre(grams: torch.Tensor) -> torch.Tensor:
    """C K C for (..., n, n): subtract row and column means, add back the grand mean."""
    return (
        grams
        - grams.mean(dim=-1, keepdim=True)
        - grams.mean(dim=-2, keepdim=True)
        + grams.mean(dim=(-1, -2), keepdim=True)
    )


def _cka_from_hsic(hsic_xy: torch.Tensor, self_hsic_x: torch.Tensor, self_hsic_y: torch.Tensor) -> torch.Tensor:
    """CKA from HSIC (Lx, Ly) and self-HSIC (Lx,), (Ly,); NaN where a self-HSIC is not positive."""
    denominator = torch.outer(self_hsic_x, self_hsic_y)
    return torch.where(denominator > 0, hsic_xy / denominator.sqrt(), float("nan"))


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Linear CKA of two representations of the same n examples, a 0-dim tensor.

    Args:
        x: (n, p) features; y: (n, q) features (moved to x's device).
        unbiased: Song et al. 2012 HSIC (n >= 4) or the biased centred-Gram HSIC (n >= 2).
    Returns:
        float32 0-dim tensor on x's device: 1 for y = x, invariant to orthogonal transforms
        and isotropic scaling of either input, symmetric; NaN when a self-HSIC estimate is
        not positive (e.g. constant features).

    Example:
        >>> dd.linear_cka(features_a, features_b)  # (N, D1), (N, D2) -> 0-dim tensor
    """
    x = as_float32(x, "x", 2, "(n, p)")
    y = as_float32(y, "y", 2, "(n, q)").to(x.device)
    if x.shape[0] != y.shape[0]:
        raise DiagError(f"x and y must describe the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    needed = MIN_UNBIASED_EXAMPLES if unbiased else 2
    if x.shape[0] < needed:
        raise DiagError(f"linear_cka needs at least {needed} examples, got {x.shape[0]}")
    x, y = _centre_features(x), _centre_features(y)
    grams = torch.stack([x @ x.T, y @ y.T])
    hsic = _hsic_pairs(grams, grams, unbiased)
    self_hsic = hsic.diagonal()
    return _cka_from_hsic(hsic, self_hsic, self_hsic)[0, 1]


class MinibatchCKA:
    """Layer-by-layer linear CKA over a stream of images (Nguyen, Raghu & Kornblith 2021).

    The images are cut, in arrival order, into chunks of ``chunk_size``; for every chunk
    the unbiased HSIC of every layer pair is computed from per-layer Grams (m x m) and
    summed over chunks; ``CKA = sum HSIC_xy / sqrt(sum HSIC_xx * sum HSIC_yy)``. Because
    chunks do not depend on how the images were split into ``update`` calls, neither does
    the result. A final partial chunk of at least 4 images counts as one more minibatch
    (at ``result()`` time, without consuming it); fewer than 4 images are left out, since
    the unbiased HSIC needs n >= 4. Memory is bounded by one chunk of features.

    Usage::

        cka = MinibatchCKA(chunk_size=32)
        for batch in loader:
            cka.update(feats_a, feats_b)   # (L_A, B, p_a), (L_B, B, p_b)
        cka.result()  # {"a": (L_A, L_A), "b": (L_B, L_B), "ab": (L_A, L_B)}
    """

    def __init__(self, chunk_size: int = 32):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < MIN_UNBIASED_EXAMPLES:
            raise DiagError(f"chunk_size must be an integer >= {MIN_UNBIASED_EXAMPLES}, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._pending: list[torch.Tensor] = []  # [a] or [a, b], each (L, b < chunk_size, p)
        self._hsic_sums: dict[str, torch.Tensor] = {}
        self._layouts: list[tuple[int, int]] | None = None  # (L, p) per model, fixed by the first update

    def update(self, feats_a: torch.Tensor, feats_b: torch.Tensor | None = None) -> None:
        """Add a batch: ``feats_a`` (L_A, B, p_a) and optionally ``feats_b`` (L_B, B, p_b),
        the block outputs of B images flattened per image (any float dtype)."""
        feats = [as_float32(feats_a, "feats_a", 3, "(L, B, p)")]
        if feats_b is not None:
            feats.append(as_float32(feats_b, "feats_b", 3, "(L, B, p)").to(feats[0].device))
            if feats[1].shape[1] != feats[0].shape[1]:
                raise DiagError(f"feats_a and feats_b have {feats[0].shape[1]} and {feats[1].shape[1]} images")
        layouts = [(f.shape[0], f.shape[2]) for f in feats]
        if self._layouts is None:
            self._layouts = layouts
        elif layouts != self._layouts:
            raise DiagError(f"update got (L, p) {layouts} but earlier updates had {self._layouts}")
        if self._pending:
            feats = [torch.cat([pending.to(f.device), f], dim=1) for pending, f in zip(self._pending, feats)]
        while feats[0].shape[1] >= self.chunk_size:
            self._accumulate(self._chunk_hsic([f[:, : self.chunk_size] for f in feats]))
            feats = [f[:, self.chunk_size :] for f in feats]
        # A copy, so the caller's whole batch is not kept alive by a view of its tail.
        self._pending = [f.clone() for f in feats]

    def hsic_totals(self) -> dict[str, torch.Tensor]:
        """The summed HSIC of every layer pair (float64): ``"a"`` (L_A, L_A), plus ``"b"`` and
        ``"ab"`` with a second model; the final partial chunk counts when it has at least 4
        images, as in ``result``; empty before any chunk of 4. These are the sufficient
        statistics of the CKA: totals of disjoint sets of chunks add up (``cka_from_hsic``).
        Does not change the accumulator."""
        sums = dict(self._hsic_sums)
        pending_images = self._pending[0].shape[1] if self._pending else 0
        if pending_images >= MIN_UNBIASED_EXAMPLES:
            partial = self._chunk_hsic(self._pending)
            sums = {key: sums[key] + value for key, value in partial.items()} if sums else partial
        return sums

    def result(self) -> dict[str, torch.Tensor]:
        """CKA matrices: ``"a"`` (L_A, L_A), plus ``"b"`` (L_B, L_B) and ``"ab"`` (L_A, L_B)
        when ``feats_b`` were given. Does not change the accumulator."""
        sums = self.hsic_totals()
        if not sums:
            pending_images = self._pending[0].shape[1] if self._pending else 0
            raise DiagError(
                f"MinibatchCKA needs at least {MIN_UNBIASED_EXAMPLES} images for the unbiased HSIC, "
                f"got {pending_images}"
            )
        return cka_from_hsic(sums)

    def _chunk_hsic(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unbiased HSIC of every layer pair in one chunk of m >= 4 images.

        In float64: with few images per chunk the unbiased estimator cancels heavily, and
        float32 turned last-bit differences in the features (e.g. from another batch size
        or thread count) into CKA differences of 1e-5..1e-3. The Grams are m x m, so the
        cost is small next to the forward pass."""
        centred = [_centre_features(f.double()) for f in feats]
        grams = [f @ f.transpose(1, 2) for f in centred]  # (L, m, m) per model
        hsic = {"a": _hsic_pairs(grams[0], grams[0], unbiased=True)}
        if len(grams) == 2:
            hsic["b"] = _hsic_pairs(grams[1], grams[1], unbiased=True)
            hsic["ab"] = _hsic_pairs(grams[0], grams[1], unbiased=True)
        return hsic

    def _accumulate(self, hsic: dict[str, torch.Tensor]) -> None:
        for key, value in hsic.items():
            self._hsic_sums[key] = self._hsic_sums[key] + value if key in self._hsic_sums else value


def cka_from_hsic(totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CKA matrices (float32) from ``MinibatchCKA.hsic_totals``, or from several of them added
    key by key (disjoint chunk sets: shards or processes of one analysis)."""
    self_a = totals["a"].diagonal()
    result = {"a": _cka_from_hsic(totals["a"], self_a, self_a)}
    if "b" in totals:
        self_b = totals["b"].diagonal()
        result["b"] = _cka_from_hsic(totals["b"], self_b, self_b)
        result["ab"] = _cka_from_hsic(totals["ab"], self_a, self_b)
    return {key: matrix.float() for key, matrix in result.items()}
