"""More metrics: entropy, attention distance, token similarity, rank residual, and CKA."""

from __future__ import annotations

import streamlit as st

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_section


def render(analysis: Analysis) -> None:
    st.caption(BLOCKS_FROM_ONE)
    show_section("Attention statistics per block", analysis)
    st.subheader("Representation similarity (linear CKA)")
    show_section("Representation similarity (CKA)", analysis)
