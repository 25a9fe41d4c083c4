"""The app in a real browser: ``streamlit run`` on 127.0.0.1 and headless Chromium.

Opens the app on the tiny checkpoints, waits for the layer-similarity heatmap to render,
switches to the Heads view, and fails on any JavaScript page error or Streamlit exception
box. Screenshots go to /tmp/deepvit_diag_app_screens/<tiny|demo>/ and the test's tmp_path;
the demo case (marked slow) opens the app as a user does, on the bundled demo pair.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import app_environment, write_app_files

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
SCREENSHOTS = Path("/tmp/deepvit_diag_app_screens")
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
    params=[
        "tiny",
        pytest.param(
            "demo",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not _demo_pair_installed(), reason="the bundled demo weights are not installed"),
            ],
        ),
    ]
)
def served_app(request, tmp_path):
    """The app served on 127.0.0.1: on the tiny checkpoints, or as a user opens it (the demo pair)."""
    # The demo case clears the app's variables, so the app opens on its own defaults.
    app_env = app_environment(write_app_files(tmp_path)) if request.param == "tiny" else {}
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    env.update(app_env, OMP_NUM_THREADS="1", DEEPVIT_DIAG_HOME=str(tmp_path / "home"))
    log = tmp_path / "streamlit.log"
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
        yield url, request.param
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _screenshot(page, name: str, tmp_path: Path, case: str) -> None:
    (SCREENSHOTS / case).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(tmp_path / name), full_page=True)
    shutil.copy(tmp_path / name, SCREENSHOTS / case / name)


def _wait_for_run(page) -> None:
    """Until the script has finished and every element has replaced its loading skeleton."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=RENDER_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=RENDER_TIMEOUT_MS)


def _assert_no_exception_box(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def _open_view(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(500)  # the click starts a rerun; give the script state time to leave "notRunning"
    _wait_for_run(page)


def test_app_renders_in_chromium(served_app, tmp_path):
    from playwright.sync_api import sync_playwright

    url, case = served_app
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # Tall enough that each screenshot shows a whole view (Streamlit scrolls inside the page).
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("tab", name="Overview").wait_for(timeout=RENDER_TIMEOUT_MS)
            _wait_for_run(page)
            page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=RENDER_TIMEOUT_MS)
            _assert_no_exception_box(page)
            _screenshot(page, "1_overview.png", tmp_path, case)

            _open_view(page, "Layer similarity")
            page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)
            assert page.locator(".js-plotly-plot").count() >= 3  # the heatmaps and one overlay per model
            _assert_no_exception_box(page)
            _screenshot(page, "2_layer_similarity.png", tmp_path, case)

            _open_view(page, "Heads")
            page.get_by_text("Attention of one query token").wait_for(timeout=RENDER_TIMEOUT_MS)
            page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=RENDER_TIMEOUT_MS)
            _assert_no_exception_box(page)
            _screenshot(page, "4_heads.png", tmp_path, case)

            views = (
                (3, "Similarity ratio"),
                (5, "Theta"),
                (6, "More metrics"),
                (7, "Export"),
                (8, "Sweep"),
                (9, "Ablation"),
            )
            for number, view in views:
                _open_view(page, view)
                _assert_no_exception_box(page)
                _screenshot(page, f"{number}_{view.lower().replace(' ', '_')}.png", tmp_path, case)
        finally:
            browser.close()
    assert not page_errors, page_errors
