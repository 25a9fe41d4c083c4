"""What every view shares: how a figure is put on the page, and the block-numbering note."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from deepvit_diag.report import PLOTLY_CONFIG

BLOCKS_FROM_ONE = "Blocks and heads are numbered from 1, as in the paper."


def show_figure(fig: go.Figure, key: str, *, natural_width: bool = False) -> None:
    """The library's own styling (``theme=None``): the app's figures look like the report's.
    ``natural_width`` keeps a figure's fixed width (attention overlays with square panels)."""
    st.plotly_chart(fig, theme=None, config=PLOTLY_CONFIG, key=key, width="content" if natural_width else "stretch")
