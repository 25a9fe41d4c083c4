"""The loading benchmark's own correctness: its JPEGs are what it says, and the analysis it
times gives the same numbers with and without worker processes. (Speed lives in the
benchmark itself, not here.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from PIL import Image

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # bench_loading imports bench_analysis as a sibling script
SPEC = importlib.util.spec_from_file_location("bench_loading", BENCHMARKS / "bench_loading.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_jpegs_have_the_imagenet_size_and_differ(tmp_path):
    bench.write_jpegs(tmp_path, 3)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    pictures = [Image.open(f) for f in files]
    assert all(p.format == "JPEG" and p.size == bench.IMAGE_SIZE for p in pictures)
    assert len({p.tobytes() for p in pictures}) == 3


def test_quick_run_reports_every_worker_count_and_identical_results():
    args = bench.parse_args(["--quick", "--num-images", "6", "--workers", "1", "--repeats", "1"])
    assert args.workers == [0, 1]  # 0 workers is always measured: it is the baseline
    report = bench.run_benchmark(args)
    assert set(report["modes"]) == {"decode", "analysis"}
    for per_workers in report["modes"].values():
        assert set(per_workers) == {"0", "1"} and per_workers["0"]["speedup"] == 1.0
        assert all(values["images_per_s"] > 0 for values in per_workers.values())
    assert report["max_abs_diff_vs_0_workers"] == 0
