"""The CLS token's attention drawn over the example images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from .registry import figure
from .style import (
    OVERLAY_TITLE_COLOURS,
    colour_bars_margin,
    colour_bars_right,
    colour_scale,
    finish,
    image_source,
)

# The widest the figure is drawn when its panels are at least OVERLAY_MIN_PANEL_PX: it fits a
# ~750 px wide column (the app at 1100 px with its sidebar open).
OVERLAY_WIDTH_PX = 740
OVERLAY_MIN_PANEL_PX = 50
OVERLAY_MAX_PANEL_PX = 160

if TYPE_CHECKING:
    from ..results import AnalysisResult

# ----------------------------------------------------------------------------- CLS attention overlays


def default_overlay_blocks(num_blocks: int) -> list[int]:
    """First, middle and last block (0-based, distinct)."""
    return sorted({0, num_blocks // 2, num_blocks - 1})


def _domains(count: int, gap: float) -> list[list[float]]:
    """``count`` equal intervals of [0, 1] separated by ``gap``, in order."""
    size = (1 - gap * (count - 1)) / count
    return [[index * (size + gap), index * (size + gap) + size] for index in range(count)]


@figure
def cls_attention(
    result: AnalysisResult, example: int = 0, blocks: Sequence[int] | None = None, label: str = ""
) -> go.Figure:
    """The CLS token's attention to every patch, per head, drawn over example image
    ``example``, for ``blocks`` (0-based; default first, middle and last).

    Re-attention blocks get two rows, the softmax maps (pre-Θ) and the maps that
    multiply V (post-Θ); other blocks one row (there pre and post are the same). Each
    map kind has its own colour axis (``coloraxis`` pre-Θ, ``coloraxis2`` post-Θ), shared
    by all its panels (``colour_scale``: the softmax weights sequential from black at 0, the
    signed post-Θ weights diverging around 0); the row titles and the
    colour bar titles name the kind, so the bar of each row is unambiguous.
    """
    images = result.arrays["example_images"]
    if not 0 <= example < len(images):
        raise IndexError(f"example {example} out of range: the result keeps {len(images)} example images")
    blocks = default_overlay_blocks(result.geometry.num_blocks) if blocks is None else list(blocks)
    reattention = set(result.geometry.mixing_blocks)
    rows = [(block, kind) for block in blocks for kind in (("pre", "post") if block in reattention else ("pre",))]
    has_post = any(kind == "post" for _, kind in rows)
    num_heads = result.geometry.num_heads
    height, width = images.shape[1:3]
    grid_h, grid_w = result.geometry.grid_size
    source = image_source(images[example])
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
    pre_title = {"text": "softmax<br>weight"}
    if has_post:
        pre_title = {"text": "pre-Θ rows:<br>softmax<br>weight", "font": {"color": OVERLAY_TITLE_COLOURS["pre"]}}
    drawn = {
        kind: [result.arrays[f"example_cls_{kind}"][example, block] for block, k in rows if k == kind]
        for kind in ("pre", "post")
    }
    layout["coloraxis"] = {**colour_scale(drawn["pre"]), "colorbar": {"title": pre_title}}
    if has_post:
        layout["coloraxis2"] = {
            **colour_scale(drawn["post"]),
            "colorbar": {
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
    # Square panels as large as fit OVERLAY_WIDTH_PX, with room for one or two colour bars.
    bars = ["coloraxis", "coloraxis2"] if has_post else ["coloraxis"]
    right = colour_bars_margin(len(bars))
    panel = max(OVERLAY_MIN_PANEL_PX, min(OVERLAY_MAX_PANEL_PX, (OVERLAY_WIDTH_PX - 80 - right) // num_heads))
    prefix = f"{label}: " if label else ""
    fig = finish(
        go.Figure(data=data, layout=layout),
        f"{prefix}attention of the CLS token to each patch, example image {example + 1}",
        120 + panel * len(rows),
        80 + right + panel * num_heads,
    )
    colour_bars_right(fig, bars)
    extra = fig.layout.margin.t - 80  # a wrapped title's extra lines
    return fig.update_layout(margin={"l": 80, "r": right, "t": 100 + extra, "b": 20})
