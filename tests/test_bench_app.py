"""The app load test's own correctness: its percentiles, its files, and one session against a real
server (speed lives in the benchmark itself, not here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from deepvit_diag import load_model
from deepvit_diag.images import open_images

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("bench_app", BENCHMARKS / "bench_app.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize("count", [1, 2, 7, 20, 56])
def test_percentiles_are_nearest_rank(count):
    values = list(np.random.default_rng(count).random(count))
    for fraction in (0.5, 0.95):
        # Nearest rank: the smallest value with at least `fraction` of the values at or below it.
        expected = min(v for v in values if sum(w <= v for w in values) >= fraction * count)
        assert bench.percentile(values, fraction) == expected
    assert bench.percentile([], 0.5) is None


def test_files_open_in_the_app_as_a_tiny_pair(tmp_path):
    env = bench.write_files(tmp_path)
    for side in ("A", "B"):
        model = load_model(env[f"DEEPVIT_DIAG_APP_CKPT_{side}"])
        assert len(model.blocks) == bench.TINY["depth"]
    assert (
        len(open_images(env["DEEPVIT_DIAG_APP_IMAGES"])) == bench.NUM_IMAGES == int(env["DEEPVIT_DIAG_APP_NUM_IMAGES"])
    )


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(bench.CHROMIUM).exists(), reason="needs Chromium")
def test_one_session_completes_without_errors():
    report = bench.run_benchmark(bench.parse_args(["--sessions", "1", "--timeout", "300"]))
    (run,) = report["runs"]
    assert run["completed"] == 1 and run["errors"] == 0, run["error_lines"]
    assert run["switches"] == len(bench.SWITCHES)
    assert run["server_peak_rss_mib"] >= run["server_idle_rss_mib"] > 0
