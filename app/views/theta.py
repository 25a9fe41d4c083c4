"""Theta: every Re-attention block's H x H matrix, the Norm's per-head gains, and how far
each Θ is from identity and from a permutation."""

from __future__ import annotations

import streamlit as st

from deepvit_diag import figures
from deepvit_diag.summary import block_list

from .. import charts
from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_figure


def render(analysis: Analysis) -> None:
    results = analysis.results
    distances = charts.theta_distances(results)
    if distances is None:
        st.info(
            "Neither model has Re-attention blocks, so there is no Θ to show: both use their softmax maps as they are."
        )
        return
    show_figure(distances, "theta_distances")
    st.caption(
        "Distance of each block's Θ (columns scaled to unit maximum) from the identity and from the nearest signed "
        "permutation, relative to the identity's norm: 0 means heads pass through unchanged (resp. only reordered). "
        + BLOCKS_FROM_ONE
    )
    for index, (label, result) in enumerate(results.items()):
        heatmaps = figures.theta_heatmaps(result, label)
        if heatmaps is None:
            st.info(f"{label} has no Re-attention blocks: its attention maps are used as they are.")
            continue
        st.caption(f"{label}: Re-attention in blocks {block_list(result.model['reattention_blocks'])}.")
        show_figure(heatmaps, f"theta_heatmaps_{index}")
    gains = charts.norm_gains(results)
    if gains is not None:
        show_figure(gains, "norm_gains")
        st.caption(
            "The learned affine weight of the Norm after Θ (BatchNorm in the official model, LayerNorm in vit-pytorch) "
            "per output head; 1 (white) leaves the head's scale unchanged."
        )
