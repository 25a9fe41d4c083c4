"""What every view shares: how a figure is put on the page, and the block-numbering note."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from deepvit_diag.report import PLOTLY_CONFIG

BLOCKS_FROM_ONE = "Blocks and heads are numbered from 1, as in the paper."


def show_figure(fig: go.Figure, key: str) -> None:
    """The library's own styling (``theme=None``), so the app's figures look like the report's.
    A figure that sets its own width (square attention panels) keeps it; others fill the column."""
    st.plotly_chart(fig, theme=None, config=PLOTLY_CONFIG, key=key, width="content" if fig.layout.width else "stretch")
