"""Layer similarity: S[p, q] of A, B and B - A, and the maps of one chosen pair of blocks."""
from __future__ import annotations

import streamlit as st

from deepvit_diag import figures

from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_figure


def render(analysis: Analysis) -> None:
    results = analysis.results
    show_figure(figures.layer_similarity(results), "layer_similarity")
    st.caption(
        "Cosine similarity S[p, q] between the attention maps of block p and block q (paper Eqn 2), averaged over images, "
        "heads and tokens; hover a cell for its value. A and B share one colour scale; B minus A has its own, centred at 0. "
        + BLOCKS_FROM_ONE
    )
    st.subheader("Two blocks side by side")
    depth = max(result.model["num_blocks"] for result in results.values())
    pick_p, pick_q, pick_image = st.columns(3)
    p = pick_p.number_input("Block p", 1, depth, max(1, depth - 1), key="similarity_p")
    q = pick_q.number_input("Block q", 1, depth, depth, key="similarity_q")
    examples = min(len(result.arrays["example_images"]) for result in results.values())
    example = pick_image.selectbox("Image", range(examples), format_func=lambda i: f"image {i + 1}", key="similarity_image")
    values = st.columns(len(results))
    for column, (label, result) in zip(values, results.items()):
        if max(p, q) <= result.model["num_blocks"]:
            column.metric(f"S[{p}, {q}] in {label}", f"{result.similarity()[p - 1, q - 1]:.3f}")
        else:
            column.metric(f"S[{p}, {q}] in {label}", "n/a", help=f"{label} has only {result.model['num_blocks']} blocks")
    for label, result in results.items():
        if max(p, q) <= result.model["num_blocks"]:
            show_figure(figures.cls_attention(result, example, blocks=sorted({p - 1, q - 1}), label=label),
                        f"similarity_pair_{label}", natural_width=True)  # fmt: skip
    st.caption("Attention of the CLS token to every patch in blocks p and q, per head, over the image as the model saw it.")
