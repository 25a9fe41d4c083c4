"""The first-paint benchmark's own correctness: the saved result it makes is the one the app opens
on the first visit (so its "this, saved" case measures that path), and its options (speed lives in
the benchmark itself, not here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import streamlit as st

from app.compute import AnalysisRequest, open_saved, saved_differs
from app.sources import ImageChoice, ModelChoice, SavedChoice
from deepvit_diag import Settings

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("bench_first_paint", BENCHMARKS / "bench_first_paint.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_its_saved_result_is_what_the_app_opens_first(tmp_path):
    env = bench.bench_app.write_files(tmp_path)
    bench.save_tiny_result(env, tmp_path / "saved")
    a, b = (ModelChoice(env[f"DEEPVIT_DIAG_APP_CKPT_{side}"], side, "1") for side in "AB")
    count = int(env["DEEPVIT_DIAG_APP_NUM_IMAGES"])
    request = AnalysisRequest(a, b, ImageChoice(env["DEEPVIT_DIAG_APP_IMAGES"]), Settings(num_images=count))
    st.cache_resource.clear()
    analysis = open_saved(SavedChoice(str(tmp_path / "saved"), "1", "saved", default=True))
    assert saved_differs(analysis, request) is None
    other = AnalysisRequest(a, b, request.images, Settings(num_images=count - 1))
    assert saved_differs(analysis, other) == f"it analysed {count} images, not {count - 1}"
    st.cache_resource.clear()


def test_options():
    args = bench.parse_args(["--baseline", "/tmp/base", "--repeats", "2"])
    assert args.baseline == Path("/tmp/base") and args.repeats == 2 and args.json is None
