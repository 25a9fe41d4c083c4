"""Similarity ratio: the paper's Fig. 3(a) curve per model with the rho line."""

from __future__ import annotations

import streamlit as st

from deepvit_diag.escaping import markdown_text
from deepvit_diag.summary import block_list

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_section


def render(analysis: Analysis) -> None:
    show_section("Similarity ratio", analysis)
    st.caption(BLOCKS_FROM_ONE)
    for label, result in analysis.results.items():
        similar = result.similar_blocks()
        blocks = f"blocks {block_list(similar.indices)}" if similar.count else "none"
        count = f"{similar.count} of {result.geometry.num_blocks}"
        st.markdown(f"**{markdown_text(label)}**: {count} blocks are similar ({blocks}).")
