"""Figures of how alike attention maps are, across blocks and heads, and of per-block
statistics and CKA, for one or several models (``AnalysisResult``s keyed by label)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import figure
from .style import (
    HEATMAP_PANEL_PX,
    THRESHOLD_COLOUR,
    block_axis,
    block_numbers,
    colour_bars_right,
    finish,
    finite,
    heatmap_panel,
    labelled,
    map_kind,
    maps_name,
    model_colour,
    model_label,
    no_data_note,
    other_map_kind,
    reference_line,
    sequential_scale,
    short_label,
    similarity_scale,
    square_heatmap_axes,
    symmetric_scale,
    titles_over_panels,
)

if TYPE_CHECKING:
    from ..results import ComparisonResult
    from ..settings import Settings
    from .style import Results

# ----------------------------------------------------------------------------- layer similarity


@figure
def layer_similarity(results: Results, maps: str | None = None, other_kind: bool = False) -> go.Figure | None:
    """Cross-layer similarity S[p, q] (paper Eqn 2) of each model side by side, on one
    colour scale; with two models of equal depth a third panel shows B - A on its own
    diverging scale. The colour bars stand side by side right of all panels, each titled by
    the panels it belongs to. ``other_kind``: the map kind the settings did not choose, None
    unless a model mixes heads."""
    results = labelled(results)
    maps = other_map_kind(results) if other_kind else maps
    if other_kind and maps is None:
        return None
    labels = list(results)
    matrices = [results[label].similarity(maps) for label in labels]
    with_difference = has_difference_panel(results)
    short = [short_label(label) for label in labels]
    lettered = len(labels) == 2 and all(len(letter) == 1 for letter in short)  # "vit (A)": A and B name them
    difference_title = f"{short[1]} − {short[0]}" if with_difference else ""
    titles = labels + ([f"difference {difference_title}"] if with_difference else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    for column, (label, matrix) in enumerate(zip(labels, matrices), start=1):
        hover = "block %{y} vs block %{x}<br>similarity %{z:.3f}<extra>" + label + "</extra>"
        heatmap_panel(fig, matrix, hover, col=column, name=label)
    similarity_title = "similarity" + (f"<br>({short[0]}, {short[1]})" if with_difference and lettered else "")
    fig.update_layout(coloraxis={**similarity_scale(matrices), "colorbar": {"title": {"text": similarity_title}}})
    if with_difference:
        difference = matrices[1] - matrices[0]
        hover = "block %{y} vs block %{x}<br>difference %{z:+.3f}<extra>" + titles[-1] + "</extra>"
        heatmap_panel(fig, difference, hover, col=len(titles), coloraxis="coloraxis2", name="difference")
        fig.update_layout(
            coloraxis2={
                **symmetric_scale([difference]),
                "colorbar": {"title": {"text": "difference" + (f"<br>{difference_title}" if lettered else "")}},
            }
        )
    colour_bars_right(fig, ["coloraxis", "coloraxis2"] if with_difference else ["coloraxis"])
    square_heatmap_axes(fig, len(titles), "block q", "block p", max(len(matrix) for matrix in matrices))
    titles_over_panels(fig)
    kind = map_kind(results[labels[0]], maps)
    return finish(fig, f"Cross-layer attention similarity S[p, q] ({maps_name(results, kind)})", HEATMAP_PANEL_PX + 140)


def has_difference_panel(results: Results) -> bool:
    """Whether ``layer_similarity`` draws B - A: for two models of the same depth."""
    depths = {result.geometry.num_blocks for result in results.values()}
    return len(results) == 2 and len(depths) == 1


# ----------------------------------------------------------------------------- similarity ratio


@figure
def similarity_ratio(results: Results, maps: str | None = None, other_kind: bool = False) -> go.Figure | None:
    """Similarity ratio per block (paper Fig. 3a) with the rho threshold; similar blocks
    (ratio above rho) are drawn as filled markers, the others as open ones.
    ``other_kind``: the map kind the settings did not choose, None unless a model mixes heads."""
    results = labelled(results)
    maps = other_map_kind(results) if other_kind else maps
    if other_kind and maps is None:
        return None
    fig = go.Figure()
    rhos = set()
    for index, (label, result) in enumerate(results.items()):
        ratio = result.ratio(maps)
        similar = set(result.similar_blocks(maps).indices)
        blocks = block_numbers(len(ratio))
        fig.add_trace(
            go.Scatter(
                x=blocks,
                y=ratio,
                mode="lines+markers",
                name=label,
                line={"color": model_colour(index)},
                marker={
                    "size": 9,
                    "symbol": ["circle" if block in similar else "circle-open" for block in range(len(ratio))],
                },
                customdata=["similar" if block in similar else "not similar" for block in range(len(ratio))],
                hovertemplate="block %{x}: ratio %{y:.3f} (%{customdata})<extra>" + label + "</extra>",
            )
        )
        rhos.add(result.settings.rho)
    for rho in sorted(rhos):
        reference_line(fig, f"rho = {rho:g} (similar above)", THRESHOLD_COLOUR, "dash", y=rho)
    kind = map_kind(next(iter(results.values())), maps)
    block_axis(fig, results)
    fig.update_yaxes(title="similarity ratio", range=[-0.03, 1.05])
    return finish(fig, f"Similarity ratio per block ({maps_name(results, kind)}); filled markers: similar blocks", 420)


# ----------------------------------------------------------------------------- heads


def _block_line(fig: go.Figure, values: np.ndarray, name: str, index: int, dash: str = "solid", what: str = "") -> None:
    """A model's (L,) values over its blocks, numbered from 1, in the model's colour."""
    fig.add_trace(
        go.Scatter(
            x=block_numbers(len(values)),
            y=values,
            mode="lines+markers",
            name=name,
            line={"color": model_colour(index), "dash": dash},
            hovertemplate=f"block %{{x}}: {what}%{{y:.3f}}<extra>{name}</extra>",
        )
    )


def _line_per_model(curves: Mapping[str, np.ndarray]) -> go.Figure:
    """One line per model (label -> its (L,) values) over its blocks, numbered from 1."""
    fig = go.Figure()
    for index, (label, values) in enumerate(curves.items()):
        _block_line(fig, values, label, index)
    return fig


@figure
def cross_head_curves(results: Results, maps: str | None = None) -> go.Figure:
    """Mean cross-head similarity per block (paper Fig. 3c: below 0.3 means diverse heads)."""
    results = labelled(results)
    fig = _line_per_model({label: result.cross_head_mean(maps) for label, result in results.items()})
    kind = map_kind(next(iter(results.values())), maps)
    block_axis(fig, results)
    fig.update_yaxes(title="mean cross-head similarity")
    return finish(fig, f"Cross-head similarity per block, mean over head pairs ({maps_name(results, kind)})", 400)


@figure
def cross_head_matrices(results: Results, block: int | None = None, maps: str | None = None) -> go.Figure:
    """The H x H cross-head similarity of one block (0-based; default the last) per model."""
    results = labelled(results)
    labels = list(results)
    chosen = {label: (results[label].geometry.num_blocks - 1 if block is None else block) for label in labels}
    matrices = [results[label].cross_head(maps)[chosen[label]] for label in labels]
    titles = [f"{label}, block {chosen[label] + 1}" for label in labels]
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=titles, horizontal_spacing=0.1)
    for column, (title, matrix) in enumerate(zip(titles, matrices), start=1):
        hover = "head %{y} vs head %{x}<br>similarity %{z:.3f}<extra>" + title + "</extra>"
        heatmap_panel(fig, matrix, hover, col=column)
    fig.update_layout(coloraxis={**similarity_scale(matrices), "colorbar": {"title": "similarity"}})
    colour_bars_right(fig, ["coloraxis"])
    square_heatmap_axes(fig, len(labels), "head", "head", max(len(matrix) for matrix in matrices))
    titles_over_panels(fig)
    kind = map_kind(results[labels[0]], maps)
    return finish(fig, f"Cross-head similarity inside one block ({maps_name(results, kind)})", HEATMAP_PANEL_PX + 120)


# ----------------------------------------------------------------------------- per-block curves


@figure
def head_curves(results: Results, array: str, y_title: str, title: str) -> go.Figure:
    """A per-block, per-head array (L, H) of each model: the mean over heads as a line, every
    head as a faint dot (the ViT paper's Fig. 7 style)."""
    results = labelled(results)
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        values = result.arrays[array]
        blocks = block_numbers(len(values))
        heads = values.shape[1]
        fig.add_trace(
            go.Scatter(
                x=np.repeat(blocks, heads),
                y=values.reshape(-1),
                mode="markers",
                name=f"{label}, each head",
                marker={"color": model_colour(index), "size": 5, "opacity": 0.35},
                customdata=np.tile(np.arange(1, heads + 1), len(blocks)),
                hovertemplate="block %{x}, head %{customdata}: %{y:.3f}<extra>" + label + "</extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=blocks,
                y=values.mean(axis=1),
                mode="lines+markers",
                name=f"{label}, mean over heads",
                line={"color": model_colour(index), "width": 2.5},
                hovertemplate="block %{x}: mean %{y:.3f}<extra>" + label + "</extra>",
            )
        )
    block_axis(fig, results)
    fig.update_yaxes(title=y_title)
    return finish(fig, title, 420)


@figure
def entropy_curves(results: Results) -> go.Figure:
    """Attention entropy per block and head (softmax maps), with ln T, the entropy of
    uniform attention over T tokens, as the upper reference line."""
    results = labelled(results)
    fig = head_curves(results, "entropy", "entropy (nats)", "Attention entropy per block (softmax maps)")
    for num_tokens in sorted({result.geometry.num_tokens for result in results.values()}):
        name = f"uniform attention: ln T = {math.log(num_tokens):.2f} ({num_tokens} tokens)"
        reference_line(fig, name, "#777", "dot", y=math.log(num_tokens))
    return fig


@figure
def block_curves(results: Results, array: str, y_title: str, title: str) -> go.Figure:
    """A per-block array (L,) of each model as one line."""
    results = labelled(results)
    fig = _line_per_model({label: result.arrays[array] for label, result in results.items()})
    block_axis(fig, results)
    fig.update_yaxes(title=y_title)
    return finish(fig, title, 380)


# ----------------------------------------------------------------------------- CKA


def _cka_note(fig: go.Figure, matrices: list[np.ndarray]) -> None:
    if not any(finite(matrix).size for matrix in matrices):
        no_data_note(fig, "CKA is undefined with fewer than 4 images (unbiased HSIC estimator)")


@figure
def cka_within(results: Results) -> go.Figure:
    """Linear CKA between the block outputs of each model (L x L), on one colour scale."""
    results = labelled(results)
    labels = list(results)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.1)
    matrices = [results[label].cka() for label in labels]
    for column, (label, matrix) in enumerate(zip(labels, matrices), start=1):
        heatmap_panel(
            fig, matrix, f"{label}: block %{{y}} vs block %{{x}}<br>CKA %{{z:.3f}}<extra></extra>", col=column
        )
    fig.update_layout(coloraxis={**sequential_scale(1.0), "colorbar": {"title": "CKA"}})
    colour_bars_right(fig, ["coloraxis"])
    square_heatmap_axes(fig, len(labels), "block", "block", max(len(matrix) for matrix in matrices))
    titles_over_panels(fig)
    _cka_note(fig, matrices)
    return finish(fig, "Linear CKA between block outputs within each model", HEATMAP_PANEL_PX + 120)


@figure
def cka_across(comparison: ComparisonResult, label_a: str | None = None, label_b: str | None = None) -> go.Figure:
    """Linear CKA between block i of A (rows) and block j of B (columns); the labels default
    to the models' descriptions."""
    label_a, label_b = label_a or model_label(comparison.a, "A"), label_b or model_label(comparison.b, "B")
    fig = make_subplots(rows=1, cols=1)
    matrix = comparison.cka_ab
    heatmap_panel(
        fig, matrix, f"{label_a} block %{{y}} vs {label_b} block %{{x}}<br>CKA %{{z:.3f}}<extra></extra>", col=1
    )
    fig.update_layout(coloraxis={**sequential_scale(1.0), "colorbar": {"title": "CKA"}})
    colour_bars_right(fig, ["coloraxis"])
    square_heatmap_axes(fig, 1, f"block of {label_b}", f"block of {label_a}", max(matrix.shape))
    _cka_note(fig, [matrix])
    # One square panel: a fixed width keeps the colour bar next to it instead of at the page edge.
    title = "Linear CKA between the block outputs of the two models"
    return finish(fig, title, HEATMAP_PANEL_PX + 160, HEATMAP_PANEL_PX + 360)


# ----------------------------------------------------------------------------- regimes and robustness

_KIND_DASHES = {"pre": "solid", "post": "dash"}


@figure
def attention_regimes(results: Results, cutoff: float) -> go.Figure:
    """Head-averaged uniformity per block (1: uniform maps) with the near-uniform cut-off;
    models that mix heads show both kinds, the softmax maps solid and the post-Θ maps dashed."""
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        kinds = ("pre", "post") if result.geometry.mixing_blocks else ("pre",)
        for kind in kinds:
            values = result.uniformity(kind).mean(axis=1)
            name = f"{label}, {'pre-Θ' if kind == 'pre' else 'post-Θ'}" if len(kinds) == 2 else label
            _block_line(fig, values, name, index, _KIND_DASHES[kind], "uniformity ")
    reference_line(fig, f"near-uniform above {cutoff:g}", THRESHOLD_COLOUR, "dot", y=cutoff)
    block_axis(fig, results)
    fig.update_yaxes(title="uniformity (1 = uniform maps)", range=[-0.03, 1.05])
    return finish(fig, "Attention regime per block: near-uniform above the dotted line, selective below", 420)


@figure
def robustness_grid(results: Results, maps: str | None = None) -> go.Figure:
    """Similar blocks over the (tau, rho) grid, one panel per k of the grid (columns) and model
    (rows), on one colour scale; each cell's text is the block where collapse starts ("–": no
    collapsed run). The chosen k's panel says so in its title."""
    labels = list(results)
    columns = max(len(result.settings.grid_ks) for result in results.values())
    titles = [
        _grid_panel_title(results[label].settings, k)
        for label in labels
        for k in _padded(results[label].settings.grid_ks, columns)
    ]
    fig = make_subplots(
        rows=len(labels), cols=columns, subplot_titles=titles, horizontal_spacing=0.06, vertical_spacing=0.16
    )
    largest = 1.0
    for row, label in enumerate(labels, start=1):
        result = results[label]
        settings = result.settings
        grid = result.robustness(maps)
        largest = max(largest, float(grid["similar_blocks"].max()))
        for column, k in enumerate(settings.grid_ks, start=1):
            count, start = grid["similar_blocks"][column - 1].T, grid["collapse_start"][column - 1].T  # (rho, tau)
            fig.add_trace(
                go.Heatmap(
                    z=count,
                    x=[f"{tau:g}" for tau in settings.grid_taus],
                    y=[f"{rho:g}" for rho in settings.grid_rhos],
                    text=np.where(start >= 0, (start + 1).astype(str), "–"),
                    texttemplate="%{text}",
                    # No colour: plotly draws each cell's text black or white, whichever contrasts.
                    textfont={"size": 13},
                    coloraxis="coloraxis",
                    hovertemplate=f"k {k}, tau %{{x}}, rho %{{y}}<br>%{{z}} similar blocks<br>"
                    f"collapse from block %{{text}}<extra>{label}</extra>",
                ),
                row=row,
                col=column,
            )
            fig.update_xaxes(title="tau" if row == len(labels) else None, type="category", row=row, col=column)
            # The model names its row on the left: in the panel titles three of them ran into each other.
            row_title = f"{label}<br>rho" if len(labels) > 1 else "rho"
            fig.update_yaxes(title=row_title if column == 1 else None, type="category", row=row, col=column)
    fig.update_layout(coloraxis={**sequential_scale(largest), "colorbar": {"title": {"text": "similar<br>blocks"}}})
    colour_bars_right(fig, ["coloraxis"])
    kind = map_kind(results[labels[0]], maps)
    title = (
        "Robustness: similar blocks (colour) and collapse start (text) over k, tau and rho "
        f"({maps_name(results, kind)})"
    )
    return finish(fig, title, 120 + 300 * len(labels))


def _padded(ks: tuple[int, ...], columns: int) -> list[int | None]:
    """``ks`` with None for the panels a model with fewer k (k = 1 has no k - 1) leaves empty."""
    return [*ks, *([None] * (columns - len(ks)))]


def _grid_panel_title(settings: Settings, k: int | None) -> str:
    if k is None:
        return ""
    return f"k = {k}" + (" (chosen)" if k == settings.k else "")
