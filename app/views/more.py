"""More metrics: entropy, attention distance, token similarity, rank residual, and CKA."""

from __future__ import annotations

import streamlit as st

from deepvit_diag import figures

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_figure


def render(analysis: Analysis) -> None:
    results = analysis.results
    st.caption(BLOCKS_FROM_ONE + " Dots are single heads, lines the mean over heads.")
    # Full width for the per-head figures: their four legend entries need it.
    show_figure(figures.entropy_curves(results), "entropy")
    show_figure(figures.attention_distance_curves(results), "attention_distance")
    left, right = st.columns(2)
    with left:
        show_figure(figures.token_similarity_curves(results), "token_similarity")
    with right:
        show_figure(figures.rank_residual_curves(results), "rank_residual")
    st.subheader("Representation similarity (linear CKA)")
    show_figure(figures.cka_within(results), "cka_within")
    label_a, label_b = analysis.labels
    show_figure(figures.cka_across(analysis.comparison, label_a, label_b), "cka_across")
    st.caption(
        "Linear CKA between block outputs (Kornblith et al. 2019): 1 means the same representation up to rotation "
        "and scale. It needs at least 4 images."
    )
