"""The app in a real browser: ``streamlit run`` on 127.0.0.1 and headless Chromium.

Opens the app on the tiny checkpoints at a laptop's and a desktop's width (1100 and 1500 px,
sidebar open), visits every view, and fails on any JavaScript page error, Streamlit exception
box, or text that overlaps other text or is cut (tests/layout_checks.py). Screenshots go to
/tmp/deepvit_diag_screens/app/<tiny|demo>/<width>/; the demo case (marked slow) opens the app
as a user does, on the bundled demo pair.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from layout_checks import LayoutReport, assert_readable, layout_problems
from test_app import VIEWS, app_environment, write_app_files

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path("/tmp/deepvit_diag_screens/app")
# A laptop with the sidebar open, and a desktop.
WIDTHS = (1100, 1500)
START_TIMEOUT_S = 180  # the server imports torch and timm on a shared 2-core machine
RENDER_TIMEOUT_MS = 180_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _demo_pair_installed() -> bool:
    from deepvit_diag.checkpoints import bundled_path

    return bundled_path("vit32").is_file() and bundled_path("deepvit32").is_file()


@pytest.fixture(
    scope="module",
    params=[
        "tiny",
        pytest.param(
            "demo",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not _demo_pair_installed(), reason="the bundled demo weights are not installed"),
            ],
        ),
    ],
)
def served_app(request, tmp_path_factory):
    """The app served on 127.0.0.1: on the tiny checkpoints, or as a user opens it (the demo pair)."""
    folder = tmp_path_factory.mktemp(f"app_{request.param}")
    # The demo case clears the app's variables, so the app opens on its own defaults.
    app_env = app_environment(write_app_files(folder)) if request.param == "tiny" else {}
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    env.update(app_env, OMP_NUM_THREADS="1", DEEPVIT_DIAG_HOME=str(folder / "home"))
    log = folder / "streamlit.log"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/main.py",
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, server, log)
        # The tiny case's checkpoints, which the Sweep view sweeps.
        yield url, request.param, folder if request.param == "tiny" else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_for_run(page) -> None:
    """Until the script has finished and every element has replaced its loading skeleton."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=RENDER_TIMEOUT_MS)


def _exception_boxes(page) -> list[str]:
    boxes = page.locator('[data-testid="stException"]')
    return [boxes.nth(index).inner_text() for index in range(boxes.count())]


def _open_view(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(500)  # the click starts a rerun; give the script state time to leave "notRunning"
    _wait_for_run(page)


def _wait_until_drawn(page, view: str) -> None:
    """Until what each view draws last is on the page."""
    if view == "Overview":
        page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=RENDER_TIMEOUT_MS)
    elif view == "Layer similarity":
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)
        assert page.locator(".js-plotly-plot").count() >= 3  # the heatmaps and one overlay per model
    elif view == "Heads":
        page.get_by_text("Attention of one query token").wait_for(timeout=RENDER_TIMEOUT_MS)
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)


def _run_view(page, view: str, files: Path) -> None:
    """Press the Run button of a view that has one (Ablation, Sweep), so that its results are
    looked at too; the Sweep view sweeps the tiny pair."""
    if view == "Ablation":
        page.get_by_role("button", name="Run ablation").click()
        page.wait_for_timeout(500)
        _wait_for_run(page)
        page.locator('[data-testid="stMain"]').get_by_text("Per block", exact=True).wait_for(timeout=RENDER_TIMEOUT_MS)
    elif view == "Sweep":
        paths = page.get_by_role("textbox", name="Checkpoint files on the server, one per line")
        paths.fill(f"{files / 'vit.safetensors'}\n{files / 'deepvit.safetensors'}")
        paths.press("Control+Enter")  # Streamlit takes a text area's value on Ctrl+Enter or leaving it
        page.wait_for_timeout(500)
        _wait_for_run(page)
        page.get_by_role("button", name="Run sweep").click()
        page.wait_for_timeout(500)
        _wait_for_run(page)
        page.locator('[data-testid="stMain"]').get_by_text("Checkpoints", exact=True).wait_for(
            timeout=RENDER_TIMEOUT_MS
        )
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)


def _fit_height(page) -> None:
    """Make the window as tall as the view, so that the screenshot and the layout check see all of it
    (Streamlit scrolls inside the page, not the page itself)."""
    width = page.viewport_size["width"]
    page.set_viewport_size({"width": width, "height": 900})  # a taller window would count as content
    height = page.evaluate(
        "Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
        ".map(element => element.scrollHeight))"
    )
    page.set_viewport_size({"width": width, "height": max(900, int(height) + 40)})
    page.wait_for_timeout(300)  # Plotly redraws on resize


@dataclass
class ViewSeen:
    """One view at one width as the browser drew it."""

    width: int
    view: str
    screenshot: Path
    exceptions: list[str]
    layout: LayoutReport


@dataclass
class AppSeen:
    views: list[ViewSeen]
    page_errors: list[str]
    tabs: list[str]  # the views the app offers, as its tabs name them


@pytest.fixture(scope="module")
def app_seen(served_app) -> AppSeen:
    """Every view at every width of WIDTHS with the sidebar open, and the page errors on the way.
    Screenshots go to SCREENSHOTS/<case>/<width>/."""
    from playwright.sync_api import sync_playwright

    url, case, files = served_app
    seen: list[ViewSeen] = []
    page_errors: list[str] = []
    tabs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.on("pageerror", lambda error: page_errors.append(str(error)))
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("tab", name=VIEWS[0]).wait_for(timeout=RENDER_TIMEOUT_MS)
                _wait_for_run(page)
                assert page.locator('[data-testid="stSidebar"][data-collapsed="false"]').count() == 1
                tabs = page.get_by_role("tab").all_inner_texts()
                folder = SCREENSHOTS / case / str(width)
                folder.mkdir(parents=True, exist_ok=True)
                for number, view in enumerate(VIEWS, start=1):
                    if number > 1:
                        _open_view(page, view)
                    if files is not None:
                        _run_view(page, view, files)
                    _wait_until_drawn(page, view)
                    _fit_height(page)
                    screenshot = folder / f"{number}_{view.lower().replace(' ', '_')}.png"
                    page.screenshot(path=str(screenshot), full_page=True)
                    seen.append(ViewSeen(width, view, screenshot, _exception_boxes(page), layout_problems(page)))
                page.close()
        finally:
            browser.close()
    return AppSeen(seen, page_errors, tabs)


def test_every_view_reads_at_laptop_and_desktop_widths(app_seen):
    """Every view drawn without error, and no text that overlaps or is cut (one test, so that
    pytest-xdist starts one server and one browser for it)."""
    assert app_seen.tabs == list(VIEWS)  # a new view is visited here too
    assert [(item.width, item.view) for item in app_seen.views] == [(w, view) for w in WIDTHS for view in VIEWS]
    assert not app_seen.page_errors, app_seen.page_errors
    for item in app_seen.views:
        assert item.exceptions == [], f"{item.view} at {item.width} px: {item.exceptions[0]}"
        assert item.screenshot.stat().st_size > 0
        assert item.layout.texts > 20, f"{item.view} at {item.width} px shows almost no text"
    assert_readable({f"{item.view} at {item.width} px": item.layout for item in app_seen.views})
