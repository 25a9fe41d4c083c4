"""The layout checker of tests/layout_checks.py on small pages with known overlaps and cuts."""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_checks import assert_clean_layout, assert_readable, layout_problems

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}"),
]

BASE = "<style>body { margin: 0; font: 16px sans-serif; } .at { position: absolute; }</style>"


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 800, "height": 600})
        finally:
            browser.close()


def check(page, body: str, **options):
    page.set_content(BASE + body)
    return layout_problems(page, **options)


def rotated_labels(gap: int) -> str:
    """Four tick labels turned 45 degrees, ``gap`` px apart: their upright bounding boxes meet
    even when the turned text does not."""
    labels = "".join(
        f'<text x="{40 + i * gap}" y="100" transform="rotate(-45 {40 + i * gap} 100)" font-size="12">block {i}</text>'
        for i in range(4)
    )
    return f'<svg width="400" height="200">{labels}</svg>'


CLEAN = {
    "paragraphs and a row": "<p>One paragraph of text that wraps onto lines</p>"
    '<div style="display:flex; gap:8px"><span>left</span><span>middle</span><span>right</span></div>',
    "nested inline text": "<p>text with <b>bold</b> and <code>code</code> inside</p>",
    "wrapped text in a narrow column": '<div style="width:60px">words that wrap in a narrow column</div>',
    "svg labels apart": '<svg width="300" height="100"><text x="10" y="20">first</text>'
    '<text x="10" y="60">second</text></svg>',
    "turned labels whose upright boxes meet": rotated_labels(gap=30),
    "hidden text on top": '<div class="at" style="top:0">visible</div>'
    '<div class="at" style="top:0; display:none">gone</div>'
    '<div class="at" style="top:0; visibility:hidden">invisible</div>'
    '<div class="at" style="top:0; opacity:0">transparent</div>',
    "a hover label over the plot": '<div class="at" style="top:0">axis title</div>'
    '<svg class="at" style="top:0" width="200" height="50"><g class="hoverlayer"><text y="14">x: 3, y: 4</text></g>'
    "</svg>",
    "text scrolled out of sight in a scrolling box": '<div style="width:100px; overflow-x:auto; white-space:nowrap">'
    '<span style="display:inline-block; width:100px">in sight</span><span>out of sight</span></div>',
    "a line half scrolled out of a list": '<div style="height:30px; overflow-y:auto">line one<br>line two<br>'
    "line three</div>",
    "screen-reader text clipped away whole": '<span>label</span><span class="at" style="top:0; left:0; width:1px; '
    'height:1px; overflow:hidden; clip:rect(0 0 0 0)">for screen readers only</span>',
    "a long path typed into a text box": '<label>Path</label> <input style="width:60px" value="/tmp/a/long/path/x">',
    "a select box wide enough for its choice": '<label>Model</label> <input role="combobox" style="width:200px" '
    'value="vit32">',
    "text on a second line of a short box": '<div style="height:20px; overflow:hidden">one line</div>',
}

OVERLAPPING = {
    "two boxes on the same spot": '<div class="at" style="top:10px; left:10px">first label</div>'
    '<div class="at" style="top:14px; left:30px">second label</div>',
    "two svg labels on one spot": '<svg width="300" height="100"><text x="10" y="20">first</text>'
    '<text x="20" y="24">second</text></svg>',
    "turned labels that touch": rotated_labels(gap=8),
    "html text over svg text": '<svg width="300" height="100"><text x="10" y="20">tick 1</text></svg>'
    '<div class="at" style="top:6px; left:12px">caption</div>',
    "a negative margin pulling a line up": "<p style='margin:0'>first line</p><p style='margin:-12px 0 0'>second</p>",
}

CUT = {
    "ellipsis": '<div style="width:50px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis">'
    "Mean cross-head similarity</div>",
    "hidden overflow": '<div style="width:50px; white-space:nowrap; overflow:hidden">Mean cross-head similarity</div>',
    "hidden overflow below": '<div style="height:10px; overflow:hidden; line-height:20px">a line taller than its box'
    "</div>",
    "half scrolled out of a row that scrolls sideways": '<div style="width:100px; overflow-x:auto; '
    'white-space:nowrap"><span>a chip</span> <span>another chip</span></div>',
    "a select box too narrow for its choice": '<input role="combobox" style="width:60px" '
    'value="deepvit32 (demo weights)">',
    "past the right edge": '<div class="at" style="left:760px; white-space:nowrap">text past the edge</div>',
    "past the left edge": '<div class="at" style="left:-30px">text before the edge</div>',
    "svg text outside its svg": '<svg width="100" height="50"><text x="60" y="20">a label too long</text></svg>',
}


@pytest.mark.parametrize("body", CLEAN.values(), ids=CLEAN.keys())
def test_clean_pages_pass(page, body):
    report = check(page, body)
    assert report.texts > 0
    assert report.problems == []


@pytest.mark.parametrize("body", OVERLAPPING.values(), ids=OVERLAPPING.keys())
def test_overlapping_text_is_found(page, body):
    report = check(page, body)
    assert report.overlaps, "no overlap found"
    assert report.cuts == []


@pytest.mark.parametrize("body", CUT.values(), ids=CUT.keys())
def test_cut_text_is_found(page, body):
    report = check(page, body)
    assert report.cuts, "no cut found"
    assert report.overlaps == []


def test_an_overlap_names_both_texts_and_its_depth(page):
    report = check(
        page,
        '<div class="at" style="top:0; left:0; width:200px; height:20px">metric label</div>'
        '<div class="at" style="top:10px; left:5px">value</div>',
    )
    (overlap,) = report.overlaps
    assert {overlap.first, overlap.second} == {"metric label", "value"}
    # The label's line box is about 18 px tall at 16 px; the value starts 10 px below its top.
    assert 4 < overlap.depth < 12
    assert "metric label" in str(overlap) and "value" in str(overlap)


def test_tolerance_lets_text_touch(page):
    # A line of 16 px text is 17 px tall: the lower line reaches 1 px into the upper one.
    body = '<div class="at" style="top:0">upper</div><div class="at" style="top:16px">lower</div>'
    assert check(page, body, tolerance_px=2).overlaps == []
    assert check(page, body, tolerance_px=0).overlaps


def test_extra_layers_can_be_ignored(page):
    body = '<div class="at" style="top:0">label</div><div class="at popup" style="top:0">menu entry</div>'
    assert check(page, body).overlaps
    assert check(page, body, ignore=(".popup",)).overlaps == []


def test_assert_clean_layout_lists_every_problem(page):
    below = '<div style="margin-top:60px">' + CUT["ellipsis"] + "</div>"
    page.set_content(BASE + OVERLAPPING["two boxes on the same spot"] + below)
    with pytest.raises(AssertionError, match=r"2 layout problems") as failure:
        assert_clean_layout(page, "synthetic")
    assert "overlap" in str(failure.value) and "cut" in str(failure.value)
    page.set_content(BASE + CLEAN["paragraphs and a row"])
    assert assert_clean_layout(page, "synthetic").texts >= 4


def test_problems_inside_one_figure_are_told_from_the_page(page):
    figure = (
        '<div class="js-plotly-plot" id="{id}"><svg class="main-svg" width="200" height="60">'
        '<text x="10" y="20">{first}</text><text x="14" y="24">{second}</text>'
        '<text x="150" y="50">a label running out</text></svg></div>'
    )
    body = figure.format(id="fig-one", first="tick 1", second="tick 2") + (
        '<div class="at" style="top:30px; left:150px">a caption over the figure</div>'
    )
    report = check(page, body)
    overlaps = [problem for problem in report.figure_problems if problem.startswith("overlap")]
    assert len(overlaps) == 1 and "'tick 1' (figure 1 (fig-one): " in overlaps[0] and "'tick 2'" in overlaps[0]
    assert any(
        problem.startswith("cut: 'a label running out' (figure 1 (fig-one)") for problem in report.figure_problems
    )
    assert report.page_problems and all("a caption over the figure" in problem for problem in report.page_problems)


def test_assert_readable_fails_on_the_page_and_inside_figures(page):
    inside = '<div class="js-plotly-plot"><svg width="200" height="60"><text x="10" y="20">tick 1</text>' + (
        '<text x="14" y="24">tick 2</text></svg></div>'
    )
    on_page = '<div style="margin-top:80px">' + CUT["ellipsis"] + "</div>"
    with pytest.raises(AssertionError, match="inside figures:\nfigure only: overlap .*tick 1"):
        assert_readable({"figure only": check(page, inside)})
    with pytest.raises(AssertionError, match="page and figure: cut"):
        assert_readable({"page and figure": check(page, inside + on_page)})
    assert_readable({"clean": check(page, CLEAN["paragraphs and a row"])})
