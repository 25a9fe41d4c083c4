"""Figures of a sweep (``SweepResult``): similar blocks, collapse start and accuracy along
the sweep's x axis, and every checkpoint's per-block curves."""

from __future__ import annotations

import html
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from .registry import figure
from .style import (
    MAP_NAMES,
    MAX_TICKS,
    THRESHOLD_COLOUR,
    count_axis,
    finish,
    model_colour,
    no_data_note,
    reference_line,
    tick_step,
)

if TYPE_CHECKING:
    from ..sweeps import SweepEntry, SweepResult

# The checkpoints of a sweep's group share a hue, from light (first along x) to dark.
GROUP_SCALES = ("Blues", "Oranges", "Greens", "Purples")


def _sweep_axis(fig: go.Figure, sweep: SweepResult) -> None:
    """The x axis of a sweep trend: depth, epoch, step or place, whole numbers; each checkpoint's
    value is labelled when there are at most ``MAX_TICKS``, else evenly spaced values."""
    values = sorted({sweep.x(entry) for entry in sweep.entries})
    low, high = values[0], values[-1]
    pad = max(0.5, 0.04 * (high - low))
    ticks = (
        {"tickmode": "array", "tickvals": values}
        if len(values) <= MAX_TICKS
        else {"tick0": low, "dtick": tick_step(high - low + 1)}
    )
    fig.update_xaxes(title=sweep.x_title, range=[low - pad, high + pad], **ticks)


def _maps_name(sweep: SweepResult) -> str:
    """How a sweep figure names its maps: pre-/post-Θ only when some checkpoint mixes heads."""
    mixes = any(entry.summary.get("theta_distance_from_identity_mean") is not None for entry in sweep.entries)
    return MAP_NAMES[sweep.settings.maps] if mixes else "attention maps"


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
                line={"color": model_colour(index), "dash": dash},
                marker={"size": 9},
                customdata=[entry.label for entry in entries],
                hovertemplate=f"%{{customdata}}<br>{sweep.x_title} %{{x}}: {number}<extra>{group}</extra>",
            )
        )
    _sweep_axis(fig, sweep)
    fig.update_yaxes(title=y_title, rangemode="tozero")
    return finish(fig, title, 420)


def _block_count_axis(fig: go.Figure, sweep: SweepResult) -> None:
    """A y axis of block counts or numbers: whole numbers from 0 to the deepest model's blocks."""
    deepest = max(entry.num_blocks for entry in sweep.entries)
    fig.update_yaxes(tick0=0, dtick=tick_step(deepest + 1, 10), range=[-0.3, deepest + 0.5])


def _mark_collapse(fig: go.Figure, sweep: SweepResult) -> None:
    """In a training series, a dotted line where collapse first appears in each group."""
    if not sweep.is_series:
        return
    for group in sweep.groups():
        entry = sweep.collapse_appears(group)
        if entry is not None:
            name = f"{group}: collapse appears ({sweep.x_title} {sweep.x(entry)})"
            reference_line(fig, name, THRESHOLD_COLOUR, "dot", x=sweep.x(entry))


@figure
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


@figure
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
                line={"color": model_colour(index)},
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
        no_data_note(fig, "no checkpoint has a collapsed run of similar blocks at the end of the network")
    _mark_collapse(fig, sweep)
    return finish(fig, f"Where the collapsed run starts, by {sweep.x_title} (gaps: no collapse)", 420)


@figure
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
        no_data_note(fig, "<br>".join(textwrap.wrap(f"no accuracy: {reason}", 80)))
    return finish(fig, f"Top-1 (solid) and top-5 (dashed) accuracy by {sweep.x_title}", 420)


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
        # 0 not at the plot's edge, where its label would meet the lowest label of the y axis.
        fig.update_xaxes(title="relative depth (block / number of blocks)", range=[-0.04, 1.04])
    else:
        last = max(entry.num_blocks for entry in sweep.entries)
        fig.update_xaxes(title="block", range=[0.5, last + 0.5], **count_axis(last))
    fig.update_yaxes(title=y_title)
    return finish(fig, title, 460)


def _entry_name(sweep: SweepResult, entry: SweepEntry) -> str:
    """A checkpoint's legend entry: its label, with its epoch or step in a series."""
    return f"{entry.label} ({sweep.x_title} {sweep.x(entry)})" if sweep.x_axis in ("epoch", "step") else entry.label


@figure
def sweep_ratio_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """The similarity ratio per block (paper Fig. 3a) of every checkpoint, with rho."""
    fig = _sweep_block_curves(
        sweep,
        "ratio",
        "similarity ratio",
        f"Similarity ratio per block of every checkpoint ({_maps_name(sweep)})",
        relative_depth,
    )
    reference_line(fig, f"rho = {sweep.settings.rho:g} (similar above)", THRESHOLD_COLOUR, "dash", y=sweep.settings.rho)
    return fig.update_yaxes(range=[-0.03, 1.05])


@figure
def sweep_adjacent_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """The similarity S[l - 1, l] of each block's attention maps with the previous block's
    (paper Fig. 1's per-block curves), drawn at block l, for every checkpoint."""
    return _sweep_block_curves(
        sweep,
        "adjacent_similarity",
        "similarity with the previous block",
        f"Adjacent-block attention similarity of every checkpoint ({_maps_name(sweep)})",
        relative_depth,
        first_block=2,
    )


@figure
def sweep_entropy_curves(sweep: SweepResult, relative_depth: bool = False) -> go.Figure:
    """Attention entropy per block (softmax maps, mean over heads) of every checkpoint."""
    return _sweep_block_curves(
        sweep,
        "entropy",
        "entropy (nats)",
        "Attention entropy per block of every checkpoint (softmax maps, mean over heads)",
        relative_depth,
    )
