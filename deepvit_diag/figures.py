"""Plotly figures of analysis results, shared by ``report.html``, ``sweep.html`` and the
Streamlit app.

One function per figure. Every function takes results (``AnalysisResult``, or a mapping
``label -> AnalysisResult`` for figures that put several models side by side, or a
``SweepResult``) and only draws what the result already holds: no metric is computed here.

Conventions, for every figure:

* block and head numbers are shown from 1, as in the paper (results store them 0-based);
* every axis has a title, every heatmap shows its value on hover;
* heatmaps of the same quantity for different models share one colour scale, so the
  same colour means the same number in A and B;
* a model keeps its colour across figures (first label blue, second orange, ...).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from . import catalogue
from .escaping import plotly_label
from .metrics import ThetaInfo
from .results import AnalysisResult, ComparisonResult
from .sweeps import SweepEntry, SweepResult

Results = Mapping[str, AnalysisResult]

TEMPLATE = "plotly_white"
MODEL_COLOURS = ("#1f6fb4", "#e8710a", "#2ca02c", "#9467bd")
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
MAP_NAMES = {"pre": "softmax maps (pre-Θ)", "post": "maps that multiply V (post-Θ)"}
HEATMAP_PANEL_PX = 340
# Example images are embedded once per head panel; this bounds the size of report.html.
OVERLAY_MAX_PIXELS = 112
# Images that fit OVERLAY_MAX_PIXELS are repeated pixel by pixel up to at least this side,
# so that the browser's smoothing when it stretches them over a panel cannot blur them.
OVERLAY_UPSAMPLED_PIXELS = 320
# Colour scales of the CLS overlays: a different one per map kind, so that the colour bar
# of the pre-Θ rows cannot be mistaken for that of the post-Θ rows.
OVERLAY_SCALES = {"pre": "Inferno", "post": "Viridis"}
# Row titles and colour bar titles of Re-attention overlays in a mid colour of their scale.
OVERLAY_TITLE_COLOURS = {"pre": "#a52c60", "post": "#1f8a84"}


def _blocks(count: int) -> np.ndarray:
    """Axis values for ``count`` blocks, numbered from 1 as in the paper."""
    return np.arange(1, count + 1)


def _colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


def _maps(result: AnalysisResult, maps: str | None) -> str:
    return maps or result.settings.maps


def _finish(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "xanchor": "left"},
        height=height,
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        font={"size": 13},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
    )
    return fig


def _no_data_note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(
        text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False, font={"size": 14, "color": "#666"}
    )


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _tick_step(count: int, labels: int = 16) -> int:
    """A tick step for a block or head axis that keeps at most ``labels`` integer labels."""
    return max(1, math.ceil(count / labels))


def _square_heatmap_axes(
    fig: go.Figure, count: int, x_title: str, y_title: str, size: int, columns: int | None = None, labels: int = 16
) -> None:
    """Square cells, row 1 at the top (matrix layout), at most ``labels`` integer ticks for
    ``size`` rows. In a grid of ``columns`` panels per row, only the first column names the
    y axis and only the lowest panel of each column the x axis, so titles do not crowd."""
    columns = columns or count
    ticks = {"tick0": 1, "dtick": _tick_step(size, labels), "showgrid": False, "constrain": "domain"}
    for index in range(1, count + 1):
        suffix = "" if index == 1 else str(index)
        fig.layout[f"xaxis{suffix}"].update(title=x_title if index + columns > count else None, **ticks)
        fig.layout[f"yaxis{suffix}"].update(
            title=y_title if (index - 1) % columns == 0 else None,
            autorange="reversed",
            scaleanchor=f"x{suffix}",
            **ticks,
        )


def _similarity_scale(values: list[np.ndarray]) -> dict:
    """Cosine similarities lie in [0, 1] for non-negative maps and in [-1, 1] otherwise
    (Re-attention maps can be negative); a fixed range keeps reports comparable."""
    lowest = min((float(_finite(v).min()) for v in values if _finite(v).size), default=0.0)
    return {"colorscale": SEQUENTIAL, "cmin": 0.0 if lowest >= 0 else -1.0, "cmax": 1.0}


def _symmetric_scale(values: list[np.ndarray]) -> dict:
    largest = max((float(np.abs(_finite(v)).max()) for v in values if _finite(v).size), default=1.0)
    return {"colorscale": DIVERGING, "cmin": -(largest or 1.0), "cmax": largest or 1.0, "cmid": 0.0}


# ----------------------------------------------------------------------------- layer similarity


def layer_similarity(results: Results, maps: str | None = None) -> go.Figure:
    """Cross-layer similarity S[p, q] (paper Eqn 2) of each model side by side, on one
    colour scale; with two models of equal depth a third panel shows B - A on its own
    diverging scale. Each colour bar stands right of the panels it belongs to and says
    which they are (the similarity bar between B and B - A, the difference bar last)."""
    labels = list(results)
    matrices = [results[label].similarity(maps) for label in labels]
    with_difference = len(labels) == 2 and matrices[0].shape == matrices[1].shape
    titles = labels + ([f"{labels[1]} minus {labels[0]}"] if with_difference else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.08)
    for column, (label, matrix) in enumerate(zip(labels, matrices), start=1):
        blocks = _blocks(len(matrix))
        fig.add_trace(
            go.Heatmap(
                z=matrix,
                x=blocks,
                y=blocks,
                coloraxis="coloraxis",
                name=label,
                hovertemplate="block %{y} vs block %{x}<br>similarity %{z:.3f}<extra>" + label + "</extra>",
            ),
            row=1,
            col=column,
        )
    similarity_bar = {
        "title": {
            "text": "similarity" + (f"<br>({_short(labels[0])}, {_short(labels[1])})" if len(labels) == 2 else "")
        },
        "len": 0.8,
    }
    if with_difference:
        difference = matrices[1] - matrices[0]
        blocks = _blocks(len(difference))
        fig.add_trace(
            go.Heatmap(
                z=difference,
                x=blocks,
                y=blocks,
                coloraxis="coloraxis2",
                name="difference",
                hovertemplate="block %{y} vs block %{x}<br>difference %{z:+.3f}<extra>" + titles[-1] + "</extra>",
            ),
            row=1,
            col=len(titles),
        )
        # Panels A and B close together, then room for their colour bar before B - A,
        # whose own bar sits in the right margin.
        gap, bar_gap = 0.04, 0.15
        panel = (1.0 - gap - bar_gap) / 3
        domains = [[0.0, panel], [panel + gap, 2 * panel + gap], [1.0 - panel, 1.0]]
        for index, domain in enumerate(domains, start=1):
            fig.layout[f"xaxis{'' if index == 1 else index}"].update(domain=domain, constraintoward="right")
        similarity_bar.update(x=domains[1][1] + 0.01, xanchor="left")
        difference_title = f"difference<br>{_short(labels[1])} − {_short(labels[0])}"
        fig.update_layout(
            coloraxis2={
                **_symmetric_scale([difference]),
                "colorbar": {"title": {"text": difference_title}, "x": 1.01, "xanchor": "left", "len": 0.8},
            }
        )
    fig.update_layout(coloraxis={**_similarity_scale(matrices), "colorbar": similarity_bar})
    _square_heatmap_axes(fig, len(titles), "block q", "block p", max(len(matrix) for matrix in matrices))
    _titles_over_panels(fig)
    kind = _maps(results[labels[0]], maps)
    fig = _finish(fig, f"Cross-layer attention similarity S[p, q] ({MAP_NAMES[kind]})", HEATMAP_PANEL_PX + 140)
    return fig.update_layout(margin={"r": 110}) if with_difference else fig


def _short(label: str) -> str:
    """The letter of a report label such as ``"vit (A)"``, else the label itself."""
    found = re.search(r"\(([A-Z])\)\s*$", label)
    return found.group(1) if found else label


def _titles_over_panels(fig: go.Figure) -> None:
    """Pin make_subplots' panel titles to their axes' drawn domains, so that they stay
    centred over square panels that ``constrain="domain"`` shrinks or shifts."""
    for index, annotation in enumerate(fig.layout.annotations, start=1):
        suffix = "" if index == 1 else str(index)
        annotation.update(xref=f"x{suffix} domain", x=0.5, yref=f"y{suffix} domain", y=1.0)


# ----------------------------------------------------------------------------- similarity ratio


def similarity_ratio(results: Results, maps: str | None = None) -> go.Figure:
    """Similarity ratio per block (paper Fig. 3a) with the rho threshold; similar blocks
    (ratio above rho) are drawn as filled markers, the others as open ones."""
    fig = go.Figure()
    rhos = set()
    for index, (label, result) in enumerate(results.items()):
        ratio = result.ratio(maps)
        similar = set(result.similar_blocks(maps).indices)
        blocks = _blocks(len(ratio))
        fig.add_trace(
            go.Scatter(
                x=blocks,
                y=ratio,
                mode="lines+markers",
                name=label,
                line={"color": _colour(index)},
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
        fig.add_hline(
            y=rho,
            line={"dash": "dash", "color": "#c0392b"},
            annotation_text=f"rho = {rho:g}",
            annotation_position="top left",
        )
    kind = _maps(next(iter(results.values())), maps)
    _block_axis(fig, results)
    fig.update_yaxes(title="similarity ratio", range=[-0.03, 1.05])
    return _finish(fig, f"Similarity ratio per block ({MAP_NAMES[kind]}); filled markers: similar blocks", 420)


def _block_tick(results: Results) -> int:
    return _tick_step(max(result.geometry.num_blocks for result in results.values()))


def _block_axis(fig: go.Figure, results: Results) -> None:
    """The x axis of a curve over blocks: from block 1 (not 0), integer ticks from 1."""
    last = max(result.geometry.num_blocks for result in results.values())
    fig.update_xaxes(title="block", tick0=1, dtick=_block_tick(results), range=[0.5, last + 0.5])


# ----------------------------------------------------------------------------- heads


def cross_head_curves(results: Results, maps: str | None = None) -> go.Figure:
    """Mean cross-head similarity per block (paper Fig. 3c: below 0.3 means diverse heads)."""
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        values = result.cross_head_mean(maps)
        fig.add_trace(
            go.Scatter(
                x=_blocks(len(values)),
                y=values,
                mode="lines+markers",
                name=label,
                line={"color": _colour(index)},
                hovertemplate="block %{x}: %{y:.3f}<extra>" + label + "</extra>",
            )
        )
    kind = _maps(next(iter(results.values())), maps)
    _block_axis(fig, results)
    fig.update_yaxes(title="mean cross-head similarity")
    return _finish(fig, f"Cross-head similarity per block, mean over head pairs ({MAP_NAMES[kind]})", 400)


def cross_head_matrices(results: Results, block: int | None = None, maps: str | None = None) -> go.Figure:
    """The H x H cross-head similarity of one block (0-based; default the last) per model."""
    labels = list(results)
    chosen = {label: (results[label].geometry.num_blocks - 1 if block is None else block) for label in labels}
    matrices = [results[label].cross_head(maps)[chosen[label]] for label in labels]
    titles = [f"{label}, block {chosen[label] + 1}" for label in labels]
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=titles, horizontal_spacing=0.1)
    for column, (title, matrix) in enumerate(zip(titles, matrices), start=1):
        heads = _blocks(len(matrix))
        fig.add_trace(
            go.Heatmap(
                z=matrix,
                x=heads,
                y=heads,
                coloraxis="coloraxis",
                hovertemplate="head %{y} vs head %{x}<br>similarity %{z:.3f}<extra>" + title + "</extra>",
            ),
            row=1,
            col=column,
        )
    fig.update_layout(coloraxis={**_similarity_scale(matrices), "colorbar": {"title": "similarity"}})
    _square_heatmap_axes(fig, len(labels), "head", "head", max(len(matrix) for matrix in matrices))
    kind = _maps(results[labels[0]], maps)
    return _finish(fig, f"Cross-head similarity inside one block ({MAP_NAMES[kind]})", HEATMAP_PANEL_PX + 120)


# ----------------------------------------------------------------------------- Theta


def theta_heatmaps(result: AnalysisResult, label: str = "") -> go.Figure | None:
    """Theta (rows: input heads, columns: output heads) of every Re-attention block on one
    diverging colour scale centred at 0; None for a model without head-mixing blocks. CaiT's
    talking-heads blocks show both their matrices, before the softmax (``proj_l``) and after it
    (``proj_w``), labelled as such. Hover also shows each matrix's distance from identity and from a
    permutation."""
    infos = result.theta()
    if not infos:
        return None
    talking_heads = any(info.kind == "talking-heads" for info in infos.values())
    symbol = "W" if talking_heads else "Θ"
    panels = []  # (block, title, matrix, distances)
    for block, info in infos.items():
        if info.pre_softmax is not None:
            before = ThetaInfo(theta=info.pre_softmax, kind=info.kind)
            panels.append((block, f"block {block + 1}, before softmax", before))
        panels.append((block, f"block {block + 1}" + (", after softmax" if talking_heads else ""), info))
    columns = min(len(panels), 6)
    rows = math.ceil(len(panels) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[title for _, title, _ in panels],
        horizontal_spacing=0.04,
        vertical_spacing=0.12 / rows + 0.04,
    )
    for position, (_, title, info) in enumerate(panels):
        heads = _blocks(len(info.theta))
        distances = (
            f"distance from identity {info.distance_from_identity:.2f}, "
            f"from a permutation {info.distance_from_permutation:.2f}"
        )
        fig.add_trace(
            go.Heatmap(
                z=info.theta,
                x=heads,
                y=heads,
                coloraxis="coloraxis",
                hovertemplate=f"{title}: input head %{{y}} to output head %{{x}}<br>{symbol} = %{{z:.3f}}"
                f"<br>{distances}<extra></extra>",
            ),
            row=position // columns + 1,
            col=position % columns + 1,
        )
    fig.update_layout(
        coloraxis={**_symmetric_scale([info.theta for _, _, info in panels]), "colorbar": {"title": symbol}}
    )
    _square_heatmap_axes(fig, len(panels), "output head", "input head", result.geometry.num_heads, columns, labels=6)
    prefix = f"{label}: " if label else ""
    what = "Talking-heads matrices W (CaiT)" if talking_heads else "Re-attention matrices Θ"
    fig = _finish(fig, f"{prefix}{what} per block (rows: input heads, columns: output heads)", 150 + 210 * rows)
    # A fixed width keeps the small panels square without empty bands between the rows
    # (at least wide enough for the title when there are only a few blocks).
    return fig.update_layout(width=max(760, 160 + 170 * columns))


def norm_gains(results: Mapping[str, AnalysisResult]) -> go.Figure | None:
    """The Norm's affine weight per output head (rows) of every Re-attention block (columns),
    one panel per model with such blocks, one diverging scale around 1; None when no model has one."""
    panels = {}
    for label, result in results.items():
        gains = {block: info.norm_weight for block, info in result.theta().items() if info.norm_weight is not None}
        if gains:
            panels[label] = gains
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=list(panels), vertical_spacing=0.25 / len(panels))
    # Centred at 1, a gain that leaves its head unchanged, so that trained gains near 1 still show.
    spread = max(float(np.abs(gain - 1).max()) for gains in panels.values() for gain in gains.values()) or 1.0
    for row, (label, gains) in enumerate(panels.items(), start=1):
        matrix = np.stack(list(gains.values()), axis=1)  # (heads, blocks)
        fig.add_trace(
            go.Heatmap(
                z=matrix,
                x=[str(block + 1) for block in gains],
                y=np.arange(1, matrix.shape[0] + 1),
                coloraxis="coloraxis",
                hovertemplate="block %{x}, output head %{y}<br>Norm weight %{z:.3f}<extra>" + label + "</extra>",
            ),
            row=row,
            col=1,
        )
        fig.update_xaxes(title="Re-attention block", type="category", row=row, col=1)
        fig.update_yaxes(title="output head", dtick=1, autorange="reversed", row=row, col=1)
    heads = max(len(gain) for gains in panels.values() for gain in gains.values())
    fig.update_layout(
        template=TEMPLATE,
        font={"size": 13},
        title={"text": "Norm weight: the per-head gain applied after Θ", "x": 0.01},
        coloraxis={
            "colorscale": DIVERGING,
            "cmin": 1 - spread,
            "cmax": 1 + spread,
            "cmid": 1.0,
            "colorbar": {"title": "weight"},
        },
        height=110 + len(panels) * (90 + 26 * heads),
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
    )
    return fig


def theta_distances(results: Mapping[str, AnalysisResult]) -> go.Figure | None:
    """Distance of each block's Θ from identity (solid) and from the nearest signed
    permutation (dashed); None when no model has Re-attention blocks."""
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        infos = result.theta()
        if not infos:
            continue
        blocks = [block + 1 for block in infos]
        colour = _colour(index)
        for name, dash, values in (
            ("from identity", "solid", [info.distance_from_identity for info in infos.values()]),
            ("from a permutation", "dash", [info.distance_from_permutation for info in infos.values()]),
        ):
            fig.add_trace(
                go.Scatter(
                    x=blocks,
                    y=values,
                    mode="lines+markers",
                    name=f"{label}, {name}",
                    line={"color": colour, "dash": dash},
                    hovertemplate=f"block %{{x}}: distance {name} %{{y:.3f}}<extra>{label}</extra>",
                )
            )
    if not fig.data:
        return None
    last_block = max(max(trace.x) for trace in fig.data)
    fig.update_xaxes(title="block", tick0=1, dtick=max(1, math.ceil(last_block / 16)))
    fig.update_yaxes(title="distance (0 = no mixing)", rangemode="tozero")
    fig.update_layout(
        template=TEMPLATE,
        font={"size": 13},
        height=380,
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        title={"text": "How far Θ is from passing heads through unchanged", "x": 0.01},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
    )
    return fig


# ----------------------------------------------------------------------------- per-block curves


def head_curves(results: Results, array: str, y_title: str, title: str) -> go.Figure:
    """A per-block, per-head array (L, H) of each model: the mean over heads as a line, every
    head as a faint dot (the ViT paper's Fig. 7 style)."""
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        values = result.arrays[array]
        blocks = _blocks(len(values))
        heads = values.shape[1]
        fig.add_trace(
            go.Scatter(
                x=np.repeat(blocks, heads),
                y=values.reshape(-1),
                mode="markers",
                name=f"{label}, each head",
                marker={"color": _colour(index), "size": 5, "opacity": 0.35},
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
                line={"color": _colour(index), "width": 2.5},
                hovertemplate="block %{x}: mean %{y:.3f}<extra>" + label + "</extra>",
            )
        )
    _block_axis(fig, results)
    fig.update_yaxes(title=y_title)
    return _finish(fig, title, 420)


def entropy_curves(results: Results) -> go.Figure:
    """Attention entropy per block and head (softmax maps), with ln T, the entropy of
    uniform attention over T tokens, as the upper reference line."""
    fig = head_curves(results, "entropy", "entropy (nats)", "Attention entropy per block (softmax maps)")
    for num_tokens in sorted({result.geometry.num_tokens for result in results.values()}):
        fig.add_hline(
            y=math.log(num_tokens),
            line={"dash": "dot", "color": "#777"},
            annotation_text=f"uniform attention over {num_tokens} tokens (ln T)",
            annotation_position="bottom right",
        )
    return fig


def block_curves(results: Results, array: str, y_title: str, title: str) -> go.Figure:
    """A per-block array (L,) of each model as one line."""
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        values = result.arrays[array]
        fig.add_trace(
            go.Scatter(
                x=_blocks(len(values)),
                y=values,
                mode="lines+markers",
                name=label,
                line={"color": _colour(index)},
                hovertemplate="block %{x}: %{y:.3f}<extra>" + label + "</extra>",
            )
        )
    _block_axis(fig, results)
    fig.update_yaxes(title=y_title)
    return _finish(fig, title, 380)


# ----------------------------------------------------------------------------- CKA


def _cka_panel(fig: go.Figure, matrix: np.ndarray, column: int, hover: str) -> None:
    fig.add_trace(
        go.Heatmap(
            z=matrix,
            x=_blocks(matrix.shape[1]),
            y=_blocks(matrix.shape[0]),
            coloraxis="coloraxis",
            hovertemplate=hover + "<br>CKA %{z:.3f}<extra></extra>",
        ),
        row=1,
        col=column,
    )


def _cka_note(fig: go.Figure, matrices: list[np.ndarray]) -> None:
    if not any(_finite(matrix).size for matrix in matrices):
        _no_data_note(fig, "CKA is undefined with fewer than 4 images (unbiased HSIC estimator)")


def cka_within(results: Results) -> go.Figure:
    """Linear CKA between the block outputs of each model (L x L), on one colour scale."""
    labels = list(results)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.1)
    matrices = [results[label].cka() for label in labels]
    for column, (label, matrix) in enumerate(zip(labels, matrices), start=1):
        _cka_panel(fig, matrix, column, f"{label}: block %{{y}} vs block %{{x}}")
    fig.update_layout(coloraxis={"colorscale": SEQUENTIAL, "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": "CKA"}})
    _square_heatmap_axes(fig, len(labels), "block", "block", max(len(matrix) for matrix in matrices))
    _cka_note(fig, matrices)
    return _finish(fig, "Linear CKA between block outputs within each model", HEATMAP_PANEL_PX + 120)


def cka_across(comparison: ComparisonResult, label_a: str, label_b: str) -> go.Figure:
    """Linear CKA between block i of A (rows) and block j of B (columns)."""
    fig = make_subplots(rows=1, cols=1)
    matrix = comparison.cka_ab
    _cka_panel(fig, matrix, 1, f"{label_a} block %{{y}} vs {label_b} block %{{x}}")
    fig.update_layout(coloraxis={"colorscale": SEQUENTIAL, "cmin": 0.0, "cmax": 1.0, "colorbar": {"title": "CKA"}})
    _square_heatmap_axes(fig, 1, f"block of {label_b}", f"block of {label_a}", max(matrix.shape))
    _cka_note(fig, [matrix])
    fig = _finish(fig, "Linear CKA between the block outputs of the two models", HEATMAP_PANEL_PX + 160)
    # One square panel: a fixed width keeps the colour bar next to it instead of at the page edge.
    return fig.update_layout(width=HEATMAP_PANEL_PX + 360)


# ----------------------------------------------------------------------------- CLS attention overlays


def _image_source(pixels: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a small data URI (it is repeated once per head panel).

    An image that fits ``OVERLAY_MAX_PIXELS`` (24 px digits, 32 px CIFAR) becomes a PNG
    with every pixel repeated up to ``OVERLAY_UPSAMPLED_PIXELS``: the browser smooths an
    image it stretches, which would blur a few large pixels. A larger photo is downscaled
    to a JPEG thumbnail instead (the attention grid is much coarser than the image)."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if max(image.size) <= OVERLAY_MAX_PIXELS:
        scale = math.ceil(OVERLAY_UPSAMPLED_PIXELS / max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        image.save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    image.thumbnail((OVERLAY_MAX_PIXELS, OVERLAY_MAX_PIXELS))
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def default_overlay_blocks(num_blocks: int) -> list[int]:
    """First, middle and last block (0-based, distinct)."""
    return sorted({0, num_blocks // 2, num_blocks - 1})


def _domains(count: int, gap: float) -> list[list[float]]:
    """``count`` equal intervals of [0, 1] separated by ``gap``, in order."""
    size = (1 - gap * (count - 1)) / count
    return [[index * (size + gap), index * (size + gap) + size] for index in range(count)]


def cls_attention(
    result: AnalysisResult, example: int = 0, blocks: Sequence[int] | None = None, label: str = ""
) -> go.Figure:
    """The CLS token's attention to every patch, per head, drawn over example image
    ``example``, for ``blocks`` (0-based; default first, middle and last).

    Re-attention blocks get two rows, the softmax maps (pre-Θ) and the maps that
    multiply V (post-Θ); other blocks one row (there pre and post are the same). Each
    map kind has its own colour axis (``coloraxis`` pre-Θ, ``coloraxis2`` post-Θ), shared
    by all its panels, in its own colours (``OVERLAY_SCALES``); the row titles and the
    colour bar titles name the kind, so the bar of each row is unambiguous.
    """
    images = result.arrays["example_images"]
    if not 0 <= example < len(images):
        raise IndexError(f"example {example} out of range: the result keeps {len(images)} example images")
    blocks = default_overlay_blocks(result.geometry.num_blocks) if blocks is None else list(blocks)
    reattention = set(result.geometry.reattention_blocks)
    rows = [(block, kind) for block in blocks for kind in (("pre", "post") if block in reattention else ("pre",))]
    has_post = any(kind == "post" for _, kind in rows)
    num_heads = result.geometry.num_heads
    height, width = images.shape[1:3]
    grid_h, grid_w = result.geometry.grid_size
    source = _image_source(images[example])
    patch_numbers = np.stack(np.meshgrid(np.arange(1, grid_w + 1), np.arange(1, grid_h + 1)), axis=-1)

    # Axes are laid out by hand: make_subplots validates every one of the rows x heads
    # panels property by property, which takes seconds for a 12-head model.
    x_domains, y_domains = _domains(num_heads, 0.012), _domains(len(rows), 0.03)[::-1]
    data, images_layout, layout = [], [], {}
    for row, (block, kind) in enumerate(rows):
        weights = result.arrays[f"example_cls_{kind}"][example, block]
        row_name = f"block {block + 1}" + (
            {"pre": "<br>pre-Θ", "post": "<br>post-Θ"}[kind] if block in reattention else ""
        )
        row_colour = OVERLAY_TITLE_COLOURS[kind] if reattention else None
        for head in range(num_heads):
            axis = row * num_heads + head + 1
            suffix = "" if axis == 1 else str(axis)
            data.append(
                {
                    "type": "heatmap",
                    "z": weights[head],
                    "xaxis": f"x{suffix}",
                    "yaxis": f"y{suffix}",
                    "x0": width / grid_w / 2,
                    "dx": width / grid_w,
                    "y0": height / grid_h / 2,
                    "dy": height / grid_h,
                    "coloraxis": "coloraxis2" if kind == "post" else "coloraxis",
                    "opacity": 0.6,
                    "customdata": patch_numbers,
                    "hovertemplate": (
                        f"block {block + 1} ({kind}), head {head + 1}<br>patch row %{{customdata[1]}}, "
                        "column %{customdata[0]}<br>CLS weight %{z:.4f}<extra></extra>"
                    ),
                }
            )
            images_layout.append(
                {
                    "source": source,
                    "xref": f"x{suffix}",
                    "yref": f"y{suffix}",
                    "x": 0,
                    "y": 0,
                    "sizex": width,
                    "sizey": height,
                    "sizing": "stretch",
                    "layer": "below",
                }
            )
            layout[f"xaxis{suffix}"] = {
                "domain": x_domains[head],
                "anchor": f"y{suffix}",
                "range": [0, width],
                "showticklabels": False,
                "showgrid": False,
                "zeroline": False,
            }
            layout[f"yaxis{suffix}"] = {
                "domain": y_domains[row],
                "anchor": f"x{suffix}",
                "range": [height, 0],
                "scaleanchor": f"x{suffix}",
                "showticklabels": False,
                "showgrid": False,
                "zeroline": False,
                "title": {"text": row_name if head == 0 else None, "font": {"size": 12, "color": row_colour}},
            }
    # Rows alternate pre and post, so the bars do not stack (top half next to which row?):
    # both span the full height side by side, titled by the rows they belong to.
    bar = {"len": 0.9, "y": 0.5, "thickness": 18, "xanchor": "left", "x": 1.02}
    pre_title = {"text": "softmax<br>weight"}
    if has_post:
        pre_title = {"text": "pre-Θ rows:<br>softmax<br>weight", "font": {"color": OVERLAY_TITLE_COLOURS["pre"]}}
    layout["coloraxis"] = {"colorscale": OVERLAY_SCALES["pre"], "colorbar": {**bar, "title": pre_title}}
    if has_post:
        layout["coloraxis2"] = {
            "colorscale": OVERLAY_SCALES["post"],
            "colorbar": {
                **bar,
                "title": {
                    "text": "post-Θ rows:<br>weight<br>after Θ",
                    "font": {"color": OVERLAY_TITLE_COLOURS["post"]},
                },
            },
        }
    layout["images"] = images_layout
    layout["annotations"] = [
        {
            "text": f"head {head + 1}",
            "xref": "paper",
            "yref": "paper",
            "x": sum(x_domains[head]) / 2,
            "y": 1.0,
            "xanchor": "center",
            "yanchor": "bottom",
            "showarrow": False,
        }
        for head in range(num_heads)
    ]
    # Square panels as large as fit a ~1180 px wide page (the report's figure width).
    right = 220 if has_post else 120  # room for one or two colour bars side by side
    panel = max(60, min(160, (1100 - right) // num_heads))
    prefix = f"{label}: " if label else ""
    fig = _finish(
        go.Figure(data=data, layout=layout),
        f"{prefix}attention of the CLS token to each patch, example image {example + 1}",
        120 + panel * len(rows),
    )
    fig.update_layout(width=80 + right + panel * num_heads, margin={"l": 80, "r": right, "t": 100, "b": 20})
    if has_post:  # the post-Θ bar right of the pre-Θ one, in pixels of the panels' width
        fig.layout.coloraxis2.colorbar.x = 1.02 + 100 / (panel * num_heads)
    return fig


# ----------------------------------------------------------------------------- the catalogue's figures


@dataclass
class DrawnFigure:
    """A figure of the catalogue drawn for some results, with its caption and element id."""

    element_id: str
    caption: str
    figure: go.Figure


def draw(
    spec: catalogue.Figure,
    results: Results,
    comparison: ComparisonResult | None = None,
    *,
    examples: Sequence[int] | None = None,
    **options: object,
) -> list[DrawnFigure]:
    """The figures of catalogue entry ``spec`` for ``results`` (label -> result), with their
    captions filled in: one figure, one per model, one per model and example image
    (``examples``, 0-based; default all kept), or one for ``comparison`` (none without it),
    as ``spec.scope`` says. Figures a model cannot have (Theta of a plain ViT) are left out.
    ``options`` go to the figure function (e.g. ``block`` of ``cross_head_matrices``). The figures
    get the labels as Plotly text (``escaping.plotly_label``), the captions as they are."""
    function = globals()[spec.name]
    shown = {label: plotly_label(label) for label in results}
    drawn_results = {shown[label]: result for label, result in results.items()}
    options = {**spec.arguments, **options}
    first = next(iter(results.values()))
    fields = {"rho": first.settings.rho, "k": first.settings.k, "tau": first.settings.tau}
    base_id = spec.element_id
    drawn = []
    if spec.scope == "models":
        drawn.append((base_id, function(drawn_results, **options), fields))
    elif spec.scope == "model":
        for index, (label, result) in enumerate(results.items()):
            figure = function(result, label=shown[label], **options)
            drawn.append((f"{base_id}-{index}", figure, {**fields, "label": label}))
    elif spec.scope == "example":
        for index, (label, result) in enumerate(results.items()):
            chosen = range(len(result.arrays["example_images"])) if examples is None else examples
            for example in chosen:
                figure = function(result, example, label=shown[label], **options)
                values = {**fields, "label": label, "example": example + 1}
                drawn.append((f"{base_id}-{index}-{example}", figure, values))
    elif comparison is not None:
        label_a, label_b = list(results)
        figure = function(comparison, shown[label_a], shown[label_b], **options)
        drawn.append((base_id, figure, {**fields, "label_a": label_a, "label_b": label_b}))
    return [
        DrawnFigure(element, spec.caption.format(**values), fig) for element, fig, values in drawn if fig is not None
    ]


# ----------------------------------------------------------------------------- sweeps

# The checkpoints of a sweep's group share a hue, from light (first along x) to dark.
GROUP_SCALES = ("Blues", "Oranges", "Greens", "Purples")


def _sweep_axis(fig: go.Figure, sweep: SweepResult) -> None:
    """The x axis of a sweep trend: depth, epoch, step or place, whole numbers."""
    values = [sweep.x(entry) for entry in sweep.entries]
    fig.update_xaxes(title=sweep.x_title, tick0=min(values), dtick=_tick_step(max(values) - min(values) + 1, 12))


def _sweep_trend(
    sweep: SweepResult, value: str, y_title: str, title: str, number: str = "%{y}", dash: str = "solid", name: str = ""
) -> go.Figure:
    """One line per group of the summary entry ``value`` along the sweep's x axis; entries
    without a value (None) leave a gap."""
    fig = go.Figure()
    for index, (group, entries) in enumerate(sweep.groups().items()):
        fig.add_trace(
            go.Scatter(
                x=[sweep.x(entry) for entry in entries],
                y=[entry.summary[value] for entry in entries],
                mode="lines+markers",
                name=f"{group}{name}",
                line={"color": _colour(index), "dash": dash},
                marker={"size": 9},
                customdata=[entry.label for entry in entries],
                hovertemplate=f"%{{customdata}}<br>{sweep.x_title} %{{x}}: {number}<extra>{group}</extra>",
            )
        )
    _sweep_axis(fig, sweep)
    fig.update_yaxes(title=y_title, rangemode="tozero")
    return _finish(fig, title, 420)


def _block_count_axis(fig: go.Figure, sweep: SweepResult) -> None:
    """A y axis of block counts or numbers: whole numbers from 0 to the deepest model's blocks."""
    deepest = max(entry.num_blocks for entry in sweep.entries)
    fig.update_yaxes(tick0=0, dtick=_tick_step(deepest + 1, 10), range=[-0.3, deepest + 0.5])


def _mark_collapse(fig: go.Figure, sweep: SweepResult) -> None:
    """In a training series, a dotted line where collapse first appears in each group."""
    if not sweep.is_series:
        return
    for group in sweep.groups():
        entry = sweep.collapse_appears(group)
        if entry is not None:
            fig.add_vline(
                x=sweep.x(entry),
                line={"dash": "dot", "color": "#c0392b"},
                annotation_text=f"collapse appears ({sweep.x_title} {sweep.x(entry)})",
                annotation_position="top left",
            )


def sweep_similar_blocks(sweep: SweepResult) -> go.Figure:
    """Similar blocks (similarity ratio above rho) along depth or training, one line per
    group: the paper's table (5, 11 and 15 for ViT-16/24/32B against 0 for DeepViT)."""
    fig = _sweep_trend(
        sweep,
        "similar_blocks",
        "similar blocks",
        f"Similar blocks (similarity ratio > {sweep.settings.rho:g}) by {sweep.x_title}",
        number="%{y} similar blocks",
    )
    _block_count_axis(fig, sweep)
    _mark_collapse(fig, sweep)
    return fig


def sweep_collapse_start(sweep: SweepResult) -> go.Figure:
    """The block where the collapsed run at the end of the network starts (numbered from 1);
    a gap where there is none."""
    fig = go.Figure()
    for index, (group, entries) in enumerate(sweep.groups().items()):
        starts = [entry.summary["collapse_start"] for entry in entries]
        fig.add_trace(
            go.Scatter(
                x=[sweep.x(entry) for entry in entries],
                y=[None if start is None else start + 1 for start in starts],
                mode="lines+markers",
                name=group,
                line={"color": _colour(index)},
                marker={"size": 9},
                customdata=[[entry.label, entry.num_blocks] for entry in entries],
                hovertemplate=f"%{{customdata[0]}}<br>{sweep.x_title} %{{x}}: collapse from block %{{y}} of "
                f"%{{customdata[1]}}<extra>{group}</extra>",
            )
        )
    _sweep_axis(fig, sweep)
    fig.update_yaxes(title="collapse starts at block")
    _block_count_axis(fig, sweep)
    if all(entry.summary["collapse_start"] is None for entry in sweep.entries):
        _no_data_note(fig, "no checkpoint has a collapsed run of similar blocks at the end of the network")
    _mark_collapse(fig, sweep)
    return _finish(fig, f"Where the collapsed run starts, by {sweep.x_title} (gaps: no collapse)", 420)


def sweep_accuracy(sweep: SweepResult) -> go.Figure:
    """Top-1 (solid) and top-5 (dashed) accuracy in percent, one colour per group; a note
    says why where the images carry no labels."""
    fig = go.Figure()
    for k, dash in ((1, "solid"), (5, "dash")):
        trend = _sweep_trend(sweep, f"accuracy_top{k}", "", "", number="%{y:.1%}", dash=dash, name=f", top-{k}")
        fig.add_traces(trend.data)
    _sweep_axis(fig, sweep)
    fig.update_yaxes(title="accuracy", tickformat=".0%", range=[0, 1.02])
    if not any(entry.summary["accuracy_top1"] is not None for entry in sweep.entries):
        reason = html.escape(sweep.entries[0].summary["accuracy_labels"])
        _no_data_note(fig, "<br>".join(textwrap.wrap(f"no accuracy: {reason}", 80)))
    return _finish(fig, f"Top-1 (solid) and top-5 (dashed) accuracy by {sweep.x_title}", 420)


def _shades(group: int, count: int) -> list[str]:
    """``count`` colours of the group's scale, light to dark."""
    scale = GROUP_SCALES[group % len(GROUP_SCALES)]
    return sample_colorscale(scale, list(np.linspace(0.4, 1.0, count)) if count > 1 else [0.8])


def _sweep_block_curves(
    sweep: SweepResult, curve: str, y_title: str, title: str, relative_depth: bool, first_block: int = 1
) -> go.Figure:
    """Curve ``curve`` of every checkpoint over its blocks (value i at block ``first_block + i``,
    numbered from 1), or over relative depth (block / number of blocks), one hue per group."""
    fig = go.Figure()
    for group_index, (group, entries) in enumerate(sweep.groups().items()):
        for entry, colour in zip(entries, _shades(group_index, len(entries))):
            values = entry.curves[curve]
            blocks = np.arange(first_block, first_block + len(values))
            fig.add_trace(
                go.Scatter(
                    x=blocks / entry.num_blocks if relative_depth else blocks,
                    y=values,
                    mode="lines+markers",
                    name=_entry_name(sweep, entry),
                    legendgroup=group,
                    legendgrouptitle_text=group,
                    line={"color": colour},
                    marker={"size": 6},
                    customdata=blocks,
                    hovertemplate=f"block %{{customdata}} of {entry.num_blocks}: %{{y:.3f}}"
                    f"<extra>{entry.label}</extra>",
                )
            )
    if relative_depth:
        fig.update_xaxes(title="relative depth (block / number of blocks)", range=[0, 1.02])
    else:
        last = max(entry.num_blocks for entry in sweep.entries)
        fig.update_xaxes(title="block", tick0=1, dtick=_tick_step(last), range=[0.5, last + 0.5])
    fig.update_yaxes(title=y_title)
    fig = _finish(fig, title, 460)
    # Many checkpoints: the legend goes to the right, grouped, rather than above the plot.
    return fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})


def _entry_name(sweep: SweepResult, entry: SweepEntry) -> str:
    """A checkpoint's legend entry: its label, with its epoch or step in a series."""
    return f"{entry.label} ({sweep.x_title} {sweep.x(entry)})" if sweep.x_axis in ("epoch", "step") else entry.label


def sweep_ratio_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """The similarity ratio per block (paper Fig. 3a) of every checkpoint, with rho."""
    fig = _sweep_block_curves(
        sweep,
        "ratio",
        "similarity ratio",
        f"Similarity ratio per block of every checkpoint ({MAP_NAMES[sweep.settings.maps]})",
        relative_depth,
    )
    fig.add_hline(
        y=sweep.settings.rho,
        line={"dash": "dash", "color": "#c0392b"},
        annotation_text=f"rho = {sweep.settings.rho:g}",
        annotation_position="top left",
    )
    return fig.update_yaxes(range=[-0.03, 1.05])


def sweep_adjacent_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """The similarity S[l - 1, l] of each block's attention maps with the previous block's
    (paper Fig. 1's per-block curves), drawn at block l, for every checkpoint."""
    return _sweep_block_curves(
        sweep,
        "adjacent_similarity",
        "similarity with the previous block",
        f"Adjacent-block attention similarity of every checkpoint ({MAP_NAMES[sweep.settings.maps]})",
        relative_depth,
        first_block=2,
    )


def sweep_entropy_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """Attention entropy per block (softmax maps, mean over heads) of every checkpoint."""
    return _sweep_block_curves(
        sweep,
        "entropy",
        "entropy (nats)",
        "Attention entropy per block of every checkpoint (softmax maps, mean over heads)",
        relative_depth,
    )


@dataclass(frozen=True)
class SweepFigure:
    """A figure of sweep.html and the app's Sweep view: its function and its caption
    (a ``str.format`` template with ``rho``, ``k``, ``tau`` and ``x`` (the x axis' title))."""

    name: str
    caption: str

    @property
    def element_id(self) -> str:
        return "fig-" + self.name.replace("_", "-")


SWEEP_FIGURES = (
    SweepFigure(
        "sweep_similar_blocks",
        "Blocks whose similarity ratio exceeds rho = {rho:g}, by {x}, one line per group. The paper finds 5, 11 and "
        "15 similar blocks in ViTs of 16, 24 and 32 blocks and none in DeepViTs. In a training series, the dotted "
        "line marks the first checkpoint with a collapsed run at the end of the network.",
    ),
    SweepFigure(
        "sweep_collapse_start",
        "The first block of the run of similar blocks that reaches the last block (blocks numbered from 1), by {x}; "
        "a gap means no collapsed run.",
    ),
    SweepFigure(
        "sweep_accuracy",
        "Top-1 and top-5 accuracy on the analysed images, from the same forward passes, by {x}; none where the "
        "images carry no labels.",
    ),
    SweepFigure(
        "sweep_ratio_curves",
        "The similarity ratio of every block (k = {k}, tau = {tau:g}) of every checkpoint, checkpoints of one group "
        "in one hue from light to dark along {x}; blocks above the dashed line count as similar.",
    ),
    SweepFigure(
        "sweep_adjacent_curves",
        "Cosine similarity of each block's attention maps with the previous block's (drawn at the later block), "
        "for every checkpoint: near 1 means the block attends as the one before it.",
    ),
    SweepFigure(
        "sweep_entropy_curves",
        "Entropy of the softmax attention of every block, averaged over heads, queries and images, for every "
        "checkpoint: low values mean sharp attention.",
    ),
)
# The figures that draw blocks on their x axis, and so can use relative depth instead.
BLOCK_CURVES = ("sweep_ratio_curves", "sweep_adjacent_curves", "sweep_entropy_curves")


def draw_sweep(sweep: SweepResult, *, relative_depth: bool = False) -> list[DrawnFigure]:
    """Every figure of a sweep, with its caption and element id, in page order; labels and groups
    as Plotly text (``escaping.plotly_label``)."""
    settings = sweep.settings
    sweep = dataclasses.replace(
        sweep,
        entries=[
            dataclasses.replace(entry, label=plotly_label(entry.label), group=plotly_label(entry.group))
            for entry in sweep.entries
        ],
    )
    fields = {"rho": settings.rho, "k": settings.k, "tau": settings.tau, "x": sweep.x_title}
    drawn = []
    for spec in SWEEP_FIGURES:
        options = {"relative_depth": relative_depth} if spec.name in BLOCK_CURVES else {}
        figure = globals()[spec.name](sweep, **options)
        drawn.append(DrawnFigure(spec.element_id, spec.caption.format(**fields), figure))
    return drawn
