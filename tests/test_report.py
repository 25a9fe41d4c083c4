"""Figures, summary sentences and report.html, on tiny real models and on
hand-made results whose numbers are known; one test opens the report in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import timm
import torch
from layout_checks import LayoutReport, assert_readable, layout_problems
from PIL import Image

from deepvit_diag import catalogue
from deepvit_diag.analysis import compare
from deepvit_diag.figures import head_mixing as head_mixing_figures
from deepvit_diag.figures import overlays as overlay_figures
from deepvit_diag.figures import similarity as similarity_figures
from deepvit_diag.figures import style
from deepvit_diag.figures.drawing import draw
from deepvit_diag.introspection import Geometry
from deepvit_diag.metrics import Accuracy
from deepvit_diag.report import build_report, report_figures, write_report
from deepvit_diag.results import AnalysisResult, ComparisonResult
from deepvit_diag.settings import Settings
from deepvit_diag.summary import block_list, comparison_findings, model_findings, summary_rows

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path("/tmp/deepvit_diag_screens")
# A laptop and a desktop window.
WIDTHS = (1100, 1500)
LABELS = ["vit (A)", "deepvit (B)"]


def tiny(name: str, depth: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, depth=depth, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)


@pytest.fixture(scope="module")
def comparison() -> ComparisonResult:
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return compare(tiny("vit16"), tiny("deepvit16"), images, device="cpu", num_examples=2, progress=False)


def synthetic(
    ratio: list[float], cross_head: float, reattention: bool = False, uniformity: list[float] | None = None
) -> AnalysisResult:
    """A result with chosen similarity ratios, cross-head similarity and head-averaged
    uniformity (default 0.3 everywhere: selective maps; other arrays flat)."""
    blocks, heads = len(ratio), 2
    settings = Settings()
    uniform = np.repeat(np.asarray(uniformity or [0.3] * blocks, dtype=np.float32)[:, None], heads, axis=1)
    grid = np.broadcast_to(np.asarray(ratio, np.float32), (len(settings.grid_ks), len(settings.grid_taus), blocks))
    similarity = np.full((blocks, blocks), 0.5, dtype=np.float32)
    np.fill_diagonal(similarity, 1.0)
    cross = np.full((blocks, heads, heads), cross_head, dtype=np.float32)
    arrays = {
        **{f"similarity_{kind}": similarity for kind in ("pre", "post")},
        **{f"ratio_{kind}": np.asarray(ratio, dtype=np.float32) for kind in ("pre", "post")},
        **{f"cross_head_{kind}": cross for kind in ("pre", "post")},
        **{f"uniformity_{kind}": uniform for kind in ("pre", "post")},
        **{f"ratio_grid_{kind}": grid.copy() for kind in ("pre", "post")},
        "entropy": np.ones((blocks, heads), np.float32),
        "attention_distance": np.ones((blocks, heads), np.float32),
        "token_similarity": np.zeros(blocks, np.float32),
        "rank_residual": np.ones(blocks, np.float32),
        "block_influence": np.zeros(blocks, np.float32),
        "cka": np.eye(blocks, dtype=np.float32),
    }
    mixing_blocks = (0,) if reattention else ()
    arrays["theta"] = np.tile(np.eye(heads, dtype=np.float32), (len(mixing_blocks), 1, 1))
    arrays["theta_blocks"] = np.array(mixing_blocks, dtype=np.int64)
    if reattention:
        arrays["ratio_post"] = np.zeros(blocks, np.float32)
        arrays["ratio_grid_post"] = np.zeros_like(grid)
    geometry = Geometry(blocks, heads, 1, (8, 8), (2, 2), (16, 16), mixing_blocks)
    images = {"description": "none", "count": 8, "skipped": 0}
    return AnalysisResult({"description": "synthetic"}, geometry, settings, images, 8, arrays)


# ----------------------------------------------------------------------------- summary wording


def test_block_list_numbers_blocks_from_one_and_joins_runs() -> None:
    assert block_list([0, 2, 3, 4, 7]) == "1, 3-5, 8"
    assert block_list([]) == ""


def test_findings_state_the_collapsed_run_from_summary_numbers() -> None:
    collapsed = synthetic([0.1, 0.5, 0.95, 0.97], cross_head=0.2)
    sentences = model_findings("M", collapsed)
    assert "2 of 4 blocks are similar" in sentences[0]
    assert "collapses from block 3 on: every block from 3 to 4 attends selectively" in sentences[0]
    assert "heads within a block are dissimilar (mean cross-head similarity 0.20" in " ".join(sentences)
    healthy = synthetic([0.1, 0.2, 0.3, 0.1], cross_head=0.6)
    assert "no block has a similarity ratio above rho = 0.9" in model_findings("M", healthy)[0]
    assert "alike" in " ".join(model_findings("M", healthy))


def test_comparison_findings_name_the_model_with_fewer_similar_blocks() -> None:
    a, b = synthetic([0.1, 0.95, 0.96, 0.97], 0.2), synthetic([0.1, 0.2, 0.3, 0.4], 0.2, reattention=True)
    cka_ab = np.eye(4, dtype=np.float32)
    sentences = comparison_findings("A", "B", ComparisonResult(a, b, cka_ab))
    assert sentences[0] == "B has fewer similar blocks than A (0 of 4 against 3 of 4)."
    assert sentences[1] == "Collapsed run (selective similar blocks up to the last): from block 2 in A; none in B."
    neither = comparison_findings("vit32 (A)", "b", ComparisonResult(b, b, cka_ab))
    assert neither[1] == "Neither vit32 (A) nor b has a collapsed run."  # a label keeps its case
    assert any("mean linear CKA 1.00" in s for s in sentences)
    assert any(s.startswith("B: Re-attention changes the maps") for s in sentences)


def test_near_uniform_similar_blocks_are_never_called_collapse() -> None:
    uniform = synthetic([0.1, 0.5, 0.95, 0.97], cross_head=0.9, uniformity=[0.3, 0.3, 0.95, 0.99])
    summary = uniform.summary()
    assert summary["similar_block_indices"] == [2, 3] and summary["near_uniform_block_indices"] == [2, 3]
    assert summary["collapsed_block_indices"] == [] and summary["collapse_start"] is None
    sentences = model_findings("M", uniform)
    assert "but every one of them is near-uniform, so none is collapse" in sentences[0]
    assert "M: attention is near-uniform in blocks 3-4 (post-Θ maps): their similarity says nothing" in sentences[1]
    assert not any("collapses from" in sentence for sentence in sentences)
    assert dict(summary_rows({"M": uniform}))["near-uniform blocks (not collapse)"] == ["2 of 4: 3-4"]
    # Only the selective tail counts: block 4 near-uniform breaks the run at the end.
    broken = synthetic([0.1, 0.5, 0.95, 0.97], cross_head=0.2, uniformity=[0.3, 0.3, 0.3, 0.99])
    assert broken.summary()["collapsed_block_indices"] == [2] and broken.collapse_start() is None
    assert "do not reach the last block" in model_findings("M", broken)[0]


def test_a_verdict_that_changes_near_the_defaults_gets_one_finding() -> None:
    steady = synthetic([0.1, 0.5, 0.99, 0.99], cross_head=0.2)
    assert not any("depends on the thresholds" in sentence for sentence in model_findings("M", steady))
    fragile = synthetic([0.1, 0.5, 0.99, 0.99], cross_head=0.2)
    fragile.arrays["ratio_grid_post"][0] = 0.0  # at k = 1 no block is similar
    assert fragile.summary()["band_collapse_starts"] == [None, 2]
    (sentence,) = [s for s in model_findings("M", fragile) if "depends on the thresholds" in s]
    assert sentence == (
        "M: the verdict depends on the thresholds: with k 1-3, tau 0.4-0.6 and rho 0.85-0.95, "
        "0 to 2 blocks are similar and the collapse start is none or block 3."
    )


def test_headline_has_both_kinds_for_head_mixing_models() -> None:
    rows = dict(summary_rows({"D": synthetic([0.1, 0.95, 0.96, 0.97], 0.2, reattention=True)}))
    assert rows["similar blocks (ratio > 0.9), pre-Θ"] == ["3 of 4: 2-4"]
    assert rows["similar blocks (ratio > 0.9), post-Θ"] == ["0 of 4"]
    assert rows["collapse starts at block, pre-Θ"] == ["2"] and rows["collapse starts at block, post-Θ"] == ["none"]
    (finding,) = [s for s in model_findings("D", synthetic([0.1] * 4, 0.2, reattention=True)) if "Re-attention" in s]
    assert "not on the same scale" in finding and "BatchNorm outputs, centred and signed" in finding


def test_summary_rows_show_blocks_from_one() -> None:
    rows = dict(summary_rows({"M": synthetic([0.1, 0.5, 0.95, 0.97], 0.2)}))
    assert rows["similar blocks (ratio > 0.9)"] == ["2 of 4: 3-4"]
    assert rows["collapse starts at block"] == ["3"]


def test_accuracy_row_and_finding_or_why_there_is_none() -> None:
    unlabelled = synthetic([0.1, 0.5, 0.95, 0.97], 0.2)
    labelled = dataclasses.replace(unlabelled, accuracy=Accuracy(8, {1: 6, 5: 8}, "class folders"))
    assert dict(summary_rows({"M": labelled}))["top-1 / top-5 accuracy"] == ["75.0% / 100.0% (8 labelled images)"]
    assert model_findings("M", labelled)[-1] == "M: top-1 accuracy 75.0%, top-5 100.0% on 8 labelled images."
    (cell,) = dict(summary_rows({"M": unlabelled}))["top-1 / top-5 accuracy"]
    assert cell.startswith("n/a: not recorded")
    assert not any("accuracy" in sentence for sentence in model_findings("M", unlabelled))


# ----------------------------------------------------------------------------- figures


def _axes(fig) -> dict[str, dict]:
    layout = fig.to_plotly_json()["layout"]
    return {name: value for name, value in layout.items() if re.fullmatch(r"[xy]axis\d*", name)}


def test_every_report_figure_has_a_title_and_axis_titles(comparison: ComparisonResult) -> None:
    for item in report_figures(comparison, LABELS):
        assert item.figure.layout.title.text, item.div_id
        axes = _axes(item.figure)
        # The first panel's y axis always says what it shows (for overlays: which block).
        assert (axes["yaxis"].get("title") or {}).get("text"), item.div_id
        if axes["xaxis"].get("showticklabels") is not False:  # overlays have pixel axes without ticks
            bottom = [
                axis for name, axis in axes.items() if name.startswith("x") and (axis.get("title") or {}).get("text")
            ]
            assert bottom, f"{item.div_id}: no titled x axis"


def test_block_axes_start_at_one_and_heatmaps_share_a_colour_scale(comparison: ComparisonResult) -> None:
    results = {LABELS[0]: comparison.a, LABELS[1]: comparison.b}
    fig = similarity_figures.layer_similarity(results)
    heatmaps = [trace for trace in fig.data if trace.type == "heatmap"]
    assert list(heatmaps[0].x) == [1, 2, 3]
    assert heatmaps[0].coloraxis == heatmaps[1].coloraxis == "coloraxis"
    assert heatmaps[2].coloraxis == "coloraxis2"  # B - A on its own diverging scale
    np.testing.assert_array_equal(np.asarray(heatmaps[2].z), comparison.b.similarity() - comparison.a.similarity())
    ratio = similarity_figures.similarity_ratio(results)
    np.testing.assert_array_equal(np.asarray(ratio.data[0].y), comparison.a.ratio())
    assert any(shape.y0 == 0.9 for shape in ratio.layout.shapes)  # the rho line
    # Each colour bar says which panels it belongs to; both stand right of every panel, side by side.
    similarity_bar, difference_bar = fig.layout.coloraxis.colorbar, fig.layout.coloraxis2.colorbar
    assert similarity_bar.title.text == "similarity<br>(A, B)"
    assert difference_bar.title.text == "difference<br>B − A"
    # The similarity bar just right of the plot area, the difference bar at the figure's right edge.
    assert (similarity_bar.x, similarity_bar.xref, difference_bar.x, difference_bar.xref) == (
        1,
        "paper",
        1,
        "container",
    )
    assert fig.layout.margin.r >= style.colour_bars_margin(2)
    # Curves over blocks start at block 1, not 0.
    for curves in (
        ratio,
        similarity_figures.cross_head_curves(results),
        similarity_figures.entropy_curves(results),
        similarity_figures.head_curves(results, "attention_distance", "pixels", "distance"),
        similarity_figures.block_curves(results, "token_similarity", "cosine", "token similarity"),
        similarity_figures.block_curves(results, "rank_residual", "residual", "rank residual"),
    ):
        xaxis = curves.layout.xaxis
        assert xaxis.tickvals == (1, 2, 3) and xaxis.range == (0.5, 3.5), curves.layout.title.text


def test_theta_and_cls_figures(comparison: ComparisonResult) -> None:
    assert head_mixing_figures.theta_heatmaps(comparison.a) is None
    theta = head_mixing_figures.theta_heatmaps(comparison.b)
    assert len(theta.data) == len(comparison.b.geometry.mixing_blocks) == 3
    np.testing.assert_array_equal(np.asarray(theta.data[0].z), comparison.b.arrays["theta"][0])
    cls = overlay_figures.cls_attention(comparison.b, example=1)
    # first, middle, last block, each with a pre and a post row, one panel per head
    assert len(cls.data) == 3 * 2 * 4
    assert len(cls.layout.images) == len(cls.data)
    np.testing.assert_array_equal(np.asarray(cls.data[0].z), comparison.b.arrays["example_cls_pre"][1, 0, 0])
    # Pre- and post-Θ rows alternate: their bars are side by side at full height, in
    # different colours, titled by the rows they belong to.
    pre, post = cls.layout.coloraxis, cls.layout.coloraxis2
    assert "pre-Θ rows" in pre.colorbar.title.text and "post-Θ rows" in post.colorbar.title.text
    assert pre.colorscale != post.colorscale
    assert pre.colorbar.len == post.colorbar.len == 0.9 and pre.colorbar.xpad > post.colorbar.xpad
    assert cls.layout.yaxis.title.text.endswith("pre-Θ") and cls.layout[f"yaxis{4 + 1}"].title.text.endswith("post-Θ")
    # A small (32 px) image is a PNG with its pixels repeated, not a blurred JPEG thumbnail.
    source = cls.layout.images[0].source
    assert source.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    scale = image.width // 32
    assert image.size == (32 * scale, 32 * scale) and image.width >= style.OVERLAY_UPSAMPLED_PIXELS
    np.testing.assert_array_equal(
        np.asarray(image.convert("RGB"))[::scale, ::scale], comparison.b.arrays["example_images"][1]
    )
    with pytest.raises(IndexError):
        overlay_figures.cls_attention(comparison.b, example=5)


# ----------------------------------------------------------------------------- report.html


def test_report_is_self_contained_with_one_div_per_figure(comparison: ComparisonResult) -> None:
    page = build_report(comparison, LABELS, command="deepvit-diag compare ...")
    ids = [item.div_id for item in report_figures(comparison, LABELS)]
    for div_id in ids:
        assert f'id="{div_id}"' in page
    assert page.count("Plotly.newPlot(") == len(ids)
    assert len(re.findall(r"<script\b", page)) == len(ids) + 1  # plotly.js once, then one per figure
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE)
    assert not re.search(r"<(img|iframe)[^>]*\bsrc\s*=\s*[\"']?https?:", page, re.IGNORECASE)
    assert "fig-cka-across" in ids and "fig-theta-heatmaps-1" in ids and "fig-cls-attention-1-1" in ids
    assert comparison.b.model["description"] in page
    assert "Headline numbers" in page and "rho: similar-block threshold" in page
    # No labels on a tensor of images: the accuracy row and the model cards say why.
    assert "top-1 / top-5 accuracy" in page and "labels (accuracy)" in page and "carry no labels" in page


@dataclasses.dataclass
class PageSeen:
    """A self-contained page as headless Chromium drew it at one or more window widths."""

    rendered: int  # plotly figures drawn, the fewest at any width
    problems: list[str]  # console errors, page errors and network requests
    layouts: dict[int, LayoutReport]  # overlapping and cut text, by width


def render_at_widths(path: Path, screenshots: dict[int, Path], expected: int) -> PageSeen:
    """Open a self-contained page in headless Chromium at each width of ``screenshots``, wait
    until ``expected`` plotly figures have drawn, and note how many did, every console error,
    page error and network request (a page that opens offline makes none) and the text that
    overlaps or is cut; a full-page screenshot goes to the width's path."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    counts: list[int] = []
    layouts: dict[int, LayoutReport] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            for width, screenshot in screenshots.items():
                page = browser.new_page(viewport={"width": width, "height": 1000})
                page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: problems.append(str(error)))
                # Anything not file:// would be a network request: the page must not make one.
                page.route(
                    re.compile(r"^(?!file:|data:).*"), lambda route: (problems.append(route.request.url), route.abort())
                )
                page.goto(path.resolve().as_uri())
                page.wait_for_function(
                    "n => [...document.querySelectorAll('.plotly-graph-div')]"
                    ".filter(d => d.querySelector('.main-svg')).length === n",
                    arg=expected,
                    timeout=120_000,
                )
                counts.append(
                    page.evaluate(
                        "[...document.querySelectorAll('.plotly')].filter(d => d.querySelector('.main-svg')).length"
                    )
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
                layouts[width] = layout_problems(page)
                page.close()
        finally:
            browser.close()
    return PageSeen(min(counts), problems, layouts)


def render_in_chromium(path: Path, expected: int, screenshot: str) -> tuple[int, list[str]]:
    """How many of ``expected`` plotly figures drew at 1400 px, and the page's errors and
    requests (see ``render_at_widths``)."""
    seen = render_at_widths(path, {1400: Path(screenshot)}, expected)
    return seen.rendered, seen.problems


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_report_renders_in_headless_chromium(comparison: ComparisonResult, tmp_path: Path) -> None:
    """report.html at a laptop's and a desktop's width: every figure drawn, no error, no request,
    no text that overlaps or is cut; screenshots in SCREENSHOTS/report/."""
    path = write_report(tmp_path / "report.html", comparison, LABELS)
    screenshots = {width: SCREENSHOTS / "report" / f"report_{width}.png" for width in WIDTHS}
    seen = render_at_widths(path, screenshots, len(report_figures(comparison, LABELS)))
    assert seen.rendered == len(report_figures(comparison, LABELS))
    assert seen.problems == []
    assert all(layout.texts > 100 for layout in seen.layouts.values())
    assert_readable({f"at {width} px": layout for width, layout in seen.layouts.items()})


def test_saved_comparison_reloads_into_the_same_report_figures(comparison: ComparisonResult, tmp_path: Path) -> None:
    comparison.save(tmp_path)
    again = ComparisonResult.load(tmp_path)
    assert [item.div_id for item in report_figures(again, LABELS)] == [
        item.div_id for item in report_figures(comparison, LABELS)
    ]
    assert json.loads((tmp_path / "result.json").read_text())["format"] == "deepvit-diag comparison"


def test_models_of_different_depth_get_no_difference_panel() -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixed = compare(
        tiny("vit16", depth=2), tiny("deepvit16", depth=3), images, device="cpu", num_examples=1, progress=False
    )
    results = {LABELS[0]: mixed.a, LABELS[1]: mixed.b}
    assert [trace.coloraxis for trace in similarity_figures.layer_similarity(results).data] == [
        "coloraxis",
        "coloraxis",
    ]
    assert np.asarray(similarity_figures.cka_across(mixed, *LABELS).data[0].z).shape == (2, 3)
    page = build_report(mixed, LABELS)
    assert f"{LABELS[1]} minus {LABELS[0]}" not in page and 'id="fig-cka-across"' in page


def test_entropy_levels_count_blocks_by_share_of_ln_t() -> None:
    result = synthetic([0.1, 0.2, 0.3, 0.4], 0.2)
    tokens = result.geometry.num_tokens  # 1 class token + a 2x2 grid
    # Heads differ within a block: the summary averages heads first, then compares with ln T.
    shares = np.array([[0.4, 0.6], [0.8, 0.9], [0.9, 1.0], [1.0, 1.0]])
    result.arrays["entropy"] = (shares * math.log(tokens)).astype(np.float32)
    per_block = shares.mean(axis=1)  # 0.5, 0.85, 0.95, 1.0
    summary = result.summary()
    assert summary["blocks_entropy_at_most_0.8"] == sum(share <= 0.8 for share in per_block) == 1
    assert summary["blocks_entropy_at_most_0.9"] == sum(share <= 0.9 for share in per_block) == 2
    assert summary["entropy_relative_median"] == pytest.approx(np.median(per_block), abs=1e-6)
    assert dict(summary_rows({"M": result}))["focused blocks (entropy ≤ 80% · 90% of uniform)"] == ["1 · 2 of 4"]


def test_every_headline_row_carries_its_meaning(comparison: ComparisonResult, tmp_path: Path) -> None:
    import html

    from deepvit_diag.summary import summary_row_meanings

    results = {"A": comparison.a, "B": comparison.b}
    meanings = summary_row_meanings(results)
    assert [label for label, _ in summary_rows(results)] == list(meanings)
    page = write_report(tmp_path / "report.html", comparison, LABELS).read_text(encoding="utf-8")
    for label, meaning in meanings.items():
        assert f'title="{html.escape(meaning, quote=True)}">{html.escape(label)}<sup>' in page
        assert f"<li>{html.escape(meaning)}</li>" in page
    assert "may differ in sign from last minus first" in meanings["attention distance, first → last"]
    assert "model card" not in page or "<h4>model card</h4>" in page


# ----------------------------------------------------------------------------- colour scales


def _resolved(scale: str) -> tuple:
    return go.Figure(layout={"coloraxis": {"colorscale": scale}}).layout.coloraxis.colorscale


def _colour_axes(fig: go.Figure) -> dict[str, dict]:
    layout = fig.layout.to_plotly_json()
    return {name: value for name, value in layout.items() if name.startswith("coloraxis")}


def assert_one_of_the_two_scales(fig: go.Figure, key: str) -> int:
    """Every heatmap of ``fig`` is on a named colour axis, every colour bar names its quantity, and each
    axis is the one sequential scale from black at 0 (non-negative values) or the one diverging scale
    symmetric about 0 (signed values). Returns how many colour axes were checked."""
    sequential, diverging = _resolved(style.SEQUENTIAL), _resolved(style.DIVERGING)
    axes = _colour_axes(fig)
    used = {trace.coloraxis for trace in fig.data if getattr(trace, "coloraxis", None)}
    for trace in fig.data:
        if trace.type == "heatmap":  # every heatmap is on a named colour axis of the layout
            assert trace.coloraxis in axes, (key, trace.name)
    for name in used:
        axis = fig.layout[name]
        values = np.concatenate([np.ravel(np.asarray(t.z, dtype=float)) for t in fig.data if t.coloraxis == name])
        values = values[np.isfinite(values)]
        title = axis.colorbar.title.text
        assert title and title.strip(), (key, name)  # every colour bar names its quantity
        if values.size and values.min() < 0:
            assert axis.colorscale == diverging, (key, name)
            assert axis.cmid == 0 and axis.cmin == -axis.cmax, (key, name)
        else:
            assert axis.colorscale in (sequential, diverging), (key, name)
            if axis.colorscale == sequential:
                assert axis.cmin == 0 and axis.cmax >= values.max(initial=0) - 1e-6, (key, name)
            else:  # a signed quantity that happens to be >= 0 here keeps its zero-centred scale
                assert axis.cmid == 0 and axis.cmin == -axis.cmax, (key, name)
    return len(used)


def test_every_catalogue_figure_uses_the_one_sequential_or_the_one_diverging_scale(comparison) -> None:
    results = {LABELS[0]: comparison.a, LABELS[1]: comparison.b}
    assert _resolved(style.SEQUENTIAL)[0][1] == "rgb(0, 0, 4)"  # black at 0
    # rgb() stops: the app's Plotly draws the hex stop #000004 of the named scale as lavender
    assert all(colour.startswith("rgb(") for _, colour in style.SEQUENTIAL)
    checked = 0
    for metric in catalogue.METRICS:
        for spec in metric.figures:
            for drawn in draw(spec, results, comparison):
                checked += assert_one_of_the_two_scales(drawn.figure, spec.key)
    assert checked >= 8


def test_colour_scale_is_sequential_from_zero_for_non_negative_and_symmetric_for_signed() -> None:
    assert style.colour_scale([np.array([0.0, 0.2]), np.array([0.5])]) == {
        "colorscale": style.SEQUENTIAL,
        "cmin": 0.0,
        "cmax": 0.5,
    }
    signed = style.colour_scale([np.array([-0.3, 0.1]), np.array([2.0, np.nan])])
    assert signed == {"colorscale": style.DIVERGING, "cmin": -2.0, "cmax": 2.0, "cmid": 0.0}


def test_head_mixing_models_get_both_map_kinds_without_a_rerun(comparison) -> None:
    results = {LABELS[0]: comparison.a, LABELS[1]: comparison.b}
    for key in ("layer_similarity", "similarity_ratio"):
        (chosen,) = draw(catalogue.figure_named(key), results)
        (other,) = draw(catalogue.figure_named(f"{key}_other_kind"), results)
        assert "post-Θ" in chosen.figure.layout.title.text and "pre-Θ" in other.figure.layout.title.text
        assert "not on the same scale" in other.caption
        assert draw(catalogue.figure_named(f"{key}_other_kind"), {LABELS[0]: comparison.a}) == []  # a plain ViT
    (ratio,) = draw(catalogue.figure_named("similarity_ratio_other_kind"), results)
    np.testing.assert_array_equal(ratio.figure.data[1].y, comparison.b.ratio("pre"))


def test_robustness_grid_has_one_panel_per_k_and_model(comparison) -> None:
    """Every k of the grid gets its panel (the chosen one named), each the verdict over tau x rho
    that ``robustness`` gives at that k, on one colour scale from 0."""
    results = {LABELS[0]: comparison.a, LABELS[1]: comparison.b}
    (drawn,) = draw(catalogue.figure_named("robustness_grid"), results)
    settings = comparison.a.settings
    assert len(settings.grid_ks) == 3 and f"k = {settings.k}" in drawn.caption
    assert len(drawn.figure.data) == 2 * len(settings.grid_ks)
    titles = [annotation.text for annotation in drawn.figure.layout.annotations]
    assert titles[:3] == [f"k = {k}" + (" (chosen)" if k == settings.k else "") for k in settings.grid_ks]
    # Each row names its model on the left (in the panel titles the names ran into each other).
    assert [drawn.figure.layout[f"yaxis{row * 3 + 1 if row else ''}"].title.text for row in range(2)] == [
        f"{label}<br>rho" for label in LABELS
    ]
    for row, result in enumerate(results.values()):
        grid = result.robustness()
        for column, k in enumerate(settings.grid_ks):
            trace = drawn.figure.data[row * len(settings.grid_ks) + column]
            np.testing.assert_array_equal(trace.z, grid["similar_blocks"][column].T)
            starts = grid["collapse_start"][column].T
            np.testing.assert_array_equal(trace.text, np.where(starts >= 0, (starts + 1).astype(str), "–"))
            assert trace.hovertemplate.startswith(f"k {k}, ") and trace.coloraxis == "coloraxis"
    assert drawn.figure.layout.coloraxis.cmin == 0


def test_robustness_grid_of_k_1_has_no_k_0_panel() -> None:
    result = synthetic([0.1, 0.5, 0.99, 0.99], cross_head=0.2)
    result.settings = dataclasses.replace(result.settings, k=1)
    for name in ("ratio_grid_pre", "ratio_grid_post"):
        result.arrays[name] = result.arrays[name][:2]
    (drawn,) = draw(catalogue.figure_named("robustness_grid"), {"M": result})
    assert [annotation.text for annotation in drawn.figure.layout.annotations] == ["k = 1 (chosen)", "k = 2"]
