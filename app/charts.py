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
    """Each head's attention of one query token to every patch, over the image. Every patch
    of every panel is also a point (invisible, with the weight on hover) that a click selects,
    so that ``st.plotly_chart(..., on_select=...)`` reports the patch (``clicked_patch``).

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
    # One point per patch at its centre, row by row: a point's index is row * grid_w + column.
    centre_y, centre_x = np.mgrid[0:grid_h, 0:grid_w]
    centre_x, centre_y = (centre_x * cell_w + cell_w / 2 - 0.5).ravel(), (centre_y * cell_h + cell_h / 2 - 0.5).ravel()
    patch_numbers = np.stack(np.mgrid[1 : grid_h + 1, 1 : grid_w + 1], axis=-1).reshape(-1, 2)
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
                hoverinfo="skip",
            ),
            row=row,
            col=column,
        )
        fig.add_trace(
            go.Scatter(
                x=centre_x,
                y=centre_y,
                mode="markers",
                # Small: Plotly picks any point under a large marker, not the nearest; the pointer
                # is nearest to the centre of the patch it is on (hoverdistance -1: at any distance).
                marker={"size": 2, "color": "rgba(0, 0, 0, 0)"},
                # Selected or not, the points stay invisible: the outline shows the query.
                selected={"marker": {"opacity": 0}},
                unselected={"marker": {"opacity": 0}},
                customdata=np.column_stack([patch_numbers, maps[head].ravel()]),
                hovertemplate=f"head {head + 1}<br>patch row %{{customdata[0]}}, column %{{customdata[1]}}"
                "<br>weight %{customdata[2]:.4f}<extra></extra>",
                showlegend=False,
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
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, fixedrange=True)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, fixedrange=True)
    # Fixed ranges: a click selects a patch and a drag never moves the image.
    fig.update_layout(
        coloraxis={**colours, "colorbar": {"title": {"text": colour_title}}},
        hovermode="closest",
        hoverdistance=-1,
    )
    colour_bars_right(fig, ["coloraxis"])
    # The title wraps to the figure's width (two figures stand side by side in the view).
    fig = finish(fig, title, (panel + 28) * rows + 80, columns * panel + 10 + colour_bars_margin(1))
    return fig.update_layout(margin={"l": 10, "b": 10})


def clicked_patch(event: object, grid_size: tuple[int, int]) -> tuple[int, int] | None:
    """The 0-based (row, column) of the patch a click on a ``query_attention`` figure chose,
    from the selection state ``st.plotly_chart(..., on_select=...)`` keeps: the last selected
    point's index (row * grid width + column); None when no patch point is selected (a second
    click on the same patch unselects it) or the state is not such a selection."""
    try:
        points = event["selection"]["points"]
        index = points[-1]["point_index"]
    except (KeyError, IndexError, TypeError):
        return None
    grid_h, grid_w = grid_size
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < grid_h * grid_w:
        return None
    return divmod(index, grid_w)
