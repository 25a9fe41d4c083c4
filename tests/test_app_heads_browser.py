"""The Heads view in headless Chromium: a click on a patch of an attention map makes it the
query (the typed row and column follow), and the picker and maps read well at a laptop's
1100 px and at 1500 px (screenshots in /tmp/deepvit_diag_app_screens/<case>/)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RENDER_TIMEOUT_MS,
    _assert_no_exception_box,
    _open_view,
    _screenshot,
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
    _assert_no_exception_box(page)


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


def _overlapping(page, selector: str) -> list[str]:
    """Pairs of elements matching ``selector`` whose boxes overlap, and elements whose text is cut."""
    return page.evaluate(
        """(selector) => {
            const found = [];
            const elements = [...document.querySelectorAll(selector)].filter((e) => e.offsetParent !== null);
            const boxes = elements.map((e) => e.getBoundingClientRect());
            for (let i = 0; i < boxes.length; i++) {
                const element = elements[i];
                if (element.scrollWidth > element.clientWidth + 1) found.push('cut: ' + element.innerText);
                for (let j = i + 1; j < boxes.length; j++) {
                    const a = boxes[i], b = boxes[j];
                    if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) {
                        found.push(elements[i].innerText + ' overlaps ' + elements[j].innerText);
                    }
                }
            }
            return found;
        }""",
        selector,
    )


def _cut_titles(page) -> list[str]:
    """Titles of the query maps that reach past their figure's right edge."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[class*="st-key-heads_p"] .js-plotly-plot')].flatMap((plot) => {
            const title = plot.querySelector('.gtitle');
            const right = plot.getBoundingClientRect().right;
            return title && title.getBoundingClientRect().right > right + 1 ? [title.textContent] : [];
        })"""
    )


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


def test_a_click_on_a_patch_makes_it_the_query(served_app, tmp_path):
    url, case = served_app
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
        _assert_no_exception_box(page)
        assert page.get_by_role("radio", name="a patch").is_checked()
        title = f"patch ({target[0] + 1}, {target[1] + 1})"
        assert page.locator(".st-key-heads_pre_a .gtitle").first.text_content().endswith(f"{title}, pre-Θ (softmax)")
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

        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 2000})
            page.wait_for_timeout(800)
            _screenshot(page, f"heads_{width}.png", tmp_path, case)
            picker = '[data-testid="stCaptionContainer"], .st-key-heads_image_0 button, .st-key-heads_image_1 button'
            assert _overlapping(page, picker) == [], width
            assert _cut_titles(page) == [], width
