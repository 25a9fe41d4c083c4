"""Time to first paint of the app: how long a visitor of a freshly started server looks at an empty page.

Each trial starts a new ``streamlit run app/main.py`` (a cold Python process: the first script run
imports torch, timm and Plotly) on 127.0.0.1 and opens it in headless Chromium, timing from the
page request until

* ``title_s``: the page's title is drawn (what the visitor first sees), and
* ``shown_s``: the first result is drawn (an Overview metric).

Cases, interleaved trial by trial: ``baseline`` (the app of another checkout, ``--baseline DIR``, e.g.
``git archive`` of the commit before a change), ``this`` (this checkout's app, analysing the tiny pair
of ``bench_app.py`` live) and ``this, saved`` (the same with the saved result of that pair, which the
app opens on the first visit instead of analysing). ``title_vs_baseline`` is the baseline's median
over this case's (how many times sooner the first paint is). Times are medians of ``--repeats``.

Usage::

    python benchmarks/bench_first_paint.py --baseline /tmp/base --repeats 3 --json benchmarks/results/first_paint.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PROJECT = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("bench_app", Path(__file__).with_name("bench_app.py"))
bench_app = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_app)

TITLE = "h1"
METRIC = '[data-testid="stMetricValue"]'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout whose app/main.py is the baseline")
    parser.add_argument("--repeats", type=int, default=3, help="fresh servers per case")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a page may take")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser.parse_args(argv)


async def first_paint(url: str, timeout_s: float) -> dict[str, float]:
    """Seconds from the page request to its title, and to its first metric."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=bench_app.CHROMIUM, args=bench_app.CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            started = time.monotonic()
            await page.goto(url, wait_until="commit")
            await page.locator(TITLE).first.wait_for(state="visible", timeout=timeout_s * 1000)
            title_s = time.monotonic() - started
            await page.locator(METRIC).first.wait_for(state="visible", timeout=timeout_s * 1000)
            return {"title_s": title_s, "shown_s": time.monotonic() - started}
        finally:
            await browser.close()


def save_tiny_result(app_env: dict[str, str], folder: Path) -> None:
    """The saved comparison of the tiny pair with the app's defaults, as ``deepvit-diag compare`` writes it."""
    from deepvit_diag import Settings, compare, load_model
    from deepvit_diag.outputs import write_checked
    from deepvit_diag.results import is_result_file

    models = [load_model(app_env[f"DEEPVIT_DIAG_APP_CKPT_{side}"]) for side in "AB"]
    images, count = app_env["DEEPVIT_DIAG_APP_IMAGES"], int(app_env["DEEPVIT_DIAG_APP_NUM_IMAGES"])
    result = compare(*models, images, Settings(num_images=count))
    write_checked(folder, is_result_file, result.write_files)


def trial(project: Path, app_env: dict[str, str], timeout_s: float, work: Path) -> dict[str, float]:
    port = bench_app.free_port()
    server = bench_app.start_server(app_env, port, work / "server.log", project)
    try:
        return asyncio.run(first_paint(f"http://127.0.0.1:{port}/", timeout_s))
    finally:
        bench_app.stop_server(server)


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    app_env = bench_app.write_files(work)
    save_tiny_result(app_env, work / "saved")
    cases = {"this": (PROJECT, {**app_env, "DEEPVIT_DIAG_APP_SAVED": ""})}
    cases["this, saved"] = (PROJECT, {**app_env, "DEEPVIT_DIAG_APP_SAVED": str(work / "saved")})
    if args.baseline:
        cases = {"baseline": (args.baseline.resolve(), app_env), **cases}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (project, env) in cases.items():
            samples[name].append(trial(project, env, args.timeout, work))
    rows = []
    for name, runs in samples.items():
        rows.append(
            {
                "case": name,
                "title_s": statistics.median(run["title_s"] for run in runs),
                "shown_s": statistics.median(run["shown_s"] for run in runs),
                "samples": runs,
            }
        )
    if args.baseline:
        base = rows[0]
        for row in rows:
            row["title_vs_baseline"] = base["title_s"] / row["title_s"]
            row["shown_vs_baseline"] = base["shown_s"] / row["shown_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="deepvit-diag-first-paint-") as work:
        rows = measure(args, Path(work))
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "repeats": args.repeats,
        "rows": rows,
    }
    table = Table(title=f"App first paint (median of {args.repeats} fresh servers; load {load_before[0]:.1f})")
    for column in ("case", "title s", "first result s", "title vs baseline", "result vs baseline"):
        table.add_column(column)
    for row in rows:
        ratios = [f"{row[key]:.2f}x" if key in row else "" for key in ("title_vs_baseline", "shown_vs_baseline")]
        table.add_row(row["case"], f"{row['title_s']:.1f}", f"{row['shown_s']:.1f}", *ratios)
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
