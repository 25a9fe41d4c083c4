"""The look every figure shares, in the report, sweep.html and the app: the template and
model colours, layout finishing, block and head ticks, colour scales and embedded images.

Conventions, for every figure:

* block and head numbers are shown from 1, as in the paper (results store them 0-based);
* every axis has a title, every heatmap shows its value on hover;
* heatmaps of the same quantity for different models share one colour scale, so the
  same colour means the same number in A and B;
* a model keeps its colour across figures (first label blue, second orange, ...);
* colour scales come from here only (``colour_scale``): a quantity that is never negative
  is drawn on ``SEQUENTIAL`` from black at 0, a signed one on ``DIVERGING``, white at 0 with a
  symmetric range; every colour bar names its quantity.

Layout, so that nothing overlaps from a ~750 px wide figure (the app at 1100 px with its
sidebar open) up:

* axes of blocks or heads carry at most ``MAX_TICKS`` labels (``count_ticks``: block 1, every
  step-th block and the last);
* colour bars stand in the right margin, outside every panel (``colour_bars_right``), several
  side by side at fixed pixel offsets;
* legends stand right of the plot, never over the title (``finish``);
* reference lines (rho, ln T, where collapse appears) are named in the legend, not by text on
  the data (``reference_line``);
* titles wrap at words to ``TITLE_CHARACTERS``, or to the width of a fixed-width figure.
"""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import get_colorscale, hex_to_rgb

if TYPE_CHECKING:
    from ..results import AnalysisResult

    Results = Mapping[str, AnalysisResult]

TEMPLATE = "plotly_white"
MODEL_COLOURS = ("#1f6fb4", "#e8710a", "#2ca02c", "#9467bd")
# Inferno: black at 0, bright at the top, so zero never looks brighter than weak attention.
# Written as rgb() stops, not the scale's name or hex codes: the app's Plotly (Streamlit's
# frontend) draws the hex stop #000004 of the named scale as lavender.
SEQUENTIAL = [
    [position, "rgb({}, {}, {})".format(*hex_to_rgb(colour))] for position, colour in get_colorscale("Inferno")
]
DIVERGING = "RdBu_r"
# Threshold lines (rho, the near-uniform cut-off, where collapse appears).
THRESHOLD_COLOUR = "#c0392b"
MAP_NAMES = {"pre": "softmax maps, pre-Θ", "post": "post-Θ maps, which multiply V"}
HEATMAP_PANEL_PX = 340
# Tick labels on an axis of blocks or heads: at most 9 along a curve's axis, 5 along a heatmap
# panel's (~140 px wide when three stand side by side in ~750 px).
MAX_TICKS = 9
MAX_HEATMAP_TICKS = 5
# Steps between tick labels, the smallest one that keeps few enough labels is used.
TICK_STEPS = (1, 2, 4, 5, 8, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
# Titles wrap at this many characters: a 17 px title line of ~80 characters fits ~720 px.
TITLE_CHARACTERS = 80
TITLE_CHARACTER_PX = 8  # a title character's mean width, for figures of a fixed width
TITLE_LINE_PX = 24
# Horizontal room of one vertical colour bar with its tick labels and its title turned along
# its right side (up to 3 lines of at most COLOUR_BAR_TITLE_CHARACTERS), side by side in the
# right margin.
COLOUR_BAR_PX = 100
COLOUR_BAR_TITLE_CHARACTERS = 12
# The room between the plot and the first colour bar, and the thickness of every bar.
COLOUR_BAR_GAP_PX = 20
COLOUR_BAR_EDGE_PX = 6  # between the last bar's box and the figure's right edge
COLOUR_BAR_THICKNESS = 14
# Legends stand right of the plot, at its top, so they never cover the title or the data.
LEGEND = {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"}
# Example images are embedded once per head panel; this bounds the size of report.html.
OVERLAY_MAX_PIXELS = 112
# Images that fit OVERLAY_MAX_PIXELS are repeated pixel by pixel up to at least this side,
# so that the browser's smoothing when it stretches them over a panel cannot blur them.
OVERLAY_UPSAMPLED_PIXELS = 320
# Row titles and colour bar titles of Re-attention overlays in a mid colour of their scale.
OVERLAY_TITLE_COLOURS = {"pre": "#a52c60", "post": "#1f8a84"}


def model_label(result: AnalysisResult, fallback: str = "model") -> str:
    """What a figure calls a result's model when no label is given: its description."""
    return str(result.model.get("description") or fallback)


def labelled(results: AnalysisResult | Results) -> Results:
    """``results`` as label -> result: a mapping as it is, one result under its model's label."""
    return results if isinstance(results, Mapping) else {model_label(results): results}


def block_numbers(count: int) -> np.ndarray:
    """Axis values for ``count`` blocks, numbered from 1 as in the paper."""
    return np.arange(1, count + 1)


def model_colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


def map_kind(result: AnalysisResult, maps: str | None) -> str:
    return maps or result.settings.maps


def other_map_kind(results: Results) -> str | None:
    """The map kind the settings did not choose, for drawing both kinds side by side; None
    when no model mixes heads (there pre and post are the same maps)."""
    if not any(result.geometry.mixing_blocks for result in results.values()):
        return None
    chosen = next(iter(results.values())).settings.maps
    return "pre" if chosen == "post" else "post"


def wrapped_title(title: str, characters: int = TITLE_CHARACTERS) -> str:
    """``title`` broken at words into lines of at most ``characters`` (Plotly never wraps)."""
    return "<br>".join(textwrap.wrap(title, characters, break_long_words=False)) or title


def finish(fig: go.Figure, title: str, height: int, width: int | None = None) -> go.Figure:
    """The shared look: template, font, the title (wrapped to the figure's ``width`` if it has
    one, else to ``TITLE_CHARACTERS``, with room above the plot for every line), the legend
    right of the plot."""
    characters = TITLE_CHARACTERS if width is None else min(TITLE_CHARACTERS, (width - 20) // TITLE_CHARACTER_PX)
    text = wrapped_title(title, characters)
    extra = TITLE_LINE_PX * text.count("<br>")
    right = max(30, fig.layout.margin.r or 0)  # the room colour bars took (``colour_bars_right``)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": text, "x": 0.01, "xanchor": "left"},
        width=width,
        height=height + extra,
        margin={"l": 70, "r": right, "t": 80 + extra, "b": 60},
        font={"size": 13},
        legend=LEGEND,
    )
    return fig


# The name of the note that stands where a figure has no data (the only text allowed on a plot).
NO_DATA = "no data"


def no_data_note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(
        text=text,
        name=NO_DATA,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 14, "color": "#666"},
    )


def reference_line(
    fig: go.Figure, name: str, colour: str, dash: str, *, x: float | None = None, y: float | None = None
) -> None:
    """A horizontal (``y``) or vertical (``x``) line across the plot, named in the legend
    rather than by text on the plot, where it would cover the data."""
    line = {"dash": dash, "color": colour, "width": 1.5}
    if y is not None:
        fig.add_hline(y=y, line=line)
    else:
        fig.add_vline(x=x, line=line)
    # The legend entry: a trace without points, drawn as the line's dash.
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line, name=name, hoverinfo="skip"))


def colour_bars_right(fig: go.Figure, axes: Sequence[str]) -> None:
    """The colour bars of colour ``axes`` side by side in the right margin, in this order, and
    the margin wide enough for them, ``COLOUR_BAR_PX`` each: no bar stands over a panel or its
    axis labels at any width. The first bar stands just right of the plot area, the others at
    fixed pixel offsets from the figure's right edge (a bar's ``xpad`` pads both its sides, and
    Plotly widens the margin to hold the padded box, so large offsets from the plot would
    waste room). Square panels move right, next to the bars."""
    for index, axis in enumerate(axes):
        if index == 0:
            place = {"x": 1.0, "xref": "paper", "xanchor": "left", "xpad": COLOUR_BAR_GAP_PX}
        else:
            from_edge = COLOUR_BAR_EDGE_PX + (len(axes) - 1 - index) * COLOUR_BAR_PX
            place = {"x": 1.0, "xref": "container", "xanchor": "right", "xpad": from_edge}
        bar = fig.layout[axis].colorbar
        bar.update(**place, y=0.5, yanchor="middle", len=0.9, thickness=COLOUR_BAR_THICKNESS)
        # The title turned along the bar's right side: above the bar, the top tick label
        # would run into it.
        bar.title.side = "right"
    fig.update_layout(margin={"r": colour_bars_margin(len(axes))})
    fig.update_xaxes(constraintoward="right")


def colour_bars_margin(count: int) -> int:
    """The right margin that holds ``count`` colour bars (``colour_bars_right``)."""
    return COLOUR_BAR_GAP_PX + COLOUR_BAR_PX * count


def finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def tick_step(count: int, labels: int = MAX_TICKS - 1) -> int:
    """The smallest of ``TICK_STEPS`` that labels ``count`` values in at most ``labels`` steps."""
    return next((step for step in TICK_STEPS if count <= labels * step), math.ceil(count / labels))


def sparse_ticks(numbers: Sequence[int], most: int = MAX_TICKS) -> list[int]:
    """At most ``most`` of ``numbers`` (ascending block or head numbers) to label: the first,
    the last, and the multiples of a step between them, none within half a step of either end
    (where two labels would touch). Blocks 1..32: 1, 4, 8, ..., 28, 32 (at most 5: 1, 8, ..., 32)."""
    numbers = list(numbers)
    if not numbers:
        return []
    step = tick_step(len(numbers), most - 1)
    first, last = numbers[0], numbers[-1]
    inner = [n for n in numbers if n % step == 0 and n - first >= step / 2 and last - n >= step / 2]
    return sorted({first, *inner, last})


def count_ticks(count: int, most: int = MAX_TICKS) -> list[int]:
    """The tick labels of an axis of ``count`` blocks or heads numbered from 1 (``sparse_ticks``)."""
    return sparse_ticks(range(1, count + 1), most)


def count_axis(count: int, most: int = MAX_TICKS) -> dict:
    """Axis properties that label ``count`` blocks or heads numbered from 1 (``count_ticks``)."""
    return {"tickmode": "array", "tickvals": count_ticks(count, most)}


def square_heatmap_axes(
    fig: go.Figure, count: int, x_title: str, y_title: str, size: int, columns: int | None = None
) -> None:
    """Square cells, row 1 at the top (matrix layout), at most ``MAX_TICKS`` labels for
    ``size`` rows. In a grid of ``columns`` panels per row, only the first column names the
    y axis and only the lowest panel of each column the x axis, so titles do not crowd."""
    columns = columns or count
    common = {"showgrid": False, "constrain": "domain", **count_axis(size, MAX_HEATMAP_TICKS)}
    for index in range(1, count + 1):
        suffix = "" if index == 1 else str(index)
        fig.layout[f"xaxis{suffix}"].update(title=x_title if index + columns > count else None, **common)
        first_column = (index - 1) % columns == 0
        fig.layout[f"yaxis{suffix}"].update(
            title=y_title if first_column else None, autorange="reversed", scaleanchor=f"x{suffix}", **common
        )


def heatmap_panel(
    fig: go.Figure,
    matrix: np.ndarray,
    hover: str,
    *,
    col: int,
    row: int = 1,
    coloraxis: str = "coloraxis",
    name: str | None = None,
    x: Sequence | None = None,
    y: Sequence | None = None,
) -> None:
    """``matrix`` as a heatmap in panel (``row``, ``col``) on ``coloraxis``, its rows and
    columns numbered from 1 unless ``x``/``y`` say otherwise; ``hover`` is its hover template."""
    fig.add_trace(
        go.Heatmap(
            z=matrix,
            x=block_numbers(matrix.shape[1]) if x is None else x,
            y=block_numbers(matrix.shape[0]) if y is None else y,
            coloraxis=coloraxis,
            name=name,
            hovertemplate=hover,
        ),
        row=row,
        col=col,
    )


def similarity_scale(values: list[np.ndarray]) -> dict:
    """Cosine similarities lie in [0, 1] for non-negative maps (sequential from black) and in
    [-1, 1] otherwise (post-Θ maps are signed: diverging, white at 0); a fixed range keeps
    reports comparable."""
    lowest = min((float(finite(v).min()) for v in values if finite(v).size), default=0.0)
    return sequential_scale(1.0) if lowest >= 0 else symmetric_scale([np.ones(1)])


def colour_scale(values: Sequence[np.ndarray]) -> dict:
    """The one scale of a quantity: sequential from black at 0 up to its largest value when
    no finite value is negative, else diverging, white at 0, symmetric about it."""
    present = [finite(np.asarray(v, dtype=float)) for v in values]
    present = [v for v in present if v.size]
    if all(float(v.min()) >= 0 for v in present):
        return sequential_scale(max((float(v.max()) for v in present), default=1.0) or 1.0)
    return symmetric_scale(present)


def sequential_scale(largest: float, smallest: float = 0.0) -> dict:
    """The scale of every non-negative quantity: black at ``smallest`` (0), bright at ``largest``."""
    return {"colorscale": SEQUENTIAL, "cmin": smallest, "cmax": largest}


def symmetric_scale(values: list[np.ndarray]) -> dict:
    """The scale of a signed quantity: diverging, white at 0, from -m to m (m: largest |value|)."""
    largest = max((float(np.abs(finite(v)).max()) for v in values if finite(v).size), default=1.0)
    return {"colorscale": DIVERGING, "cmin": -(largest or 1.0), "cmax": largest or 1.0, "cmid": 0.0}


def short_label(label: str) -> str:
    """The letter of a report label such as ``"vit (A)"``, else the label itself."""
    found = re.search(r"\(([A-Z])\)\s*$", label)
    return found.group(1) if found else label


def titles_over_panels(fig: go.Figure) -> None:
    """Pin make_subplots' panel titles to their axes' drawn domains, so that they stay
    centred over square panels that ``constrain="domain"`` shrinks or shifts."""
    for index, annotation in enumerate(fig.layout.annotations, start=1):
        suffix = "" if index == 1 else str(index)
        annotation.update(xref=f"x{suffix} domain", x=0.5, yref=f"y{suffix} domain", y=1.0)


def block_axis(fig: go.Figure, results: Results) -> None:
    """The x axis of a curve over blocks: from block 1 (not 0), labelled by ``count_ticks``."""
    last = max(result.geometry.num_blocks for result in results.values())
    fig.update_xaxes(title="block", range=[0.5, last + 0.5], **count_axis(last))


def image_source(pixels: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a small data URI (it is repeated once per head panel).

    An image that fits ``OVERLAY_MAX_PIXELS`` (24 px digits, 32 px CIFAR) becomes a PNG
    with every pixel repeated up to ``OVERLAY_UPSAMPLED_PIXELS``: the browser smooths an
    image it stretches, which would blur a few large pixels. A larger photo is downscaled
    to a JPEG thumbnail instead (the attention grid is much coarser than the image)."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if max(image.size) <= OVERLAY_MAX_PIXELS:
        return png_data_uri(image, math.ceil(OVERLAY_UPSAMPLED_PIXELS / max(image.size)))
    image.thumbnail((OVERLAY_MAX_PIXELS, OVERLAY_MAX_PIXELS))
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(image: Image.Image, scale: int) -> str:
    """The image as a PNG data URI, each pixel repeated ``scale`` times: the browser would
    blur a small image (24 px digits) when it stretches it over a panel."""
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def maps_name(results: Results, kind: str) -> str:
    """How a figure's title names the maps of ``kind``: pre-/post-Θ only when some model mixes
    heads (a plain ViT has one kind of map)."""
    if any(result.geometry.mixing_blocks for result in results.values()):
        return MAP_NAMES[kind]
    return "attention maps"
