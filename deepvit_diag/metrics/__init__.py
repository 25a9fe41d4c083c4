"""Attention-collapse metrics as pure tensor functions (definitions: docs/metrics.md).

Conventions:

* attention maps are stacked per block as ``maps`` (L, B, H, T, T), ``maps[l, b, h, i, j]``
  = weight query token i puts on key token j; hidden states as ``hidden`` (L, B, T, D);
  block indices are 0-based;
* inputs may be any float dtype (float32, bfloat16, ...) on any device; everything is
  computed in float32 and returned as torch tensors on the input's device;
* bad input (wrong number of dims, NaN or Inf, ...) raises ``DiagError``.

Streaming: these per-batch metrics are means with equal weight per image, so for
batches of sizes B_1, B_2, ... (N images) ``sum_k metric(batch_k) * B_k / N`` is exactly
the metric of all N images at once (up to float rounding):
``cross_layer_similarity``, ``similarity_ratio``, ``cross_head_similarity`` (and its
``mean_off_diagonal``), ``collapse_statistics`` (each entry), ``attention_entropy``,
``mean_attention_distance``, ``softmax_statistics`` (each entry), ``token_similarity``,
``rank_collapse``, ``block_influence``, ``score_statistics`` (each entry), ``uniformity``,
``ratio_grid``; ``topk_correct`` returns counts, which add up over batches directly.
Not per-image means: ``neighbour_similarity`` keeps the batch axis (concatenate it),
``similar_blocks`` thresholds a ratio (apply it to the dataset ratio), ``linear_cka`` is
a whole-sample statistic (stream with ``MinibatchCKA`` instead), ``head_mixing_matrices`` and
``stacked_head_mixing`` read weights.
"""

from __future__ import annotations

from ..attention_scores import AttentionScores
from ..choices import AXES, check_between, check_choice, check_integer
from ._checks import DeferredChecks, deferred_value_checks
from .ablation import feature_cosine, prediction_divergence, spearman, top1_agreement
from .accuracy import TOP_K, Accuracy, reported_ks, topk_correct
from .attention import attention_entropy, mean_attention_distance, softmax_statistics, token_distances
from .cka import MIN_UNBIASED_EXAMPLES, MinibatchCKA, cka_from_hsic, linear_cka
from .scores import chunk_for_budget, score_statistics
from .similarity import (
    SimilarBlocks,
    collapse_statistics,
    cross_head_similarity,
    cross_layer_similarity,
    mean_off_diagonal,
    near_uniform_blocks,
    neighbour_similarity,
    ratio_grid,
    similar_blocks,
    similarity_ratio,
    uniformity,
)
from .theta import HeadMixing, head_mixing_from_arrays, head_mixing_matrices, stacked_head_mixing
from .tokens import block_influence, rank_collapse, token_similarity

__all__ = [
    "AXES",
    "Accuracy",
    "AttentionScores",
    "DeferredChecks",
    "MIN_UNBIASED_EXAMPLES",
    "MinibatchCKA",
    "SimilarBlocks",
    "TOP_K",
    "HeadMixing",
    "attention_entropy",
    "block_influence",
    "check_between",
    "check_choice",
    "check_integer",
    "collapse_statistics",
    "cross_head_similarity",
    "chunk_for_budget",
    "cka_from_hsic",
    "cross_layer_similarity",
    "deferred_value_checks",
    "feature_cosine",
    "linear_cka",
    "mean_attention_distance",
    "near_uniform_blocks",
    "ratio_grid",
    "uniformity",
    "mean_off_diagonal",
    "neighbour_similarity",
    "prediction_divergence",
    "rank_collapse",
    "reported_ks",
    "similar_blocks",
    "score_statistics",
    "similarity_ratio",
    "softmax_statistics",
    "spearman",
    "stacked_head_mixing",
    "head_mixing_from_arrays",
    "head_mixing_matrices",
    "token_distances",
    "token_similarity",
    "top1_agreement",
    "topk_correct",
]
