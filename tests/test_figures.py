"""The layout rules of every figure (``figures.style``), checked on the figures themselves for
every catalogue, sweep and ablation figure: at most 9 tick labels on an axis of blocks or
heads, colour bars in the right margin, no text on the plot area, legends right of the plot,
titles that fit; and captions that speak only of what the models have."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import pytest
import torch
from test_report import tiny
from test_sweeps import _entry

from deepvit_diag import catalogue
from deepvit_diag.ablation import ablate
from deepvit_diag.analysis import compare
from deepvit_diag.figures import style
from deepvit_diag.figures.drawing import draw, draw_ablation, draw_sweep
from deepvit_diag.results import ComparisonResult
from deepvit_diag.sweeps import SweepEntry, SweepResult

LABELS = ["vit (A)", "deepvit (B)"]
DEPTH = 12  # more blocks than MAX_TICKS labels
THETA_WORDS = ("Θ", "post-", "pre-", "Re-attention", "multiply V", "last panel")
# Axis titles of axes that number blocks or heads.
COUNT_AXIS_TITLE = re.compile(r"(block|block [pq]|block of .*|(input |output )?head|Re-attention block)")


@pytest.fixture(scope="module")
def comparison() -> ComparisonResult:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return compare(tiny("vit16", DEPTH), tiny("deepvit16", DEPTH), images, device="cpu", num_examples=1, progress=False)


def all_figures(comparison: ComparisonResult) -> list[tuple[str, go.Figure]]:
    """Every figure of the report of a comparison and of a plain ViT, of a depth sweep and of a
    training series in which collapse appears, named by element id."""
    results = dict(zip(LABELS, (comparison.a, comparison.b)))
    drawn = [
        item
        for metric in catalogue.METRICS
        for spec in metric.figures
        for chosen in (results, {LABELS[0]: comparison.a})
        for item in draw(spec, chosen, comparison if len(chosen) == 2 else None)
    ]
    depth_sweep = SweepResult(
        [SweepEntry.of(result, label) for label, result in results.items()],
        "depth",
        comparison.a.settings,
        comparison.a.images,
    )
    series = SweepResult(
        [_entry(f"vit-epoch{step}", step, start, DEPTH) for step, start in ((1, None), (2, 8), (5, 4))],
        "epoch",
        comparison.a.settings,
        comparison.a.images,
    )
    drawn += draw_sweep(depth_sweep) + draw_sweep(series) + draw_sweep(series, relative_depth=True)
    return [(item.element_id, item.figure) for item in drawn]


def _layout(fig: go.Figure) -> dict:
    return fig.layout.to_plotly_json()


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text)


# ----------------------------------------------------------------------------- ticks


@pytest.mark.parametrize("most", [style.MAX_TICKS, style.MAX_HEATMAP_TICKS])
def test_count_ticks_label_the_first_and_last_block_and_a_few_between(most: int) -> None:
    for count in range(1, 129):
        ticks = style.count_ticks(count, most)
        assert ticks[0] == 1 and ticks[-1] == count and len(ticks) <= most, (count, ticks)
        assert ticks == sorted(set(ticks)) and set(ticks) <= set(range(1, count + 1))
        step = style.tick_step(count, most - 1)
        inner = ticks[1:-1]
        assert all(tick % step == 0 for tick in inner), (count, ticks)
        # no two labels closer than half a step
        assert all(b - a >= step / 2 for a, b in zip(ticks, ticks[1:])), (count, ticks)
    assert style.count_ticks(32) == [1, *range(4, 33, 4)]  # every 4th block plus the first
    assert style.count_ticks(32, style.MAX_HEATMAP_TICKS) == [1, 8, 16, 24, 32]
    assert style.count_ticks(6) == [1, 2, 3, 4, 5, 6]
    assert style.sparse_ticks([21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]) == [21, 22, 24, 26, 28, 30, 32]


def test_axes_of_blocks_and_heads_carry_at_most_nine_labels(comparison: ComparisonResult) -> None:
    checked = 0
    for name, fig in all_figures(comparison):
        for axis_name, axis in _layout(fig).items():
            if not re.fullmatch(r"[xy]axis\d*", axis_name):
                continue
            title = _plain((axis.get("title") or {}).get("text") or "")
            if not COUNT_AXIS_TITLE.fullmatch(title):
                continue
            assert axis.get("tickmode") == "array", (name, axis_name, title)
            assert len(axis["tickvals"]) <= style.MAX_TICKS, (name, axis_name, axis["tickvals"])
            checked += 1
    assert checked >= 20


# ----------------------------------------------------------------------------- colour bars, text, legends


def _colour_bars(fig: go.Figure) -> list[dict]:
    layout = _layout(fig)
    bars = [value["colorbar"] for key, value in layout.items() if key.startswith("coloraxis") and "colorbar" in value]
    used = {trace.coloraxis for trace in fig.data if getattr(trace, "coloraxis", None)}
    assert {key for key in layout if key.startswith("coloraxis")} <= used | {None}, "a colour axis nothing uses"
    return bars


def test_colour_bars_stand_in_the_right_margin_side_by_side(comparison: ComparisonResult) -> None:
    checked = 0
    for name, fig in all_figures(comparison):
        bars = _colour_bars(fig)
        if not bars:
            continue
        margin = fig.layout.margin.r
        assert margin >= style.colour_bars_margin(len(bars)), name
        first, *others = bars
        # The first right of the plot area (paper x 1, beyond every panel's domain), the others
        # at fixed offsets from the figure's right edge, inside the margin and not overlapping.
        assert (first["x"], first["xref"], first["xanchor"]) == (1.0, "paper", "left"), name
        domains = [axis.domain[1] for axis in fig.select_xaxes() if axis.domain is not None]
        assert all(end <= first["x"] for end in domains), name
        offsets = [bar["xpad"] for bar in others]
        for bar in others:
            assert (bar["x"], bar["xref"], bar["xanchor"]) == (1.0, "container", "right"), name
            assert bar["xpad"] + style.COLOUR_BAR_PX <= margin - style.COLOUR_BAR_GAP_PX, name
        assert offsets == sorted(offsets, reverse=True) and len(set(offsets)) == len(offsets), name
        assert all(b - a >= style.COLOUR_BAR_PX for a, b in zip(offsets[::-1], offsets[::-1][1:])), name
        for bar in bars:  # each names its quantity in lines that fit the bar's room
            lines = _plain(bar["title"]["text"].replace("<br>", "\n")).split("\n")
            assert all(0 < len(line) <= style.COLOUR_BAR_TITLE_CHARACTERS for line in lines), (name, lines)
        checked += 1
    assert checked >= 10


def test_no_text_stands_on_the_plot_area(comparison: ComparisonResult) -> None:
    """Annotations are panel titles above the panels or notes where there is no data; the
    threshold lines (rho, ln T, the near-uniform cut-off, where collapse appears) are named
    in the legend."""
    for name, fig in all_figures(comparison):
        tops = {round(axis.domain[1], 6) for axis in fig.select_yaxes() if axis.domain is not None}
        for annotation in fig.layout.annotations:
            if annotation.name == style.NO_DATA:
                continue
            assert not re.fullmatch(r"[xy]\d*", annotation.xref or "") and not re.fullmatch(
                r"[xy]\d*", annotation.yref or ""
            ), (name, annotation.text)
            # A title standing on top of a panel: at its axis domain's top, or of the whole plot.
            on_top = annotation.y >= 1.0 if annotation.yref.endswith("domain") else round(annotation.y, 6) in tops
            assert annotation.yanchor == "bottom" and (on_top or annotation.y >= 1.0), (name, annotation.text)
        for shape in fig.layout.shapes:
            assert not (shape.label and shape.label.text), name


def test_reference_lines_are_named_in_the_legend(comparison: ComparisonResult) -> None:
    names = {name: [trace.name for trace in fig.data] for name, fig in all_figures(comparison)}
    assert any(name.startswith("rho = ") for name in names["fig-similarity-ratio"])
    assert any(name.startswith("uniform attention: ln T") for name in names["fig-entropy-curves"])
    assert any(name.startswith("near-uniform above") for name in names["fig-attention-regimes"])
    assert "ViT: collapse appears (epoch 2)" in names["fig-sweep-similar-blocks"]


def test_legends_stand_right_of_the_plot_and_titles_fit(comparison: ComparisonResult) -> None:
    for name, fig in all_figures(comparison):
        if any(trace.showlegend is not False and trace.name for trace in fig.data if trace.type == "scatter"):
            legend = fig.layout.legend
            assert legend.x >= 1.0 and legend.xanchor == "left" and legend.orientation == "v", name
        lines = fig.layout.title.text.split("<br>")
        assert all(len(_plain(line)) <= style.TITLE_CHARACTERS for line in lines), (name, lines)
        # Figures of a fixed width fit a ~750 px column (the app at 1100 px with its sidebar open).
        if fig.layout.width is not None:
            assert fig.layout.width <= 750, (name, fig.layout.width)
            fits = (fig.layout.width - 20) // style.TITLE_CHARACTER_PX
            assert all(len(_plain(line)) <= fits for line in lines), (name, lines)


def test_wrapped_titles_get_room_above_the_plot() -> None:
    long = "word " * 40
    fig = style.finish(go.Figure(), long, 400)
    lines = fig.layout.title.text.count("<br>") + 1
    assert lines >= 3 and fig.layout.margin.t == 80 + style.TITLE_LINE_PX * (lines - 1)
    assert fig.layout.height == 400 + style.TITLE_LINE_PX * (lines - 1)


@pytest.mark.slow
def test_ablation_figures_follow_the_layout_rules() -> None:
    model = tiny("deepvit16", DEPTH).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 5, (4,), generator=generator)
    result = ablate(model, images, studies=("block", "head"), device="cpu", batch_size=4, progress=False)
    drawn = draw_ablation(result)
    assert {item.element_id for item in drawn} >= {"fig-ablation-effect", "fig-head-importance"}
    for item in drawn:
        fig = item.figure
        bars = _colour_bars(fig)
        if bars:
            assert fig.layout.margin.r >= style.colour_bars_margin(len(bars))
            assert bars[0]["xref"] == "paper" and bars[0]["x"] == 1.0
        assert all(len(axis.tickvals) <= style.MAX_TICKS for axis in fig.select_xaxes() if axis.tickvals is not None), (
            item.element_id
        )


# ----------------------------------------------------------------------------- captions


def test_captions_of_a_plain_vit_speak_of_no_head_mixing(comparison: ComparisonResult) -> None:
    plain = {LABELS[0]: comparison.a}
    captions = [item.caption for metric in catalogue.METRICS for spec in metric.figures for item in draw(spec, plain)]
    assert len(captions) >= 10
    for caption in captions:
        assert not any(word in caption for word in THETA_WORDS), caption
    sweep = SweepResult([SweepEntry.of(comparison.a, "vit")], "depth", comparison.a.settings, comparison.a.images)
    for item in draw_sweep(sweep):
        assert not any(word in item.caption + item.figure.layout.title.text for word in THETA_WORDS), item.caption


def test_cross_layer_caption_reads_collapse_on_the_scale_drawn(comparison: ComparisonResult) -> None:
    results = dict(zip(LABELS, (comparison.a, comparison.b)))
    spec, other = catalogue.figure_named("layer_similarity"), catalogue.figure_named("layer_similarity_other_kind")
    for chosen in (results, {LABELS[0]: comparison.a}):
        for item in draw(spec, chosen) + draw(other, chosen):
            signed = item.figure.layout.coloraxis.cmin < 0
            assert ("diverging" in item.caption and "dark red square" in item.caption) == signed, item.caption
            assert ("bright square" in item.caption) == (not signed), item.caption
            assert ("deepvit (B) minus vit (A)" in item.caption) == (len(item.figure.data) == 3), item.caption
    # The post-Θ maps of the comparison are signed; the plain ViT's softmax maps are not.
    (post,) = draw(spec, results)
    (plain,) = draw(spec, {LABELS[0]: comparison.a})
    assert post.figure.layout.coloraxis.cmin < 0 <= plain.figure.layout.coloraxis.cmin


def test_no_difference_panel_no_difference_sentence() -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixed = compare(tiny("vit16", 2), tiny("deepvit16", 3), images, device="cpu", num_examples=1, progress=False)
    (item,) = draw(catalogue.figure_named("layer_similarity"), {LABELS[0]: mixed.a, LABELS[1]: mixed.b})
    assert len(item.figure.data) == 2 and "minus" not in item.caption and "last panel" not in item.caption


def test_overlay_caption_names_pre_and_post_rows_only_for_head_mixing(comparison: ComparisonResult) -> None:
    spec = catalogue.figure_named("cls_attention")
    (plain,) = draw(spec, {LABELS[0]: comparison.a})
    (mixing,) = draw(spec, {LABELS[1]: comparison.b})
    assert not any(word in plain.caption for word in THETA_WORDS)
    assert "pre-Θ" in mixing.caption and "post-Θ" in mixing.caption and "diverging" in mixing.caption
