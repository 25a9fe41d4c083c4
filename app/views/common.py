"""What every view shares: how a figure (a catalogue figure with its caption) is put on the
page, and the block-numbering note."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from deepvit_diag import catalogue
from deepvit_diag.figures import drawing
from deepvit_diag.report import PLOTLY_CONFIG

from ..compute import Analysis

BLOCKS_FROM_ONE = "Blocks and heads are numbered from 1, as in the paper."


def show_figure(fig: go.Figure, key: str) -> None:
    """The library's own styling (``theme=None``), so the app's figures look like the report's.
    A figure that sets its own width (square attention panels) keeps it; others fill the column."""
    st.plotly_chart(fig, theme=None, config=PLOTLY_CONFIG, key=key, width="content" if fig.layout.width else "stretch")


def show_drawn(drawn: list[drawing.DrawnFigure]) -> None:
    """Catalogue figures as ``drawing.draw`` made them, each with the report's caption."""
    for item in drawn:
        show_figure(item.figure, item.element_id)
        st.caption(item.caption)


def show_section(section: str, analysis: Analysis, options: dict[str, dict] | None = None) -> None:
    """Every catalogue figure of a report section, as the report draws it; ``options`` maps
    a figure's key to keyword arguments of its function (e.g. the ``block`` of
    ``cross_head_matrices``)."""
    for spec in catalogue.figures_in(section):
        show_drawn(drawing.draw(spec, analysis.results, analysis.comparison, **(options or {}).get(spec.key, {})))
