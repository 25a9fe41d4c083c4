"""Similarity ratio: the paper's Fig. 3(a) curve per model with the rho line."""

from __future__ import annotations

import streamlit as st

from deepvit_diag import figures
from deepvit_diag.summary import block_list

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_figure


def render(analysis: Analysis) -> None:
    show_figure(figures.similarity_ratio(analysis.results), "similarity_ratio")
    params = analysis.comparison.a.params
    st.caption(
        f"Share of each block's attention vectors whose mean similarity to the blocks within k = {params['k']} exceeds "
        f"tau = {params['tau']:g} (paper Fig. 3a). A block above rho = {params['rho']:g} counts as similar (filled marker). "
        + BLOCKS_FROM_ONE
    )
    for label, result in analysis.results.items():
        similar = result.similar_blocks()
        blocks = f"blocks {block_list(similar.indices)}" if similar.count else "none"
        st.markdown(f"**{label}**: {similar.count} of {result.model['num_blocks']} blocks are similar ({blocks}).")
