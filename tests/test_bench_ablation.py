"""The ablation benchmark's own correctness: its naive baseline (a rebuilt model per block)
gives the numbers ablate gives. (Speed lives in the benchmark itself, not here.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from deepvit_diag.ablation import ablate

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark imports bench_analysis as its neighbour
SPEC = importlib.util.spec_from_file_location("bench_ablation", BENCHMARKS / "bench_ablation.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_naive_block_study_matches_ablate():
    overrides = {**bench.QUICK, "depth": 3, "embed_dim": 32}
    model = bench.build("deepvit16", overrides, torch.device("cpu"))
    images, labels = bench.labelled_images(6, overrides["img_size"], overrides["num_classes"])
    naive = bench.naive_block_study(model, images, 4)
    result = ablate(model, (images, labels), studies=["block"], batch_size=4, device="cpu", progress=False)
    np.testing.assert_allclose(result.values("block", "kl"), naive, rtol=1e-4, atol=1e-7)
    assert len(model.blocks) == 3  # the naive loop leaves the model whole
