"""The scaling benchmark's own arithmetic: image sizes give the token counts it reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # bench_scaling imports bench_analysis as a sibling script
SPEC = importlib.util.spec_from_file_location("bench_scaling", BENCHMARKS / "bench_scaling.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize(("tokens", "pixels"), [(65, 128), (197, 224), (577, 384), (1370, 592)])
def test_image_size_gives_one_class_token_plus_a_square_patch_grid(tokens, pixels):
    assert bench.image_size(tokens) == pixels
    assert 1 + (pixels // bench.PATCH) ** 2 == tokens


def test_token_counts_without_a_square_grid_are_refused():
    with pytest.raises(SystemExit, match="error: 100 tokens"):
        bench.image_size(100)


def test_an_unavailable_device_is_one_line():
    if bench.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="^error: device 'cuda' requested but CUDA is not available"):
        bench.main(["--device", "cuda", "--tokens", "65", "--depths", "1"])


@pytest.mark.slow
def test_a_case_records_the_batch_and_rows_per_chunk_the_analysis_chose():
    args = bench.parse_args(["--tokens", "65", "--depths", "1", "--repeats", "1", "--memory-budget", "64"])
    case = bench.run_case(65, 1, args, bench.torch.device("cpu"))
    assert case["batch_size"] == 2 and 1 <= case["rows_per_chunk"] <= 65
    assert case["ratio"] > 0 and case["runs"]["analysis"][0]["computation"]["rows_per_chunk"] == [
        case["rows_per_chunk"]
    ]
