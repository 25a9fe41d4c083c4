"""Figures the app needs beyond ``deepvit_diag.figures``, in the same conventions: blocks
and heads numbered from 1, axis titles everywhere, values on hover, one colour scale per
quantity shared by A and B. They only draw arrays the library computed.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from deepvit_diag.figures.style import colour_bars_margin, colour_bars_right, colour_scale, finish, png_data_uri

# The figure fits one of the Heads view's two columns at 1100 px with the sidebar open (~370 px):
# Streamlit narrows a wider figure to its column, which cuts its title.
QUERY_FIGURE_PX = 360
QUERY_PANEL_PX = 180  # largest panel side
QUERY_GRID_PX = QUERY_FIGURE_PX - 10 - colour_bars_margin(1)  # width of all panels of a row together


def colour_range(*maps: np.ndarray) -> dict:
    """One colour scale for maps that should read alike (``figures.style.colour_scale``):
    sequential from black at 0 for softmax weights, diverging around 0 for signed post-Θ maps."""
    return colour_scale(maps)


def share_colour_range(figures: list[go.Figure], axis: str, *values: np.ndarray) -> None:
    """Set colour axis ``axis`` of every figure that has it to the scale of all ``values``
    together, so that one colour means one number in figures drawn separately (A and B)."""
    if not any(np.isfinite(v).any() for v in values):
        return
    scale = colour_scale(values)
    for fig in figures:
        if axis in fig.layout.to_plotly_json():
            fig.update_layout({axis: scale})


def query_attention(
    image: np.ndarray,
    maps: np.ndarray,
    title: str,
    colours: dict,
    colour_title: str,
    query_patch: tuple[int, int] | None,
) -> go.Figure:
    """Each head's attention of one query token to every patch, over the image.

    Args:
        image: (height, width, 3) uint8, the image as the model saw it.
        maps: (H, gh, gw) weights of the query on each patch.
        colours: ``colour_range`` of every map drawn with the same scale.
        query_patch: 0-based (row, column) of the query patch, outlined; None for CLS.
    """
    num_heads, grid_h, grid_w = maps.shape
    height, width = image.shape[:2]
    # A near-square grid of square panels that fits half the page's width.
    columns = math.ceil(math.sqrt(num_heads))
    rows = math.ceil(num_heads / columns)
    panel = min(QUERY_PANEL_PX, QUERY_GRID_PX // columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[f"head {head + 1}" for head in range(num_heads)],
        horizontal_spacing=0.04,
        vertical_spacing=min(0.2, 28 / (panel * rows)),
    )
    scale = max(1, math.ceil(panel / max(height, width)))
    source = png_data_uri(Image.fromarray(image), scale)
    # Upscaled pixels placed so that the image still spans [-0.5, width - 0.5], the original's pixel grid.
    offset = 0.5 / scale - 0.5
    cell_h, cell_w = height / grid_h, width / grid_w
    patch_numbers = np.stack(np.meshgrid(np.arange(1, grid_w + 1), np.arange(1, grid_h + 1)), axis=-1)
    for head in range(num_heads):
        row, column = head // columns + 1, head % columns + 1
        fig.add_trace(
            go.Image(source=source, x0=offset, y0=offset, dx=1 / scale, dy=1 / scale, hoverinfo="skip"),
            row=row,
            col=column,
        )
        fig.add_trace(
            go.Heatmap(
                z=maps[head],
                x0=cell_w / 2 - 0.5,
                dx=cell_w,
                y0=cell_h / 2 - 0.5,
                dy=cell_h,
                opacity=0.6,
                coloraxis="coloraxis",
                customdata=patch_numbers,
                hovertemplate=f"head {head + 1}<br>patch row %{{customdata[1]}}, column %{{customdata[0]}}"
                "<br>weight %{z:.4f}<extra></extra>",
            ),
            row=row,
            col=column,
        )
        if query_patch is not None:
            top, left = query_patch[0] * cell_h - 0.5, query_patch[1] * cell_w - 0.5
            fig.add_shape(
                type="rect",
                x0=left,
                x1=left + cell_w,
                y0=top,
                y1=top + cell_h,
                line={"color": "#00e5ff", "width": 2},
                row=row,
                col=column,
            )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(coloraxis={**colours, "colorbar": {"title": {"text": colour_title}}})
    colour_bars_right(fig, ["coloraxis"])
    # The title wraps to the figure's width (two figures stand side by side in the view).
    fig = finish(fig, title, (panel + 28) * rows + 80, columns * panel + 10 + colour_bars_margin(1))
    return fig.update_layout(margin={"l": 10, "b": 10})
