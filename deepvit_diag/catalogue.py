"""The catalogue: every metric deepvit-diag computes, the arrays it leaves in a result, the
figures that draw them and their captions, in one declarative table (``METRICS``).

The analysis runs each entry's ``measure`` on every batch, results check that a saved
analysis holds each entry's arrays, and ``report.html`` and the app's views draw each
entry's figures with the same captions (``figures.drawing.draw``). Adding a metric is a function in
``deepvit_diag.metrics`` and one entry here (``docs/adding-a-metric.md``).

A ``Metric`` gets its arrays in one of three ways:

* ``measure(batch)``: per-image means of one batch (a dict of tensors); the analysis sums
  them weighted by the batch size, which makes the dataset mean exact at any batch size;
* ``reads_model(model, geometry)``: arrays read once from the weights (Theta);
* neither: the analysis itself streams them (CKA across models, the example images).

Figure captions are ``str.format`` templates with the fields ``rho``, ``k``, ``tau`` (the
settings), ``label`` (figures of one model), ``example`` (1-based example image number),
``label_a`` and ``label_b`` (figures of a comparison); or, where the wording depends on what
the models have (head mixing, a signed colour scale, a difference panel), functions of the
drawn results, the fields and the figure's options that return the caption (``Caption``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .capture import AttentionCapture
from .example_images import DESCRIBED_ARRAYS, describe_examples
from .figures import ablation as ablation_figures
from .figures import head_mixing as head_mixing_figures
from .figures import overlays as overlay_figures
from .figures import similarity as similarity_figures
from .figures import sweep as sweep_figures
from .figures.registry import FIGURE_FUNCTIONS
from .figures.style import DIVERGING, other_map_kind, similarity_scale
from .introspection import Geometry
from .metrics import block_influence, rank_collapse, score_statistics, token_similarity
from .metrics.theta import HEAD_MIXING_ARRAYS, stacked_head_mixing
from .settings import MAP_KINDS, Settings

if TYPE_CHECKING:
    from .results import AnalysisResult

# A caption that depends on the drawn results (label -> result), the caption fields and the
# figure function's options, e.g. no Θ wording for models without head mixing.
Caption = Callable[[Mapping[str, "AnalysisResult"], Mapping[str, Any], Mapping[str, Any]], str]

# A block is near-uniform above this head-averaged uniformity (docs/metrics.md, attention
# regimes): its queries spread their weight over more than 80% of the tokens. Calibrated
# between random-init timm ViTs (every block 0.98-0.997) and the trained bundled vit32
# (every block 0.25-0.62).
NEAR_UNIFORM_CUTOFF = 0.8
# The metric whose arrays classify the blocks and hold the verdict over the robustness grid.
REGIMES_AND_GRID = "attention regimes and robustness grid"

# Report sections and app views group figures by these headings, in page order.
SECTIONS = (
    "Cross-layer similarity",
    "Similarity ratio",
    "Heads",
    "Re-attention matrices Θ",
    "Attention statistics per block",
    "Representation similarity (CKA)",
    "Attention of the CLS token",
)
# sweep.html and the app's Sweep view.
SWEEP_SECTION = "Sweep"
# An ablation's report.html and the app's Ablation view.
ABLATION_SECTION = "Ablation"
# How many figures an entry draws: one for all models ("models"), one per model ("model"),
# one per model and example image ("example"), one for a comparison of two ("comparison"),
# one for a sweep ("sweep") or one for an ablation ("ablation").
SCOPES = ("models", "model", "example", "comparison", "sweep", "ablation")


@dataclass
class Batch:
    """One forward pass as a metric's ``measure`` sees it.

    Attributes:
        capture: the recorded scores of every block (``capture.scores``, from which the maps
            are recomputed) and block outputs (L, B, T, D).
        geometry: the model's token layout.
        settings: the analysis settings (k, tau, axis, ...).
        token_distances: (T, T) pixel distances between token centres, on the maps' device.
        chunk: query rows per chunk of maps (``budget.plan``; None: all at once).
    """

    capture: AttentionCapture
    geometry: Geometry
    settings: Settings
    token_distances: torch.Tensor
    chunk: int | None = None

    @cached_property
    def attention(self) -> dict[str, torch.Tensor]:
        """Every map metric of the batch (``metrics.score_statistics``), computed once, chunk by chunk."""
        settings = self.settings
        return score_statistics(
            self.capture.scores,
            self.token_distances,
            self.geometry.num_prefix_tokens,
            settings.k,
            settings.tau,
            settings.axis,
            self.chunk,
            settings.grid_ks,
            settings.grid_taus,
        )

    def maps(self, kind: str) -> torch.Tensor:
        """The whole (L, B, H, T, T) maps of ``kind`` ("pre" or "post"), built from the scores:
        O(L B H T^2) memory, for a metric that needs every map at once."""
        blocks = []
        for scores in self.capture.scores:
            scores = scores.float()
            with torch.no_grad():
                pre = scores.pre()
                blocks.append(pre if kind == "pre" else scores.post(pre))
        return torch.stack(blocks)


@dataclass(frozen=True)
class Figure:
    """A figure of the catalogue.

    Attributes:
        function: the ``@figure`` function in ``deepvit_diag.figures`` that draws it.
        section: the report section and app view it belongs to (``SECTIONS``, or
            ``SWEEP_SECTION``, ``ABLATION_SECTION``).
        caption: the caption template (see the module docstring for its fields), or a
            ``Caption`` function where the wording depends on the models.
        scope: how many figures it draws (``SCOPES``).
        arguments: keyword arguments of the function, e.g. the array a generic
            ``block_curves`` draws.
        key: what names the figure (element ids, ``figure_named``); default the function's
            name, needed when two entries draw with the same function.
    """

    function: Callable[..., Any]
    section: str
    caption: str | Caption
    scope: str = "models"
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)
    key: str = ""

    def __post_init__(self) -> None:
        if self.section not in (*SECTIONS, SWEEP_SECTION, ABLATION_SECTION) or self.scope not in SCOPES:
            raise ValueError(f"figure {self.name}: unknown section {self.section!r} or scope {self.scope!r}")
        if FIGURE_FUNCTIONS.get(getattr(self.function, "__name__", "")) is not self.function:
            raise ValueError(f"figure {self.name}: not a registered @figure function")
        if not self.key:
            object.__setattr__(self, "key", self.name)

    @property
    def name(self) -> str:
        """The name of its function."""
        return self.function.__name__

    @property
    def element_id(self) -> str:
        """The id of its (first) element in report.html: ``fig-`` and the key, with dashes."""
        return "fig-" + self.key.replace("_", "-")

    def caption_for(
        self,
        results: Mapping[str, AnalysisResult],
        fields: Mapping[str, Any],
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """The caption of the figure drawn for ``results`` (label -> result) with ``options``."""
        if isinstance(self.caption, str):
            return self.caption.format(**fields)
        return self.caption(results, fields, options or {})


# The letters of a ``Sum``'s shape: blocks L, heads H, and the robustness grid's values of k
# (K, ``Settings.grid_ks``) and of tau (U, ``Settings.grid_taus``).
SHAPE_LETTERS = "LHKU"
# A bound of one image's value that depends on the geometry: the entropy of T tokens.
LN_TOKENS = "ln T"


@dataclass(frozen=True)
class Sum:
    r"""What one image's value of a ``measure``\ d array looks like: the analysis sums these
    values over the images, and ``merge`` checks every shard's sums against this.

    Attributes:
        shape: one letter per axis (``SHAPE_LETTERS``), e.g. ``"LH"`` for (blocks, heads).
        low: the smallest value one image can give (None: unbounded).
        high: the largest (None: unbounded; ``LN_TOKENS``: ln T, the entropy of uniform attention).
    """

    shape: str
    low: float | None = None
    high: float | str | None = None

    def __post_init__(self) -> None:
        if not self.shape or set(self.shape) - set(SHAPE_LETTERS):
            raise ValueError(f"a sum's shape is letters of {SHAPE_LETTERS}, got {self.shape!r}")
        if isinstance(self.high, str) and self.high != LN_TOKENS:
            raise ValueError(f"a sum's upper bound is a number, None or {LN_TOKENS!r}, got {self.high!r}")


@dataclass(frozen=True)
class Metric:
    """One entry: what is computed, what it leaves in ``AnalysisResult.arrays`` and how it is drawn.

    Attributes:
        name: the metric's name in ``docs/metrics.md``.
        arrays: array names every result holds (shapes in ``AnalysisResult``'s docstring).
        figures: the figures that draw them.
        measure: per-image means of one batch, keyed by array name (see the module docstring).
        sums: for a ``measure``, a ``Sum`` per array: its shape and the range of one image's value.
        reads_model: arrays read from the weights once.
        optional_arrays: arrays only some models have (Theta's bias exists only in Conv2d Theta).
    """

    name: str
    arrays: tuple[str, ...]
    figures: tuple[Figure, ...]
    measure: Callable[[Batch], dict[str, torch.Tensor]] | None = None
    sums: dict[str, Sum] = field(default_factory=dict, hash=False)
    reads_model: Callable[[nn.Module, Geometry], dict[str, np.ndarray]] | None = None
    optional_arrays: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Without a Sum, merge could not check (and would refuse) the shards' sums of the array.
        expected = set(self.arrays) if self.measure is not None else set()
        if set(self.sums) != expected:
            raise ValueError(
                f"metric {self.name}: a measure needs a Sum for each of its arrays and nothing else "
                f"(arrays {sorted(expected)}, sums {sorted(self.sums)})"
            )


# The second figure of a similarity drawn for both map kinds of head-mixing models.
OTHER_KIND_CAPTION = (
    "The same from the other kind of maps of the same analysis (its title names the kind). Pre-Θ maps are the "
    "softmax maps (non-negative, rows sum to 1): their cosines lie in [0, 1]. Post-Θ maps are what multiplies V "
    "after Θ and the Norm (BatchNorm outputs, centred and signed): their cosines lie in [-1, 1]. The two kinds' "
    "numbers are therefore not on the same scale: compare models within one kind."
)


def _drawn_kind(results: Mapping[str, AnalysisResult], options: Mapping[str, Any]) -> str | None:
    """The map kind a similarity figure draws with ``options`` (None: the settings' kind)."""
    return other_map_kind(results) if options.get("other_kind") else options.get("maps")


def _layer_similarity_caption(
    results: Mapping[str, AnalysisResult], fields: Mapping[str, Any], options: Mapping[str, Any]
) -> str:
    """What S[p, q] is, how to read collapse on the scale the figure uses (sequential for
    non-negative maps, diverging for signed post-Θ maps), and the difference panel if drawn."""
    kind = _drawn_kind(results, options)
    signed = similarity_scale([result.similarity(kind) for result in results.values()])["colorscale"] == DIVERGING
    sentences = [OTHER_KIND_CAPTION] if options.get("other_kind") else []
    sentences.append(
        "Cosine similarity between the attention maps of block p and block q (paper Eqn 2), averaged over "
        "images, heads and tokens."
    )
    if signed:
        sentences.append(
            "These maps are signed, so the scale is diverging: white is 0, dark red 1, blue negative. A dark red "
            "square in the lower right means the deep blocks attend alike: attention collapse."
        )
    else:
        sentences.append(
            "Black is 0, bright yellow 1. A bright square in the lower right means the deep blocks attend alike: "
            "attention collapse."
        )
    sentences.append(
        "Near-uniform maps (see the attention regimes under Similarity ratio) are alike at any depth, so a square "
        "of near-uniform blocks is not collapse."
    )
    if similarity_figures.has_difference_panel(results):
        first, second = list(results)
        sentences.append(
            f"The last panel is {second} minus {first}, on its own scale centred at 0: blue where {second}'s blocks "
            f"are less alike than {first}'s, red where more."
        )
    return " ".join(sentences)


def _cls_attention_caption(
    results: Mapping[str, AnalysisResult], fields: Mapping[str, Any], options: Mapping[str, Any]
) -> str:
    """The overlay's caption: its scale, and the pre-/post-Θ rows only for a model that mixes heads."""
    (result,) = results.values()
    example = describe_examples(result.arrays)[fields["example"] - 1]
    caption = (
        f"{fields['label']}, {example.short_name}: how much the CLS token attends to each patch, per "
        "head, drawn over the image as the model saw it; the softmax weights from black (0) to bright yellow."
    )
    if result.geometry.mixing_blocks:
        caption += (
            " Head-mixing blocks get two rows: the softmax maps (pre-Θ) and the maps after Θ and the Norm "
            "(post-Θ), which are signed and drawn on their own diverging scale, white at 0."
        )
    return caption


def _both_kinds(*names: str) -> tuple[str, ...]:
    return tuple(f"{name}_{kind}" for name in names for kind in MAP_KINDS)


def _both_kinds_sums(**sums: Sum) -> dict[str, Sum]:
    return {f"{name}_{kind}": value for name, value in sums.items() for kind in MAP_KINDS}


def _similarity_family(batch: Batch) -> dict[str, torch.Tensor]:
    return {name: batch.attention[name] for name in _both_kinds("similarity", "ratio", "cross_head")}


def _regimes_and_grid(batch: Batch) -> dict[str, torch.Tensor]:
    return {name: batch.attention[name] for name in _both_kinds("uniformity", "ratio_grid")}


def _softmax_statistics(batch: Batch) -> dict[str, torch.Tensor]:
    return {name: batch.attention[name] for name in ("entropy", "attention_distance")}


METRICS: tuple[Metric, ...] = (
    Metric(
        "cross-layer similarity, similarity ratio and cross-head similarity",
        _both_kinds("similarity", "ratio", "cross_head"),
        (
            Figure(
                similarity_figures.layer_similarity,
                "Cross-layer similarity",
                _layer_similarity_caption,
            ),
            Figure(
                similarity_figures.layer_similarity,
                "Cross-layer similarity",
                _layer_similarity_caption,
                arguments={"other_kind": True},
                key="layer_similarity_other_kind",
            ),
            Figure(
                similarity_figures.similarity_ratio,
                "Similarity ratio",
                "Share of attention vectors of each block whose mean similarity to the blocks within k = {k} "
                "exceeds tau = {tau:g} (paper Fig. 3a). Blocks above the dashed line rho = {rho:g} count as similar "
                "(filled markers).",
            ),
            Figure(
                similarity_figures.similarity_ratio,
                "Similarity ratio",
                OTHER_KIND_CAPTION,
                arguments={"other_kind": True},
                key="similarity_ratio_other_kind",
            ),
            Figure(
                similarity_figures.cross_head_curves,
                "Heads",
                "Mean similarity between the attention maps of different heads of the same block (paper Fig. 3c). "
                "Low values mean the heads look at different things.",
            ),
            Figure(
                similarity_figures.cross_head_matrices,
                "Heads",
                "Head-by-head similarity inside one block of each model (the last unless another is chosen), "
                "on one colour scale.",
            ),
        ),
        measure=_similarity_family,
        sums=_both_kinds_sums(similarity=Sum("LL"), ratio=Sum("L", 0.0, 1.0), cross_head=Sum("LHH")),
    ),
    Metric(
        REGIMES_AND_GRID,
        _both_kinds("uniformity", "ratio_grid"),
        (
            Figure(
                similarity_figures.attention_regimes,
                "Similarity ratio",
                "How close each block's maps are to uniform attention (1: every query spreads its weight evenly). "
                "Blocks above the dotted line are near-uniform: such maps are alike whatever the depth, so their "
                "similarity says nothing about collapse, and they never count as collapsed. Collapse is "
                "reported only for selective blocks whose maps stop changing.",
                arguments={"cutoff": NEAR_UNIFORM_CUTOFF},
            ),
            Figure(
                similarity_figures.robustness_grid,
                "Similarity ratio",
                "How many blocks count as similar (colour) and where collapse starts (text; – for none) for k, tau "
                "and rho around the chosen k = {k}, tau = {tau:g} and rho = {rho:g}, one panel per k, all from the "
                "same per-vector similarities. A verdict that changes inside this grid depends on the thresholds.",
            ),
        ),
        measure=_regimes_and_grid,
        sums=_both_kinds_sums(uniformity=Sum("LH", 0.0, 1.0), ratio_grid=Sum("KUL", 0.0, 1.0)),
    ),
    Metric(
        "Theta",
        ("theta", "theta_blocks"),
        (
            Figure(
                head_mixing_figures.theta_heatmaps,
                "Re-attention matrices Θ",
                "{label}: the learned head-mixing matrix of each block that mixes heads (Re-attention's Θ; in CaiT the "
                "talking-heads matrix after the softmax). The identity (a red diagonal) "
                "would mean no mixing; hover a cell for the block's distance from identity and from a permutation.",
                scope="model",
            ),
            Figure(
                head_mixing_figures.theta_distances,
                "Re-attention matrices Θ",
                "Distance of each block's head-mixing matrix (columns scaled to unit maximum) from the identity and "
                "from the nearest signed permutation, relative to the identity's norm: 0 means heads pass through "
                "unchanged (resp. only reordered).",
            ),
            Figure(
                head_mixing_figures.norm_gains,
                "Re-attention matrices Θ",
                "The learned affine weight of the Norm after Θ (BatchNorm in the official model, LayerNorm in "
                "vit-pytorch) per output head, drawn as weight − 1: 0 (white) leaves the head's scale unchanged.",
            ),
        ),
        reads_model=lambda model, geometry: stacked_head_mixing(model, geometry.num_heads),
        optional_arrays=tuple(name for name in HEAD_MIXING_ARRAYS if name not in ("theta", "theta_blocks")),
    ),
    Metric(
        "attention entropy and mean attention distance",
        ("entropy", "attention_distance"),
        (
            Figure(
                similarity_figures.entropy_curves,
                "Attention statistics per block",
                "Entropy of each head's softmax attention, averaged over queries and images; dots are single heads. "
                "The dotted line is uniform attention.",
            ),
            Figure(
                similarity_figures.head_curves,
                "Attention statistics per block",
                "Mean distance in pixels between a query patch and the patches it attends to (ViT paper Fig. 7); "
                "dots are single heads.",
                arguments={
                    "array": "attention_distance",
                    "y_title": "mean attention distance (pixels)",
                    "title": "Mean attention distance per block (softmax maps)",
                },
                key="attention_distance_curves",
            ),
        ),
        measure=_softmax_statistics,
        sums={"entropy": Sum("LH", 0.0, LN_TOKENS), "attention_distance": Sum("LH", 0.0)},
    ),
    Metric(
        "token similarity",
        ("token_similarity",),
        (
            Figure(
                similarity_figures.block_curves,
                "Attention statistics per block",
                "Mean cosine similarity between the patch tokens a block outputs (Gong et al. 2021): near 1 means "
                "over-smoothed tokens.",
                arguments={
                    "array": "token_similarity",
                    "y_title": "mean token cosine similarity",
                    "title": "Token similarity after each block (higher: over-smoothed tokens)",
                },
                key="token_similarity_curves",
            ),
        ),
        measure=lambda batch: {
            "token_similarity": token_similarity(batch.capture.hidden, batch.geometry.num_prefix_tokens)
        },
        sums={"token_similarity": Sum("L")},
    ),
    Metric(
        "rank-collapse residual",
        ("rank_residual",),
        (
            Figure(
                similarity_figures.block_curves,
                "Attention statistics per block",
                "Relative distance of each block's output from a rank-one matrix (Dong et al. 2021): near 0 means "
                "rank collapse.",
                arguments={
                    "array": "rank_residual",
                    "y_title": "relative residual to rank one",
                    "title": "Rank-collapse residual after each block (lower: closer to rank one)",
                },
                key="rank_residual_curves",
            ),
        ),
        measure=lambda batch: {"rank_residual": rank_collapse(batch.capture.hidden)},
        sums={"rank_residual": Sum("L")},
    ),
    Metric(
        "Block Influence",
        ("block_influence",),
        (
            Figure(
                similarity_figures.block_curves,
                "Attention statistics per block",
                "1 minus the mean cosine between the tokens entering and leaving each block (Block Influence, "
                "ShortGPT, Men et al. 2024): near 0 means the block barely changes its input, a cheap sign that it "
                "could be removed (the command deepvit-diag ablate measures what removing it costs).",
                arguments={
                    "array": "block_influence",
                    "y_title": "1 - cos(block input, block output)",
                    "title": "Block Influence (lower: the block changes its tokens less)",
                },
                key="block_influence_curves",
            ),
        ),
        measure=lambda batch: {"block_influence": block_influence(batch.capture.hidden, batch.capture.first_input)},
        sums={"block_influence": Sum("L", 0.0, 2.0)},  # 1 - cosine
    ),
    Metric(
        "linear CKA",
        ("cka",),
        (
            Figure(
                similarity_figures.cka_within,
                "Representation similarity (CKA)",
                "Linear CKA between the outputs of two blocks of the same model (Kornblith et al. 2019): 1 means the "
                "same representation up to rotation and scale. It needs at least 4 images.",
            ),
            Figure(
                similarity_figures.cka_across,
                "Representation similarity (CKA)",
                "Linear CKA between block i of {label_a} (rows) and block j of {label_b} (columns).",
                scope="comparison",
            ),
        ),
    ),
    Metric(
        "CLS attention of example images",
        ("example_images", *(f"example_cls_{kind}" for kind in MAP_KINDS)),
        (
            Figure(
                overlay_figures.cls_attention,
                "Attention of the CLS token",
                _cls_attention_caption,
                scope="example",
            ),
        ),
        # Absent from results saved before the examples were described (``example_images``).
        optional_arrays=DESCRIBED_ARRAYS,
    ),
)


# The figures of a sweep, in page order; captions are ``str.format`` templates with ``rho``,
# ``k``, ``tau`` and ``x`` (the x axis' title).
SWEEP_FIGURES = (
    Figure(
        sweep_figures.sweep_similar_blocks,
        SWEEP_SECTION,
        "Blocks whose similarity ratio exceeds rho = {rho:g}, by {x}, one line per group. The paper finds 5, 11 and "
        "15 similar blocks in ViTs of 16, 24 and 32 blocks and none in DeepViTs. In a training series, the dotted "
        "line marks the first checkpoint with a collapsed run at the end of the network.",
        scope="sweep",
    ),
    Figure(
        sweep_figures.sweep_collapse_start,
        SWEEP_SECTION,
        "The first block of the run of similar blocks that reaches the last block (blocks numbered from 1), by {x}; "
        "a gap means no collapsed run.",
        scope="sweep",
    ),
    Figure(
        sweep_figures.sweep_accuracy,
        SWEEP_SECTION,
        "Top-1 and top-5 accuracy on the analysed images, from the same forward passes, by {x}; none where the "
        "images carry no labels.",
        scope="sweep",
    ),
    Figure(
        sweep_figures.sweep_ratio_curves,
        SWEEP_SECTION,
        "The similarity ratio of every block (k = {k}, tau = {tau:g}) of every checkpoint, checkpoints of one group "
        "in one hue from light to dark along {x}; blocks above the dashed line count as similar.",
        scope="sweep",
    ),
    Figure(
        sweep_figures.sweep_adjacent_curves,
        SWEEP_SECTION,
        "Cosine similarity of each block's attention maps with the previous block's (drawn at the later block), "
        "for every checkpoint: near 1 means the block attends as the one before it.",
        scope="sweep",
    ),
    Figure(
        sweep_figures.sweep_entropy_curves,
        SWEEP_SECTION,
        "Entropy of the softmax attention of every block, averaged over heads, queries and images, for every "
        "checkpoint: low values mean sharp attention.",
        scope="sweep",
    ),
)

# The figures of an ablation, in page order (those its studies give); captions are
# ``str.format`` templates with ``rho``.
ABLATION_FIGURES = (
    Figure(
        ablation_figures.ablation_effect,
        ABLATION_SECTION,
        "KL divergence of the predictive distribution from the intact model's when each block is removed, its "
        "attention branch removed, its maps replaced by the previous block's, or (in models that mix heads) its "
        "head mixing off (left, log scale), next to the block's similarity ratio (dashed; the grey line is "
        "rho = {rho:g}) and Block Influence (dotted). If similar maps meant redundant blocks, the KL would be low "
        "where the ratio is high.",
        scope="ablation",
    ),
    Figure(
        ablation_figures.head_importance,
        ABLATION_SECTION,
        "Left: what replacing each head's output costs (KL). Right: how similar the head's maps are to those of the "
        "other heads of its block. A head that attends like the others should cost little.",
        scope="ablation",
    ),
    Figure(
        ablation_figures.pruning_curves,
        ABLATION_SECTION,
        "The k most redundant blocks removed together, k = 0..L, in three orderings: by the measured cost of removing "
        "each block alone, by similarity ratio and by Block Influence. The ordering whose curve stays high longest "
        "finds the blocks that can go.",
        scope="ablation",
    ),
)


def required_arrays() -> set[str]:
    """The arrays every analysis result holds."""
    return {name for metric in METRICS for name in metric.arrays}


def metric_of(spec: Figure) -> Metric | None:
    """The metric that draws ``spec`` (None for the figures of sweeps and ablations)."""
    return next((metric for metric in METRICS if any(spec is figure for figure in metric.figures)), None)


def metric_named(name: str) -> Metric:
    """The catalogue metric called ``name``."""
    return next(metric for metric in METRICS if metric.name == name)


def summed_arrays() -> dict[str, Sum]:
    """Every array the analysis sums over the images (those of a ``measure``), with its ``Sum``."""
    return {name: value for metric in METRICS for name, value in metric.sums.items()}


def figures_in(section: str) -> list[Figure]:
    """The catalogue's figures of ``section``, in page order."""
    return [figure for metric in METRICS for figure in metric.figures if figure.section == section]


def figure_named(key: str) -> Figure:
    """The catalogue figure with this key (by default the name of its function)."""
    return next(spec for metric in METRICS for spec in metric.figures if spec.key == key)
