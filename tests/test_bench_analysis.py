"""The benchmark's own correctness: its naive baseline computes the reference numbers, its
fast-path check passes on a tiny model, and its presets resolve. (Speed lives in the
benchmark itself, not here.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from deepvit_diag.metrics import cross_layer_similarity, similarity_ratio

SPEC = importlib.util.spec_from_file_location(
    "bench_analysis", Path(__file__).parents[1] / "benchmarks" / "bench_analysis.py"
)
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_naive_baseline_computes_the_reference_similarity_and_ratio():
    generator = torch.Generator().manual_seed(0)
    maps = (3 * torch.randn(5, 4, 2, 9, 9, generator=generator)).softmax(dim=-1)
    similarity, ratio = bench.naive_similarity(maps.numpy(), bench.K, bench.TAU)
    np.testing.assert_allclose(similarity, cross_layer_similarity(maps).numpy(), atol=1e-5)
    np.testing.assert_allclose(ratio, similarity_ratio(maps, bench.K, bench.TAU).numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_path_check_passes_on_a_tiny_model(dtype):
    model = bench.build(
        "deepvit16",
        {
            "depth": 3,
            "embed_dim": 32,
            "num_heads": 4,
            "img_size": 32,
            "patch_size": 8,
            "num_classes": 10,
            "apply_transform": [False, True, True],
        },
        torch.device("cpu"),
    )
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check = bench.check_against_reference(model, images, torch.device("cpu"), dtype)
    assert check["passed"], check
    assert check["max_abs_diff"]["similarity_pre"] <= bench.TOLERANCE[dtype]


def test_presets_and_overrides_resolve():
    quick = bench.settings(bench.parse_args(["--quick"]))
    assert quick["preset"] == "quick" and quick["batch_size"] == 16 and quick["dtype"] == "float32"
    gpu = bench.settings(bench.parse_args(["--preset", "deepvit32", "--num-images", "512"]))
    assert gpu["model"] == "deepvit32" and gpu["dtype"] == "bfloat16" and gpu["batch_size"] == "auto"
    assert gpu["num_images"] == 512 and gpu["growth_images"] == 256 and gpu["overrides"] == {}
    assert bench.settings(bench.parse_args(["--batch-size", "8"]))["batch_size"] == 8
