"""The scaling benchmark's own correctness: every configuration runs, and process groups of
any size give the one-process result. (Speed lives in the benchmark itself, not here.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # spawned processes import the script by name from here
import bench_distributed as bench  # noqa: E402


@pytest.mark.slow
def test_quick_run_reports_every_configuration_and_the_same_result():
    options = ["--quick", "--num-images", "40", "--batch-size", "8", "--repeats", "1", "--configs", "1x1", "2x1"]
    args = bench.parse_args(options)
    report = bench.run_benchmark(args)
    assert [row["config"] for row in report["rows"]] == ["1x1", "2x1"]
    assert report["rows"][0]["speedup"] == 1.0 and all(row["images_per_s"] > 0 for row in report["rows"])
    assert report["rows"][1]["processes"] == 2 and report["rows"][1]["max_abs_diff"] < 1e-5
