"""app/charts.py: the Heads view's per-head query attention keeps the library's layout rules
(colour bar in the right margin, a width that fits the app's column) and colour scales."""

from __future__ import annotations

import numpy as np

from app import charts
from deepvit_diag.figures import style


def test_query_attention_has_its_colour_bar_in_the_right_margin_and_fits_the_column() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    maps = np.random.default_rng(0).random((4, 4, 4))
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    colours = charts.colour_range(maps)
    title = "a checkpoint with a long name.safetensors (B): CLS, pre-Θ (softmax)"
    fig = charts.query_attention(image, maps, title, colours, "softmax<br>weight", (1, 2))
    bar = fig.layout.coloraxis.colorbar
    assert (bar.x, bar.xref, bar.xanchor) == (1.0, "paper", "left")
    assert fig.layout.margin.r >= style.colour_bars_margin(1)
    assert fig.layout.width <= charts.QUERY_FIGURE_PX
    # The title wraps to the figure's width, with room above the panels for its lines.
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) >= 2 and all(len(line) <= (fig.layout.width - 20) // style.TITLE_CHARACTER_PX for line in lines)
    assert fig.layout.margin.t >= 80 + style.TITLE_LINE_PX * (len(lines) - 1)
    # Softmax weights: sequential from black at 0; a signed map gets the symmetric diverging scale.
    assert colours == style.sequential_scale(float(maps.max()))
    assert charts.colour_range(maps - maps.mean())["cmid"] == 0.0
