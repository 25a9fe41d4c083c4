"""Two visitors in headless Chromium against one server: the second waits in the device queue, is told
its place, and its Cancel button takes it out of the queue while the first analysis finishes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app import app_environment, write_app_files
from test_app_browser import CHROMIUM, CHROMIUM_ARGS, RENDER_TIMEOUT_MS, ROOT, _free_port, _wait_until_healthy

# Enough images that the first analysis is still running when the second visitor arrives.
NUM_IMAGES = 3000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}"),
]


@pytest.fixture
def busy_app(tmp_path):
    """The app on the tiny pair, opening on an analysis of many small images."""
    files = write_app_files(tmp_path)
    many = tmp_path / "many"
    many.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        (many / f"{index:05d}.png").write_bytes(buffer.getvalue())
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    env.update(app_environment(files), OMP_NUM_THREADS="1", DEEPVIT_DIAG_HOME=str(tmp_path / "home"))
    env.update(DEEPVIT_DIAG_APP_IMAGES=str(many), DEEPVIT_DIAG_APP_NUM_IMAGES=str(NUM_IMAGES))
    port = _free_port()
    log = tmp_path / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless=true"]
    command += ["--server.address=127.0.0.1", f"--server.port={port}", "--server.fileWatcherType=none"]
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, server, log)
        yield url
    finally:
        # The test is over and nothing was uploaded: no clean exit is needed, and under load one can take minutes.
        server.kill()
        server.wait()


def test_second_visitor_waits_is_told_its_place_and_can_cancel(busy_app):
    from playwright.sync_api import sync_playwright

    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            first = browser.new_context().new_page()
            second = browser.new_context().new_page()
            for page in (first, second):
                page.on("pageerror", lambda error: page_errors.append(str(error)))
            first.goto(busy_app, wait_until="domcontentloaded")
            first.get_by_text("Analysing images").wait_for(timeout=RENDER_TIMEOUT_MS)
            second.goto(busy_app, wait_until="domcontentloaded")
            second.get_by_text("1 job ahead in the queue (this analysis is number 2)").wait_for(
                timeout=RENDER_TIMEOUT_MS
            )
            assert first.locator('[data-testid="stMetricValue"]').count() == 0, "the first finished too soon"
            second.get_by_role("button", name="Cancel").click()
            second.get_by_text("Analysis cancelled.").wait_for(timeout=RENDER_TIMEOUT_MS)
            assert second.get_by_text("in the queue").count() == 0
            # The first visitor's analysis was not disturbed, and the cancelled one left the queue.
            first.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=RENDER_TIMEOUT_MS)
            second.get_by_role("button", name="Run analysis").click()
            second.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=RENDER_TIMEOUT_MS)
            for page in (first, second):
                assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()
    assert not page_errors, page_errors
