"""Heads: cross-head similarity of a block, and every head's attention of one query token
on one image, pre- and post-Θ, computed live for that image. The image is chosen from
thumbnails of the analysis' example images (name, label, each model's prediction); the
query patch by clicking a map or by typing its row and column."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from deepvit_diag.escaping import markdown_text
from deepvit_diag.example_images import ExampleImage
from deepvit_diag.results import AnalysisResult

from .. import charts
from ..compute import NEEDS_MODELS, Analysis, block_attention, failure_message
from ..sources import shown_as
from .common import BLOCKS_FROM_ONE, show_figure, show_section

CLS, PATCH = "CLS token", "a patch"
THUMBNAILS_PER_ROW = 6
THUMBNAIL_PX = 96
IMAGE_KEY, QUERY_KEY, ROW_KEY, COLUMN_KEY = "heads_image", "heads_query", "heads_row", "heads_column"


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
    image = _image_picker(analysis)
    if image is None:
        st.info("The analysis kept no example images (example images kept: 0), so there is no image to query.")
        return
    query = _query_controls(analysis)
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
        _model_maps(
            label, result, block, image, queried[side], query, pre_colours, post_colours, side, _common_grid(analysis)
        )
    mixing = any(result.geometry.mixing_blocks for result in results.values())
    st.caption(
        "The query's weight on every patch, drawn over the image as the model saw it (colour: weight). "
        "Click a patch of any map to make it the query. "
        + (
            "Pre-Θ: the softmax maps; post-Θ: what multiplies V after Θ, the Norm and scaling (can be negative). "
            "Each kind has one colour scale for A and B."
            if mixing
            else "One colour scale for A and B."
        )
    )


def _image_picker(analysis: Analysis) -> int | None:
    """Thumbnails of the example images, each with its name, label and both models'
    predictions, and a button that shows it; the chosen image (0-based), None without examples."""
    # Uploaded files are named as they were uploaded, not by their temporary path on the server.
    described = {
        side: [replace(example, name=shown_as(example.name, analysis.images)) for example in result.examples()]
        for side, result in zip("AB", analysis.results.values())
    }
    count = min(len(examples) for examples in described.values())
    if count == 0:
        return None
    if st.session_state.get(IMAGE_KEY, 0) >= count:  # a new analysis may keep fewer examples
        st.session_state[IMAGE_KEY] = 0
    chosen = st.session_state.get(IMAGE_KEY, 0)
    pixels = analysis.comparison.a.arrays["example_images"]
    st.markdown("**Image** (the first images of the analysis, as model A saw them)")
    for start in range(0, count, THUMBNAILS_PER_ROW):
        for column, index in zip(st.columns(THUMBNAILS_PER_ROW), range(start, min(count, start + THUMBNAILS_PER_ROW))):
            with column:
                st.image(_thumbnail(pixels[index]), width=THUMBNAIL_PX)
                st.caption(_thumbnail_text({side: examples[index] for side, examples in described.items()}))
                st.button(
                    "Shown" if index == chosen else "Show",
                    key=f"{IMAGE_KEY}_{index}",
                    type="primary" if index == chosen else "secondary",
                    on_click=_choose_image,
                    args=(index,),
                    help=markdown_text(described["A"][index].name),  # the whole name, folders included
                    width="stretch",
                )
    return chosen


def _choose_image(index: int) -> None:
    st.session_state[IMAGE_KEY] = index


def _thumbnail(pixels: np.ndarray) -> Image.Image:
    """The image enlarged by whole pixels (no blur) to at least the thumbnail's width."""
    image = Image.fromarray(pixels)
    scale = max(1, -(-THUMBNAIL_PX // max(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _thumbnail_text(examples: dict[str, ExampleImage]) -> str:
    """Markdown lines under a thumbnail: the file's name, its label and each model's
    prediction (✓ right, ✗ wrong when the label says), every string from a file escaped."""
    first = next(iter(examples.values()))
    lines = [f"**{markdown_text(first.short_name)}**"]
    lines.append(f"label {markdown_text(first.label)}" if first.label is not None else "no label")
    for side, example in examples.items():
        if example.prediction is None:
            lines.append(f"{side}: no prediction")
        else:
            mark = {True: " ✓", False: " ✗", None: ""}[example.correct]
            lines.append(f"{side} predicts {markdown_text(example.prediction)}{mark}")
    return "  \n".join(lines)


def _query_controls(analysis: Analysis) -> tuple[int, int] | None:
    """The query: None for CLS, else a 0-based (row, column); a click on a map sets the same
    widgets (``_follow_click``), so typing and clicking stay in step."""
    results = list(analysis.results.values())
    grid_h, grid_w = _common_grid(analysis)
    has_cls = all(result.geometry.num_prefix_tokens > 0 for result in results)
    pick_kind, pick_row, pick_column, _ = st.columns(4)
    kind = pick_kind.radio("Query token", [CLS, PATCH] if has_cls else [PATCH], key=QUERY_KEY, horizontal=True)
    disabled = kind == CLS
    row = pick_row.number_input("Patch row", 1, grid_h, (grid_h + 1) // 2, key=ROW_KEY, disabled=disabled)
    column = pick_column.number_input("Patch column", 1, grid_w, (grid_w + 1) // 2, key=COLUMN_KEY, disabled=disabled)
    return None if disabled else (int(row) - 1, int(column) - 1)


def _common_grid(analysis: Analysis) -> tuple[int, int]:
    """The patch grid both models have (rows and columns that exist in both)."""
    results = analysis.results.values()
    return min(r.geometry.grid_size[0] for r in results), min(r.geometry.grid_size[1] for r in results)


def _follow_click(chart_key: str, grid_size: tuple[int, int], common_grid: tuple[int, int]) -> None:
    """A click on patch (row, column) of a map (chart ``chart_key``, of a model with patch
    grid ``grid_size``): that patch becomes the query, in the typed row and column too."""
    patch = charts.clicked_patch(st.session_state.get(chart_key), grid_size)
    if patch is None or patch[0] >= common_grid[0] or patch[1] >= common_grid[1]:
        return
    st.session_state[QUERY_KEY] = PATCH
    st.session_state[ROW_KEY], st.session_state[COLUMN_KEY] = patch[0] + 1, patch[1] + 1


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
    analysis_grid: tuple[int, int],
) -> None:
    pixels = result.arrays["example_images"][image]
    query_name = "CLS" if query is None else f"patch ({query[0] + 1}, {query[1] + 1})"
    # The model's name above its maps, where it wraps: in a Plotly title a long name is cut at 1100 px.
    st.markdown(f"**{markdown_text(label)}**")
    # A model without head mixing has one kind of map: no Θ words for it.
    mixes = bool(result.geometry.mixing_blocks)
    left, right = st.columns(2, gap="medium")
    with left:
        fig = charts.query_attention(
            pixels,
            maps["pre"],
            f"{query_name}, pre-Θ (softmax)" if mixes else f"{query_name}, attention (softmax)",
            pre_colours,
            "softmax<br>weight",
            query,
        )
        _show_clickable(fig, f"heads_pre_{side}", result, analysis_grid)
    with right:
        if block - 1 in result.geometry.mixing_blocks:
            fig = charts.query_attention(
                pixels,
                maps["post"],
                f"{query_name}, post-Θ",
                post_colours,
                "post-Θ<br>weight",
                query,
            )
            _show_clickable(fig, f"heads_post_{side}", result, analysis_grid)
        elif mixes:
            st.info(
                f"Block {block} of {markdown_text(label)} mixes no heads: "
                "the maps that multiply V are the softmax maps on the left."
            )


def _show_clickable(fig: go.Figure, key: str, result: AnalysisResult, common_grid: tuple[int, int]) -> None:
    """A map whose patches are clicked to choose the query (``_follow_click``)."""
    show_figure(fig, key, on_select=partial(_follow_click, key, result.geometry.grid_size, common_grid))
