"""Overview: the headline figure (the similarity ratio per block of A and B, similar blocks marked),
the headline numbers of A and B side by side, and the findings in words."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from deepvit_diag import catalogue
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures import drawing
from deepvit_diag.results import AnalysisResult
from deepvit_diag.summary import (
    block_list,
    collapse_start_cell,
    comparison_findings,
    model_findings,
    summary_row_meanings,
    summary_rows,
)

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_figure


def render(analysis: Analysis) -> None:
    # People would rather look than read: the paper's Fig. 3(a) for both models comes first.
    (ratio,) = drawing.draw(catalogue.figure_named("similarity_ratio"), analysis.results, analysis.comparison)
    show_figure(ratio.figure, key="overview-" + ratio.element_id)
    st.caption(markdown_text(ratio.caption))
    first = analysis.first
    images = first.images
    skipped = f"; {images['skipped']} unreadable file(s) skipped" if images.get("skipped") else ""
    st.caption(
        markdown_text(f"Images: {images['description']} ({first.num_images} analysed{skipped}). {BLOCKS_FROM_ONE}")
    )
    shown: set[str] = set()
    comparison = analysis.comparison  # None for a saved analysis of one model
    differences = None if comparison is None else comparison.differences()
    for column, (label, result), side in zip(st.columns(2, gap="large"), analysis.results.items(), "ab"):
        with column:
            shown.update(_model_column(label, result, differences if side == "b" else None))
    if comparison is not None:
        st.subheader("A against B")
        label_a, label_b = analysis.labels
        for sentence in comparison_findings(label_a, label_b, comparison):
            if sentence not in shown:  # the Re-attention sentences already stand under their model
                st.markdown(f"- {markdown_text(sentence)}")
    st.subheader("Headline numbers")
    rows = summary_rows(analysis.results)
    table = pd.DataFrame(
        [[markdown_text(cell) for cell in cells] for _, cells in rows],
        index=[markdown_text(label) for label, _ in rows],
        columns=[markdown_text(label) for label in analysis.results],
    )
    st.table(table)
    with st.expander("What the rows mean"):
        for label, meaning in summary_row_meanings(analysis.results).items():
            st.markdown(f"- **{markdown_text(label)}**: {markdown_text(meaning)}")


def _model_column(label: str, result: AnalysisResult, differences: dict[str, float] | None) -> list[str]:
    """Key numbers and findings of one model; ``differences`` (B - A) add the change against A.
    Returns the sentences shown."""
    summary = result.summary()
    st.subheader(markdown_text(label))
    st.caption(markdown_text(result.model["description"]))
    similar, start, heads = st.columns(3)
    similar.metric(
        "Similar blocks",
        f"{summary['similar_blocks']} of {summary['num_blocks']}",
        delta=None if differences is None else differences["similar_blocks"],
        delta_color="inverse",
        delta_description=None if differences is None else "against A",
        help=f"Blocks whose similarity ratio exceeds rho = {result.settings.rho:g}: "
        + (block_list(summary["similar_block_indices"]) or "none"),
    )
    start.metric("Collapse starts at block", collapse_start_cell(summary))
    heads.metric(
        "Cross-head similarity",
        _decimal(summary["cross_head_similarity"]),
        help="Mean cosine similarity between the attention maps of two heads of the same block (1 = heads alike)",
    )
    findings = model_findings(label, result)
    for sentence in findings:
        st.markdown(f"- {markdown_text(sentence)}")
    return findings


def _decimal(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
