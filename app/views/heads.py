"""Heads: cross-head similarity of a block, and every head's attention of one query token
on one image, pre- and post-Θ, computed live for that image."""

from __future__ import annotations

import numpy as np
import streamlit as st

from deepvit_diag.escaping import markdown_text, plotly_label
from deepvit_diag.results import AnalysisResult

from .. import charts
from ..compute import NEEDS_MODELS, Analysis, block_attention, failure_message
from .common import BLOCKS_FROM_ONE, show_figure, show_section

CLS, PATCH = "CLS token", "a patch"


def render(analysis: Analysis) -> None:
    results = analysis.results
    depth = min(result.geometry.num_blocks for result in results.values())
    block = int(
        st.columns(4)[0].number_input(
            "Block", 1, depth, depth, key="heads_block", help="For both models. " + BLOCKS_FROM_ONE
        )
    )
    show_section("Heads", analysis, options={"cross_head_matrices": {"block": block - 1}})
    st.caption(BLOCKS_FROM_ONE)

    st.subheader(f"Attention of one query token in block {block}, per head")
    if analysis.request is None:  # opened from saved files: the maps of one image need the models
        st.info(NEEDS_MODELS)
        return
    image, query = _query_controls(analysis)
    try:
        maps = {side: block_attention(analysis.key, side, image, block - 1, _analysis=analysis) for side in ("a", "b")}
    except Exception as err:  # the image is read again from its source, which may have changed
        st.error(markdown_text(failure_message(err, analysis.request)))
        return
    queried = {side: _query_maps(result, maps[side], query) for side, result in zip(("a", "b"), results.values())}
    pre_colours = charts.colour_range(*(kinds["pre"] for kinds in queried.values()))
    post = [
        queried[side]["post"]
        for side, result in zip(("a", "b"), results.values())
        if block - 1 in result.geometry.mixing_blocks
    ]
    post_colours = charts.colour_range(*post) if post else None
    for side, (label, result) in zip(("a", "b"), results.items()):
        _model_maps(label, result, block, image, queried[side], query, pre_colours, post_colours, side)
    st.caption(
        "The query's weight on every patch, drawn over the image as the model saw it (colour: weight). "
        "Pre-Θ: the softmax maps; post-Θ: what multiplies V after Θ, the Norm and scaling (can be negative). "
        "Each kind has one colour scale for A and B."
    )


def _query_controls(analysis: Analysis) -> tuple[int, tuple[int, int] | None]:
    """The chosen example image (0-based) and query: None for CLS, else a 0-based (row, column)."""
    results = list(analysis.results.values())
    examples = min(len(result.arrays["example_images"]) for result in results)
    grid_h = min(result.geometry.grid_size[0] for result in results)
    grid_w = min(result.geometry.grid_size[1] for result in results)
    has_cls = all(result.geometry.num_prefix_tokens > 0 for result in results)
    pick_image, pick_kind, pick_row, pick_column = st.columns(4)
    image = pick_image.selectbox(
        "Image",
        range(examples),
        format_func=lambda i: f"image {i + 1}",
        key="heads_image",
        help="One of the first images of the analysis.",
    )
    kind = pick_kind.radio("Query token", [CLS, PATCH] if has_cls else [PATCH], key="heads_query", horizontal=True)
    disabled = kind == CLS
    row = pick_row.number_input("Patch row", 1, grid_h, (grid_h + 1) // 2, key="heads_row", disabled=disabled)
    column = pick_column.number_input(
        "Patch column", 1, grid_w, (grid_w + 1) // 2, key="heads_column", disabled=disabled
    )
    return image, None if disabled else (int(row) - 1, int(column) - 1)


def _query_maps(
    result: AnalysisResult, maps: dict[str, np.ndarray], query: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    """(H, T, T) maps -> the query token's row over the patch tokens, as (H, gh, gw)."""
    prefix = result.geometry.num_prefix_tokens
    grid_h, grid_w = result.geometry.grid_size
    token = 0 if query is None else prefix + query[0] * grid_w + query[1]
    return {kind: values[:, token, prefix:].reshape(len(values), grid_h, grid_w) for kind, values in maps.items()}


def _model_maps(
    label: str,
    result: AnalysisResult,
    block: int,
    image: int,
    maps: dict[str, np.ndarray],
    query: tuple[int, int] | None,
    pre_colours: dict,
    post_colours: dict | None,
    side: str,
) -> None:
    pixels = result.arrays["example_images"][image]
    query_name = "CLS" if query is None else f"patch ({query[0] + 1}, {query[1] + 1})"
    left, right = st.columns(2, gap="medium")
    with left:
        fig = charts.query_attention(
            pixels,
            maps["pre"],
            f"{plotly_label(label)}: {query_name}, pre-Θ (softmax)",
            pre_colours,
            "softmax<br>weight",
            query,
        )
        show_figure(fig, f"heads_pre_{side}")
    with right:
        if block - 1 in result.geometry.mixing_blocks:
            fig = charts.query_attention(
                pixels,
                maps["post"],
                f"{plotly_label(label)}: {query_name}, post-Θ",
                post_colours,
                "post-Θ<br>weight",
                query,
            )
            show_figure(fig, f"heads_post_{side}")
        else:
            st.info(
                f"Block {block} of {markdown_text(label)} has no Re-attention: "
                "the maps that multiply V are the softmax maps on the left."
            )
