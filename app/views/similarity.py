"""Layer similarity: S[p, q] of A, B and B - A, and the maps of one chosen pair of blocks."""

from __future__ import annotations

import numpy as np
import streamlit as st

from deepvit_diag.catalogue import figure_named
from deepvit_diag.example_images import describe_examples
from deepvit_diag.figures import drawing
from deepvit_diag.figures.similarity import has_difference_panel
from deepvit_diag.results import AnalysisResult

from .. import charts
from ..compute import Analysis
from .common import BLOCKS_FROM_ONE, show_drawn, show_section


def render(analysis: Analysis) -> None:
    results = analysis.results
    show_section("Cross-layer similarity", analysis)
    difference = " B minus A has its own, centred at 0." if has_difference_panel(results) else ""
    st.caption(f"Hover a cell for its value. A and B share one colour scale.{difference} {BLOCKS_FROM_ONE}")
    st.subheader("Two blocks side by side")
    depth = max(result.geometry.num_blocks for result in results.values())
    pick_p, pick_q, pick_image = st.columns(3)
    p = pick_p.number_input("Block p", 1, depth, max(1, depth - 1), key="similarity_p")
    q = pick_q.number_input("Block q", 1, depth, depth, key="similarity_q")
    examples = min(len(result.arrays["example_images"]) for result in results.values())
    # Both models saw the same images: the first result names them (file, bundled entry or "image N").
    names = [example.short_name for example in describe_examples(next(iter(results.values())).arrays)]
    example = pick_image.selectbox("Image", range(examples), format_func=names.__getitem__, key="similarity_image")
    blocks = sorted({p - 1, q - 1})
    drawn = {label: result for label, result in results.items() if blocks[-1] < result.geometry.num_blocks}
    for column, (label, result) in zip(st.columns(len(results)), results.items()):
        value = f"{result.similarity()[p - 1, q - 1]:.3f}" if label in drawn else "n/a"
        column.metric(
            f"S[{p}, {q}] in {label}",
            value,
            help=None if label in drawn else f"{label} has only {result.geometry.num_blocks} blocks",
        )
    overlays = drawing.draw(figure_named("cls_attention"), drawn, examples=[example], blocks=blocks)
    for axis, kind in (("coloraxis", "pre"), ("coloraxis2", "post")):
        weights = (_drawn_weights(result, example, blocks, kind) for result in drawn.values())
        charts.share_colour_range([overlay.figure for overlay in overlays], axis, *weights)
    show_drawn(overlays)
    st.caption("Blocks p and q; each kind of weight has one colour scale for A and B.")


def _drawn_weights(result: AnalysisResult, example: int, blocks: list[int], kind: str) -> np.ndarray:
    """The CLS weights ``overlay_figures.cls_attention`` draws on the colour axis of ``kind``: pre-Θ
    rows for every block, post-Θ rows only for Re-attention blocks."""
    if kind == "post":
        blocks = [block for block in blocks if block in result.geometry.mixing_blocks]
    return result.arrays[f"example_cls_{kind}"][example, blocks]
