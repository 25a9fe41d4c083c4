"""Figures of the head-mixing matrices (Re-attention's Θ, CaiT's talking heads), their
Norm gains and their distances from not mixing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..metrics import HeadMixing
from .registry import figure
from .style import (
    colour_bars_margin,
    colour_bars_right,
    count_axis,
    finish,
    heatmap_panel,
    labelled,
    model_colour,
    sparse_ticks,
    square_heatmap_axes,
    symmetric_scale,
)

# Theta panels: side and columns of the grid, so that the figure fits a ~750 px wide column.
THETA_PANEL_PX = 120
THETA_COLUMNS = 4
THETA_MIN_WIDTH_PX = 480

if TYPE_CHECKING:
    from ..results import AnalysisResult

# ----------------------------------------------------------------------------- Theta


@figure
def theta_heatmaps(result: AnalysisResult, label: str = "") -> go.Figure | None:
    """Theta (rows: input heads, columns: output heads) of every Re-attention block on one
    diverging colour scale centred at 0; None for a model without head-mixing blocks. CaiT's
    talking-heads blocks show both their matrices, before the softmax (``proj_l``) and after it
    (``proj_w``), labelled as such. Hover also shows each matrix's distance from identity and from a
    permutation."""
    infos = result.head_mixing()
    if not infos:
        return None
    talking_heads = any(info.kind == "talking-heads" for info in infos.values())
    symbol = "W" if talking_heads else "Θ"
    panels = []  # (block, title, matrix, distances)
    for block, info in infos.items():
        if info.pre_softmax is not None:
            before = HeadMixing(kind=info.kind, matrix=info.pre_softmax)
            panels.append((block, f"block {block + 1}, before softmax", before))
        panels.append((block, f"block {block + 1}" + (", after softmax" if talking_heads else ""), info))
    columns = min(len(panels), THETA_COLUMNS)
    rows = math.ceil(len(panels) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[title for _, title, _ in panels],
        horizontal_spacing=0.04,
        vertical_spacing=0.12 / rows + 0.04,
    )
    for position, (_, title, info) in enumerate(panels):
        distances = (
            f"distance from identity {info.distance_from_identity:.2f}, "
            f"from a permutation {info.distance_from_permutation:.2f}"
        )
        hover = (
            f"{title}: input head %{{y}} to output head %{{x}}<br>{symbol} = %{{z:.3f}}<br>{distances}<extra></extra>"
        )
        heatmap_panel(fig, info.matrix, hover, row=position // columns + 1, col=position % columns + 1)
    fig.update_layout(
        coloraxis={**symmetric_scale([info.matrix for _, _, info in panels]), "colorbar": {"title": symbol}}
    )
    colour_bars_right(fig, ["coloraxis"])
    square_heatmap_axes(fig, len(panels), "output head", "input head", result.geometry.num_heads, columns)
    prefix = f"{label}: " if label else ""
    what = "Talking-heads matrices W (CaiT)" if talking_heads else "Re-attention matrices Θ"
    title = f"{prefix}{what} per block (rows: input heads, columns: output heads)"
    # A fixed width keeps the small panels square without empty bands between the rows, and
    # the figure inside a ~750 px column (at least wide enough for a title of three lines).
    width = max(THETA_MIN_WIDTH_PX, 70 + colour_bars_margin(1) + (THETA_PANEL_PX + 16) * columns)
    return finish(fig, title, 130 + (THETA_PANEL_PX + 60) * rows, width)


@figure
def norm_gains(results: Mapping[str, AnalysisResult]) -> go.Figure | None:
    """The Norm's affine weight per output head (rows) of every Re-attention block (columns),
    one panel per model with such blocks, drawn as the change ``weight - 1`` on the signed
    scale (white: a gain of 1, the head unchanged); None when no model has one."""
    results = labelled(results)
    panels = {}
    for label, result in results.items():
        gains = {
            block: info.norm_weight for block, info in result.head_mixing().items() if info.norm_weight is not None
        }
        if gains:
            panels[label] = gains
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=list(panels), vertical_spacing=0.25 / len(panels))
    # Minus 1, a gain that leaves its head unchanged, so that trained gains near 1 still show.
    changes = []
    for row, (label, gains) in enumerate(panels.items(), start=1):
        matrix = np.stack(list(gains.values()), axis=1) - 1.0  # (heads, blocks)
        changes.append(matrix)
        hover = "block %{x}, output head %{y}<br>Norm weight − 1: %{z:+.3f}<extra>" + label + "</extra>"
        blocks = [block + 1 for block in gains]
        heatmap_panel(fig, matrix, hover, row=row, col=1, x=[str(block) for block in blocks])
        ticks = [str(block) for block in sparse_ticks(blocks)]
        fig.update_xaxes(title="Re-attention block", type="category", tickmode="array", tickvals=ticks, row=row, col=1)
        fig.update_yaxes(title="output head", autorange="reversed", row=row, col=1, **count_axis(len(matrix)))
    heads = max(len(gain) for gains in panels.values() for gain in gains.values())
    fig.update_layout(coloraxis={**symmetric_scale(changes), "colorbar": {"title": {"text": "Norm<br>weight − 1"}}})
    colour_bars_right(fig, ["coloraxis"])
    return finish(fig, "Norm weight: the per-head gain applied after Θ", 110 + len(panels) * (90 + 26 * heads))


@figure
def theta_distances(results: Mapping[str, AnalysisResult]) -> go.Figure | None:
    """Distance of each block's Θ from identity (solid) and from the nearest signed
    permutation (dashed); None when no model has Re-attention blocks."""
    results = labelled(results)
    fig = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        infos = result.head_mixing()
        if not infos:
            continue
        blocks = [block + 1 for block in infos]
        colour = model_colour(index)
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
    fig.update_xaxes(title="block", range=[0.5, last_block + 0.5], **count_axis(last_block))
    fig.update_yaxes(title="distance (0 = no mixing)", rangemode="tozero")
    return finish(fig, "How far Θ is from passing heads through unchanged", 380)
