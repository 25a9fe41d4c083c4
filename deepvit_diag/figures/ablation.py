"""Figures of an ablation (``AblationResult``): what removing each block costs next to its
similarity ratio, head importance next to head similarity, and the cumulative pruning curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import figure
from .style import block_numbers, colour_bars_right, colour_scale, count_axis, finish, model_colour

if TYPE_CHECKING:
    from ..ablation_result import AblationResult

FAMILY_NAMES = {
    "block": "block removed",
    "attention": "attention branch removed",
    "transplant": "previous block's maps",
    "reattention": "Re-attention off (Θ = I, no Norm)",
}
# The orderings of ``ablation_result.ORDERINGS``, in the same order.
ORDERING_NAMES = {
    "measured": "by measured single-block cost",
    "similarity": "by similarity ratio (highest first)",
    "influence": "by Block Influence (lowest first)",
}


@figure
def ablation_effect(result: AblationResult) -> go.Figure:
    """Per block: the KL each ablation of the block costs (left axis, log scale) and the
    similarity ratio and Block Influence (right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    blocks = block_numbers(result.geometry.num_blocks)
    for index, (family, name) in enumerate(FAMILY_NAMES.items()):
        if not result.has(family):
            continue
        fig.add_trace(
            go.Scatter(
                x=blocks,
                y=result.values(family, "kl"),
                mode="lines+markers",
                name=f"KL: {name}",
                line={"color": model_colour(index)},
                hovertemplate="block %{x}: KL %{y:.3g}<extra>" + name + "</extra>",
            ),
            secondary_y=False,
        )
    for values, name, dash in (
        (result.arrays["ratio"], "similarity ratio", "dash"),
        (result.arrays["block_influence"], "Block Influence", "dot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=blocks,
                y=values,
                mode="lines",
                name=name,
                line={"color": "#555", "dash": dash},
                hovertemplate="block %{x}: %{y:.3f}<extra>" + name + "</extra>",
            ),
            secondary_y=True,
        )
    fig.add_hline(y=result.settings.rho, line={"color": "#999", "width": 1}, secondary_y=True)
    fig.update_xaxes(title="block", range=[0.5, len(blocks) + 0.5], **count_axis(len(blocks)))
    fig.update_yaxes(title="KL(intact || ablated)", type="log", secondary_y=False)
    fig.update_yaxes(title="similarity ratio, Block Influence", secondary_y=True, rangemode="tozero")
    return finish(fig, "What removing each block costs, next to how similar it is", 460)


@figure
def head_importance(result: AblationResult) -> go.Figure | None:
    """Two heatmaps (blocks x heads): the KL of each head's ablation, and the head's mean
    similarity to the other heads of its block; None without the head study."""
    if not result.has("head"):
        return None
    importance, redundancy = result.values("head", "kl"), result.head_redundancy()
    heads = np.arange(1, importance.shape[1] + 1)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"(1) KL of the head's {result.heads}-ablation", "(2) mean similarity to the other heads"),
        horizontal_spacing=0.1,
    )
    panels = ((importance, "KL", "KL %{z:.3g}"), (redundancy, "similarity", "similarity %{z:.3f}"))
    axes = ["coloraxis", "coloraxis2"]
    for column, ((values, title, hover), axis) in enumerate(zip(panels, axes), start=1):
        fig.add_trace(
            go.Heatmap(
                z=values,
                x=heads,
                y=block_numbers(len(values)),
                coloraxis=axis,
                hovertemplate="block %{y}, head %{x}: " + hover + "<extra></extra>",
            ),
            row=1,
            col=column,
        )
        # Each panel's bar names its panel: both stand in the right margin.
        fig.update_layout({axis: {**colour_scale([values]), "colorbar": {"title": {"text": f"{title}<br>({column})"}}}})
        fig.update_xaxes(title="head", row=1, col=column, **count_axis(len(heads)))
        fig.update_yaxes(title="block", row=1, col=column, autorange="reversed", **count_axis(len(values)))
    colour_bars_right(fig, axes)
    return finish(fig, "Head importance (1) next to head similarity (2)", max(360, 22 * len(importance) + 160))


@figure
def pruning_curves(result: AblationResult) -> go.Figure | None:
    """Top-1 accuracy (with labels; else top-1 agreement with the intact model) and KL after
    removing the k most redundant blocks, k = 0..L, one line per ordering."""
    orderings = [ordering for ordering in ORDERING_NAMES if result.has(f"pruning_{ordering}")]
    if not orderings:
        return None
    labelled = result.accuracy.available
    measure, intact = ("accuracy", result.accuracy.top(1)) if labelled else ("agreement", 1.0)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("top-1 accuracy" if labelled else "top-1 agreement", "KL"))
    for index, ordering in enumerate(orderings):
        family = f"pruning_{ordering}"
        values = result.arrays[f"{family}_accuracy"][:, 0] if labelled else result.values(family, "agreement")
        order = result.arrays[f"{family}_order"] + 1
        removed = ["none"] + [", ".join(str(b) for b in sorted(order[:k])) for k in range(1, len(order) + 1)]
        colour = model_colour(index)
        for column, series in (
            (1, np.concatenate([[intact], values])),
            (2, np.concatenate([[0.0], result.values(family, "kl")])),
        ):
            fig.add_trace(
                go.Scatter(
                    x=np.arange(len(series)),
                    y=series,
                    mode="lines+markers",
                    name=ORDERING_NAMES[ordering],
                    legendgroup=ordering,
                    showlegend=column == 1,
                    line={"color": colour},
                    customdata=removed,
                    hovertemplate="%{x} blocks removed (%{customdata}): %{y:.3g}<extra>" + ordering + "</extra>",
                ),
                row=1,
                col=column,
            )
    fig.update_xaxes(title="blocks removed (k)")
    fig.update_yaxes(title=measure, row=1, col=1)
    fig.update_yaxes(title="KL(intact || pruned)", row=1, col=2)
    return finish(fig, "Removing the k most redundant blocks", 440)
