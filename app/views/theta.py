"""Theta: every Re-attention block's H x H matrix (CaiT: its talking-heads matrices), how far each Θ
is from identity and from a permutation, and the Norm's per-head gains."""

from __future__ import annotations

import streamlit as st

from deepvit_diag.escaping import markdown_text
from deepvit_diag.readers import MIXING_BLOCKS
from deepvit_diag.summary import block_list

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_section


def render(analysis: Analysis) -> None:
    results = analysis.results
    if not any(result.geometry.mixing_blocks for result in results.values()):
        st.info(
            "Neither model has Re-attention blocks, so there is no Θ to show: both use their softmax maps as they are."
        )
        return
    for label, result in results.items():
        blocks = result.geometry.mixing_blocks
        st.caption(
            markdown_text(
                f"{label}: {MIXING_BLOCKS[result.geometry.head_mixing]} "
                f"{block_list(blocks, result.geometry.num_blocks)}."
            )
            if blocks
            else f"{markdown_text(label)} has no Re-attention blocks: its attention maps are used as they are."
        )
    show_section("Re-attention matrices Θ", analysis)
    st.caption(BLOCKS_FROM_ONE)
