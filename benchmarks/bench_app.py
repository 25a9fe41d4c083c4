"""Load test of the app as a lab service: N visitors at once against one Streamlit server.

For each N in ``--sessions``, a fresh ``streamlit run app/main.py`` listens on 127.0.0.1
only (no other traffic) and N headless Chromium pages, each its own browser context and so
its own Streamlit session, open it together. Every page:

1. opens the app, which analyses its default pair on first visit: here two tiny 2-block
   checkpoints on five 40 px images, paths on the server, so each session's analysis is its
   own and all N go through the device queue one at a time;
2. switches through every view of the comparison and back to Overview.

Reported per N: sessions completed, errors (page errors, exception boxes, error boxes,
timeouts), seconds to the first analysis shown (open), p50/p95 of view-switch latency
(click on a tab until its content is drawn and the script has finished), and the
server's peak resident memory (``VmHWM``), with the same figure for an idle server
started the same way as the baseline.

Usage::

    python benchmarks/bench_app.py --sessions 1 4 8 --json benchmarks/results/app_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.models import build_model

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)
NUM_IMAGES = 5
# Every view of a comparison, then back; each with what shows that it is drawn.
SWITCHES = [
    ("Layer similarity", ".js-plotly-plot .main-svg"),
    ("Similarity ratio", ".js-plotly-plot .main-svg"),
    ("Heads", ".js-plotly-plot .main-svg"),
    ("Theta", ".js-plotly-plot .main-svg"),
    ("More metrics", ".js-plotly-plot .main-svg"),
    ("Export", '[data-testid="stDownloadButton"]'),
    ("Overview", '[data-testid="stMetricValue"]'),
]
START_TIMEOUT_S = 180


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="numbers of sessions at once")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one session may take in all")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser.parse_args(argv)


def write_files(root: Path) -> dict[str, str]:
    """Tiny ViT and DeepViT checkpoints and a few images; the app's variables that open it on them."""
    for family in ("vit", "deepvit"):
        torch.manual_seed(0)
        save_native(build_model({"family": family, "kwargs": TINY}), root / f"{family}.safetensors")
    images = root / "images"
    images.mkdir()
    for index in range(NUM_IMAGES):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (images / f"{index}.png").write_bytes(buffer.getvalue())
    return {
        "DEEPVIT_DIAG_APP_CKPT_A": str(root / "vit.safetensors"),
        "DEEPVIT_DIAG_APP_CKPT_B": str(root / "deepvit.safetensors"),
        "DEEPVIT_DIAG_APP_IMAGES": str(images),
        "DEEPVIT_DIAG_APP_NUM_IMAGES": str(NUM_IMAGES),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app_env: dict[str, str], port: int, log: Path, project: Path = PROJECT) -> subprocess.Popen:
    """``streamlit run app/main.py`` of checkout ``project``, once it answers its health check."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    env.update(app_env, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless=true"]
    command += ["--server.address=127.0.0.1", f"--server.port={port}", "--server.fileWatcherType=none"]
    command += ["--browser.gatherUsageStats=false"]
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"streamlit did not answer within {START_TIMEOUT_S} s")


def stop_server(server: subprocess.Popen) -> None:
    """Ask the server to stop; end it if it has not within a minute (a loaded machine is slow to)."""
    server.terminate()
    try:
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (``VmRSS``, ``VmHWM``) in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


DRAWN = """([selector]) => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (document.querySelector('[data-testid="stSkeleton"]')) return false;
    const panels = [...document.querySelectorAll('[role="tabpanel"]')].filter(p => p.offsetParent !== null);
    return panels.some(p => p.querySelector(selector) !== null);
}"""
PROBLEMS = """() => [...document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
    .map(e => e.innerText.slice(0, 200))"""


async def one_session(browser, url: str, timeout_s: float) -> dict[str, Any]:
    """Open the app, wait for its analysis, switch through the views; what happened and how long it took."""
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    timeout_ms = timeout_s * 1000
    started = time.monotonic()
    outcome: dict[str, Any] = {"completed": False, "open_s": None, "switch_s": [], "queued": None}
    try:
        await page.goto(url, wait_until="domcontentloaded")
        await page.wait_for_function(DRAWN, arg=['[data-testid="stMetricValue"]'], timeout=timeout_ms)
        outcome["open_s"] = time.monotonic() - started
        captions = await page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
        outcome["queued"] = next((text for text in captions if "in the queue" in text), None)
        for view, drawn in SWITCHES:
            clicked = time.monotonic()
            await page.get_by_role("tab", name=view).click()
            await page.wait_for_function(DRAWN, arg=[drawn], timeout=timeout_ms)
            outcome["switch_s"].append(time.monotonic() - clicked)
            errors += await page.evaluate(PROBLEMS)
        outcome["completed"] = True
    except Exception as err:  # a timeout or a closed page is a result of the load test, not its end
        errors.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    finally:
        await context.close()
    outcome["errors"] = errors
    return outcome


async def load(url: str, sessions: int, timeout_s: float) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(one_session(browser, url, timeout_s) for _ in range(sessions)))
        finally:
            await browser.close()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``fraction`` of ``values`` at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def run_load(app_env: dict[str, str], sessions: int, timeout_s: float, folder: Path) -> dict[str, Any]:
    port = free_port()
    server = start_server(app_env, port, folder / f"server-{sessions}.log")
    try:
        idle = memory_mib(server.pid)
        started = time.monotonic()
        outcomes = asyncio.run(load(f"http://127.0.0.1:{port}", sessions, timeout_s))
        wall_s = time.monotonic() - started
        memory = memory_mib(server.pid)
    finally:
        stop_server(server)
    switches = [value for outcome in outcomes for value in outcome["switch_s"]]
    opens = [outcome["open_s"] for outcome in outcomes if outcome["open_s"] is not None]
    return {
        "sessions": sessions,
        "completed": sum(outcome["completed"] for outcome in outcomes),
        "errors": sum(len(outcome["errors"]) for outcome in outcomes),
        "error_lines": sorted({line for outcome in outcomes for line in outcome["errors"]}),
        "queued_sessions": sum(outcome["queued"] is not None for outcome in outcomes),
        "open_s_median": statistics.median(opens) if opens else None,
        "open_s_max": max(opens) if opens else None,
        "switches": len(switches),
        "switch_p50_s": percentile(switches, 0.5),
        "switch_p95_s": percentile(switches, 0.95),
        "switch_s": switches,
        "wall_s": wall_s,
        "server_idle_rss_mib": idle["rss_mib"],
        "server_peak_rss_mib": memory["peak_rss_mib"],
        "server_end_rss_mib": memory["rss_mib"],
        "load_average": os.getloadavg(),
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-app-") as folder:
        app_env = write_files(Path(folder))
        runs = [run_load(app_env, sessions, args.timeout, Path(folder)) for sessions in args.sessions]
    return {
        "benchmark": "app_load",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "analysis": {"checkpoints": "2-block ViT and DeepViT, 32 px, width 32", "images": NUM_IMAGES},
        "views_switched": [view for view, _ in SWITCHES],
        "runs": runs,
    }


def print_report(report: dict[str, Any]) -> None:
    table = Table(title="app under load: one server on 127.0.0.1, N Chromium sessions at once")
    for column in ("N", "completed", "errors", "waited in queue", "open s (median / max)", "switch p50 / p95 s"):
        table.add_column(column)
    table.add_column("server MiB idle → peak")
    for run in report["runs"]:
        table.add_row(
            str(run["sessions"]),
            f"{run['completed']}/{run['sessions']}",
            str(run["errors"]),
            str(run["queued_sessions"]),
            f"{run['open_s_median']:.1f} / {run['open_s_max']:.1f}" if run["open_s_median"] is not None else "-",
            f"{run['switch_p50_s']:.2f} / {run['switch_p95_s']:.2f}" if run["switches"] else "-",
            f"{run['server_idle_rss_mib']:.0f} → {run['server_peak_rss_mib']:.0f}",
        )
    Console().print(table)
    for run in report["runs"]:
        for line in run["error_lines"]:
            Console().print(f"N={run['sessions']}: {line}", markup=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
