"""The Heads view in headless Chromium: a click on a patch of an attention map makes it the
query (the typed row and column follow), and the picker and maps read well at a laptop's
1100 px and at 1500 px (screenshots in /tmp/deepvit_diag_screens/app/<case>/)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from layout_checks import assert_readable, layout_problems
from test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RENDER_TIMEOUT_MS,
    SCREENSHOTS,
    _exception_boxes,
    _open_view,
    _wait_for_run,
    served_app,
)

__all__ = ["served_app"]  # the fixture, imported for pytest

pytestmark = pytest.mark.browser
WIDTHS = (1100, 1500)


def _open_heads(page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Heads").wait_for(timeout=RENDER_TIMEOUT_MS)
    _wait_for_run(page)
    _open_view(page, "Heads")
    page.locator(".st-key-heads_pre_a .js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)
    assert _exception_boxes(page) == []


def _typed(page, key: str) -> str:
    return page.locator(f".st-key-{key} input").input_value()


def _click_patch(page, chart_key: str, row: int, column: int, grid: tuple[int, int]) -> None:
    """Click the centre of patch (row, column), 0-based, in the first head's panel of a map:
    where the figure draws that patch's point (``query_attention``), through its own axes."""
    chart = page.locator(f".st-key-{chart_key} .js-plotly-plot").first
    chart.scroll_into_view_if_needed()  # Streamlit scrolls inside the page: the mouse reaches only what is shown
    x, y = chart.evaluate(
        """(plot, index) => {
            const points = plot._fullData.find((trace) => trace.type === 'scatter' && trace.xaxis === 'x');
            const xaxis = plot._fullLayout.xaxis, yaxis = plot._fullLayout.yaxis, box = plot.getBoundingClientRect();
            return [
                box.left + xaxis._offset + xaxis.d2p(points.x[index]),
                box.top + yaxis._offset + yaxis.d2p(points.y[index]),
            ];
        }""",
        row * grid[1] + column,
    )
    page.mouse.move(x, y)
    page.wait_for_timeout(300)  # Plotly finds the point under the pointer on hover
    page.mouse.click(x, y)


@contextmanager
def _chromium_page(width: int) -> Iterator:
    """A Chromium page ``width`` px wide; fails on leaving if the page raised a JavaScript error."""
    from playwright.sync_api import sync_playwright

    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 2000})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            yield page
        finally:
            browser.close()
    assert not page_errors, page_errors


def test_a_click_on_a_patch_makes_it_the_query(served_app):
    url, case, _ = served_app
    with _chromium_page(WIDTHS[0]) as page:
        _open_heads(page, url)
        grid = tuple(
            int(page.locator(f".st-key-heads_{axis} input").get_attribute("max")) for axis in ("row", "column")
        )
        before = (_typed(page, "heads_row"), _typed(page, "heads_column"))
        target = (grid[0] - 1, 0)  # the bottom-left patch: neither the default row nor column
        assert before != (str(target[0] + 1), str(target[1] + 1))
        _click_patch(page, "heads_pre_b", *target, grid)
        page.wait_for_function(
            "([row, column]) => document.querySelector('.st-key-heads_row input').value === row"
            " && document.querySelector('.st-key-heads_column input').value === column",
            arg=[str(target[0] + 1), str(target[1] + 1)],
            timeout=RENDER_TIMEOUT_MS,
        )
        _wait_for_run(page)
        assert _exception_boxes(page) == []
        assert page.get_by_role("radio", name="a patch").is_checked()
        title = f"patch ({target[0] + 1}, {target[1] + 1})"
        assert page.locator(".st-key-heads_pre_b .gtitle").first.text_content().endswith(f"{title}, pre-Θ (softmax)")
        # The typed inputs still drive the query, and a click after typing still wins.
        page.locator(".st-key-heads_column input").fill("2")
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
        _wait_for_run(page)
        assert f"patch ({target[0] + 1}, 2)" in page.locator(".st-key-heads_pre_a .gtitle").first.text_content()
        _click_patch(page, "heads_pre_a", 0, grid[1] - 1, grid)
        page.wait_for_function(
            "(column) => document.querySelector('.st-key-heads_column input').value === column",
            arg=str(grid[1]),
            timeout=RENDER_TIMEOUT_MS,
        )
        assert _typed(page, "heads_row") == "1"

        seen = {}
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 2000})
            page.wait_for_timeout(800)
            (SCREENSHOTS / case).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / case / f"heads_clicked_{width}.png"), full_page=True)
            seen[f"Heads after clicks at {width} px"] = layout_problems(page)
        assert_readable(seen)
