"""Throughput and peak memory of ``analyze`` against two references, plus a check that
its fast path gives the reference path's numbers.

Modes (same model, same synthetic preprocessed images, same dtype):

* ``forward``: the plain model, fused attention on, ``torch.inference_mode``; the floor.
* ``analysis``: ``deepvit_diag.analyze`` (every metric, pre and post maps, CKA, examples).
* ``naive``: what a careful user would write without deepvit-diag: timm's
  ``AttentionExtract`` (hook mode) on a deep copy whose attention modules have
  ``fused_attn = False`` (no global switch), every softmax map copied to the host and
  kept, then cross-layer similarity (one Gram product of the normalised column vectors)
  and similarity ratio (neighbour blocks only) of the pre maps in numpy. It computes far
  less than ``analysis`` does. Its memory grows with the images, so it runs on
  ``naive_images`` (and a quarter of them for its growth).

Every mode runs ``--repeats`` times, the modes interleaved so that load changes on a
shared machine hit all of them alike; images/s and peaks are medians over the repeats.

Memory: the host's peak resident set (``VmHWM`` of /proc/self/status, reset with
``/proc/self/clear_refs`` before each run, minus the resident set at that moment; NaN
where a sandbox lacks them) and on
CUDA also ``torch.cuda.max_memory_allocated`` (peak minus the allocation before the run).
Peaks under 4 MiB count as 4 MiB (RSS noise). ``mem_growth`` is the analysis peak over
``num_images`` divided by its peak over ``growth_images`` (1.0 = does not grow with the
number of images; device memory on CUDA, host memory on the CPU); ``naive_mem_growth``
the same for the naive mode (host memory, ``naive_images`` over a quarter of them).

Ratios: ``analysis_vs_forward`` = analysis images/s / forward images/s;
``analysis_vs_naive`` = analysis images/s / naive images/s (above 1: the analysis is
faster); ``analysis_vs_naive_ceiling`` = forward images/s / naive images/s, the most any
analysis that runs the model's forward could reach.

Check: on the first ``check_images`` images, ``analyze`` (the fast path, in the run's
dtype) against the readable reference functions on a float32 capture; max abs difference
per metric, within float32 rounding for float32 runs and within bfloat16 tolerance for
bfloat16 runs (relative for values above 1, such as distances in pixels; ratios: up to
the share of vectors whose neighbour average lies that close to tau). A failed check
fails the command.

Usage::

    python benchmarks/bench_analysis.py --quick                    # tiny model, CPU, < 1 minute
    python benchmarks/bench_analysis.py --preset deepvit32 --device cuda --json deepvit32.json
    python benchmarks/bench_analysis.py --device cuda --model deepvit24 --num-images 2048 \\
        --batch-size 64 --dtype bfloat16 --json bench.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from rich.console import Console
from rich.table import Table
from timm.utils import AttentionExtract
from torch import nn

import deepvit_diag  # noqa: F401  (registers the presets with timm)
from deepvit_diag.analysis import analyze
from deepvit_diag.capture import extract_attention
from deepvit_diag.device import keep_host_allocations, resolve_device
from deepvit_diag.introspection import attention_module, transformer_blocks
from deepvit_diag.metrics import (
    MinibatchCKA,
    attention_entropy,
    cross_head_similarity,
    cross_layer_similarity,
    mean_attention_distance,
    neighbour_similarity,
    rank_collapse,
    similarity_ratio,
    token_similarity,
)
from deepvit_diag.preprocessing import model_input_config
from deepvit_diag.results import package_versions

# Batch sizes tried by "auto", per mode; the largest that fits and is fastest wins.
AUTO_BATCH_SIZES = (32, 64, 128, 256, 512)
PRESETS: dict[str, dict[str, Any]] = {
    # 65 tokens, so the naive mode's host copies of every map outgrow the RSS noise. Growth
    # runs hold at least one CKA chunk (32 images), whose memory is bounded, not growing.
    "quick": {
        "model": "deepvit16",
        "overrides": {"depth": 6, "embed_dim": 64, "num_heads": 4, "img_size": 32, "patch_size": 4, "num_classes": 10},
        "dtype": "float32",
        "num_images": 128,
        "growth_images": 32,
        "naive_images": 128,
        "batch_size": 16,
        "check_images": 16,
    },
    # The GPU target workload: paper models at 224 px, random weights, bfloat16 autocast.
    # The naive mode runs on 64 images (about 0.4 s each, estimated from its host work): each
    # holds about 60 MB of maps on the host and takes as long as the next, so more images
    # would only spend the GPU machine's time.
    "vit32": {
        "model": "vit32",
        "overrides": {},
        "dtype": "bfloat16",
        "num_images": 4096,
        "growth_images": 256,
        "naive_images": 64,
        "batch_size": "auto",
        "check_images": 16,
    },
    "deepvit32": {
        "model": "deepvit32",
        "overrides": {},
        "dtype": "bfloat16",
        "num_images": 4096,
        "growth_images": 256,
        "naive_images": 64,
        "batch_size": "auto",
        "check_images": 16,
    },
    # A larger CPU workload for profiling: 12 blocks, 224 px (197 tokens), dim 384, 12 heads.
    "cpu-deepvit12": {
        "model": "deepvit16",
        "overrides": {"depth": 12},
        "dtype": "float32",
        "num_images": 64,
        "growth_images": 32,
        "naive_images": 64,
        "batch_size": 16,
        "check_images": 4,
    },
    "cpu-vit12": {
        "model": "vit16",
        "overrides": {"depth": 12},
        "dtype": "float32",
        "num_images": 64,
        "growth_images": 32,
        "naive_images": 64,
        "batch_size": 16,
        "check_images": 4,
    },
    # Without --preset/--quick: a mid-size model, settings from the flags.
    "custom": {
        "model": "deepvit24",
        "overrides": {},
        "dtype": "float32",
        "num_images": 512,
        "growth_images": 128,
        "naive_images": 128,
        "batch_size": 32,
        "check_images": 8,
    },
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
K, TAU = 2, 0.5
# Within float32 rounding (sums of ~1e5 terms) / within bfloat16 map rounding (as tests/test_analysis.py).
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.03}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument(
        "--preset",
        choices=[name for name in PRESETS if name != "custom"],
        help="quick: tiny 6-block model on 128 images (under a minute on 2 CPU cores); "
        "vit32 / deepvit32: the paper's ViT-32B / DeepViT-32B, 224 px, bfloat16, auto batch size, "
        "4096 images (256 for the growth run, 64 for the naive mode); cpu-deepvit12 / cpu-vit12: "
        "12 blocks at 224 px, batch 16, 64 images (minutes on 2 CPU cores)",
    )
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument(
        "--model", help="timm or deepvit-diag model name (random weights); with a preset, replaces its model"
    )
    parser.add_argument("--num-images", type=int, help="images for the forward and analysis runs")
    parser.add_argument("--growth-images", type=int, help="images of the analysis run that mem_growth divides by")
    parser.add_argument("--naive-images", type=int, help="images for the naive run")
    parser.add_argument(
        "--batch-size", help=f"images per forward pass, or 'auto' (the fastest of {AUTO_BATCH_SIZES} per mode)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="float32 or bfloat16 autocast")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    name = "quick" if args.quick else args.preset or "custom"
    chosen = {"preset": name, **copy.deepcopy(PRESETS[name])}
    for key in ("model", "num_images", "growth_images", "naive_images", "batch_size", "dtype"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    if chosen["batch_size"] != "auto":
        chosen["batch_size"] = int(chosen["batch_size"])
    return chosen


# ----------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of one run above what was in use when it started, in MiB: host RSS
    always, device memory as well on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        _release_freed_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.host_baseline = _proc_status_kib("VmRSS") * 1024
        except (OSError, AttributeError):  # a sandbox without clear_refs/VmHWM: no host peak
            self.host_baseline = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.device_baseline = torch.cuda.memory_allocated(self.device)

    def stop(self) -> dict[str, float]:
        host_peak = (
            math.nan if self.host_baseline is None else (_proc_status_kib("VmHWM") * 1024 - self.host_baseline) / 2**20
        )
        peaks = {"host_peak_extra_mib": host_peak}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            peaks.update(device_peak_mib=peak / 2**20, device_peak_extra_mib=(peak - self.device_baseline) / 2**20)
        return peaks


def _release_freed_memory() -> None:
    """Hand memory freed by earlier runs back to the OS, so it is not counted as already
    resident (which would make whichever mode runs later look cheaper)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is only less exact
        pass


def _proc_status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


# ----------------------------------------------------------------------------- modes


def autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()


def batches(images: torch.Tensor, batch_size: int):
    return (images[start : start + batch_size] for start in range(0, len(images), batch_size))


def run_forward(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str) -> None:
    with torch.inference_mode(), autocast(device, dtype):
        for batch in batches(images, batch_size):
            model(batch.to(device))


def run_analysis(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str
) -> dict[str, Any]:
    """``analyze``; returns how it computed (batch size, rows per chunk of maps)."""
    return analyze(
        model, images, batch_size=batch_size, device=device, dtype=dtype, progress=False, k=K, tau=TAU
    ).computation


def run_analysis_at_size(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str
) -> None:
    """``run_analysis``, but out of memory when ``analyze`` had to halve the batch (it
    retries smaller batches by itself, which would hide that the size does not fit)."""
    result = analyze(model, images, batch_size=batch_size, device=device, dtype=dtype, progress=False, k=K, tau=TAU)
    if result.computation["final_batch_size"] != batch_size:
        raise torch.OutOfMemoryError(
            f"analyze fell back from batch size {batch_size} to {result.computation['final_batch_size']}"
        )


def unfused_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose attention materialises its maps; the original keeps fused attention."""
    twin = copy.deepcopy(model)
    for index in range(len(transformer_blocks(twin))):
        attention_module(twin, index).fused_attn = False
    return twin


def naive_similarity(maps: np.ndarray, k: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-layer similarity (L, L) and similarity ratio (L,) of column vectors of
    (L, N, H, T, T) maps: normalise once, S as one Gram product, neighbour cosines only
    for the blocks at most k apart."""
    norms = np.linalg.norm(maps, axis=-2, keepdims=True)  # column vectors run along dim -2
    units = maps / np.maximum(norms, 1e-12)
    num_blocks = len(units)
    flat = units.reshape(num_blocks, -1)
    similarity = flat @ flat.T / np.prod(maps.shape[1:4])  # mean over (image, head, token)
    ratio = np.empty(num_blocks)
    for p in range(num_blocks):
        neighbours = [q for q in range(num_blocks) if 0 < abs(q - p) <= k]
        average = np.mean([(units[p] * units[q]).sum(axis=-2) for q in neighbours], axis=0)
        ratio[p] = (average > tau).mean()
    return similarity, ratio


def make_naive(model: nn.Module) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    extractor = AttentionExtract(unfused_copy(model), method="hook")  # hooks every attn_drop: the softmax maps

    def run_naive(_: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str):
        per_batch = []
        with torch.inference_mode(), autocast(device, dtype):
            for batch in batches(images, batch_size):
                maps = extractor(batch.to(device))
                per_batch.append(np.stack([m.float().cpu().numpy() for m in maps.values()]))
        return naive_similarity(np.concatenate(per_batch, axis=1), K, TAU)

    return run_naive


def timed(
    run: Callable, model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str
) -> dict:
    """Images/s and peak memory of one run; with the analysis's ``computation`` (batch size,
    rows per chunk) when ``run`` returns it (a dict; the naive mode returns its arrays)."""
    memory = PeakMemory(device)
    memory.start()
    start = time.perf_counter()
    returned = run(model, images, batch_size, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    measured = {"images_per_s": len(images) / seconds, "seconds": seconds, **memory.stop()}
    return {**measured, "computation": returned} if isinstance(returned, dict) else measured


def best_batch_size(
    run: Callable, model: nn.Module, images: torch.Tensor, device: torch.device, dtype: str, limit: int
) -> int:
    """The fastest of AUTO_BATCH_SIZES (up to ``limit``) on two batches each; sizes that
    run out of device memory end the search."""
    speeds = {}
    for size in (size for size in AUTO_BATCH_SIZES if size <= limit):
        try:
            run(model, images[:size], size, device, dtype)  # warm-up at this size
            speeds[size] = timed(run, model, images[: 2 * size], size, device, dtype)["images_per_s"]
        except torch.OutOfMemoryError:
            break
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not speeds:
        raise SystemExit(f"even batch size {AUTO_BATCH_SIZES[0]} does not fit")
    return max(speeds, key=speeds.get)


def median_runs(runs: list[dict]) -> dict:
    """Medians of the numbers; the last run's ``computation``, when recorded."""
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "computation"}
    return medians if "computation" not in runs[-1] else {**medians, "computation": runs[-1]["computation"]}


# ----------------------------------------------------------------------------- check


def reference_arrays(model: nn.Module, images: torch.Tensor, device: torch.device) -> dict[str, np.ndarray]:
    """Every metric of ``images`` from one float32 capture and the readable reference functions."""
    capture = extract_attention(model, images.to(device))
    patch_embed = model.patch_embed
    prefix = model.num_prefix_tokens
    arrays = {}
    for kind in ("pre", "post"):
        maps = getattr(capture, kind)
        arrays[f"similarity_{kind}"] = cross_layer_similarity(maps)
        arrays[f"ratio_{kind}"] = similarity_ratio(maps, K, TAU)
        arrays[f"cross_head_{kind}"] = cross_head_similarity(maps)
        arrays[f"tau_distance_{kind}"] = (neighbour_similarity(maps, K) - TAU).abs()  # (L, B, H, T)
    arrays["entropy"] = attention_entropy(capture.pre)
    arrays["attention_distance"] = mean_attention_distance(
        capture.pre, patch_embed.patch_size, prefix, patch_embed.grid_size
    )
    arrays["token_similarity"] = token_similarity(capture.hidden, prefix)
    arrays["rank_residual"] = rank_collapse(capture.hidden)
    cka = MinibatchCKA()
    cka.update(capture.hidden.flatten(2))
    arrays["cka"] = cka.result()["a"]
    return {name: value.cpu().numpy() for name, value in arrays.items()}


def check_against_reference(model: nn.Module, images: torch.Tensor, device: torch.device, dtype: str) -> dict[str, Any]:
    """Max abs difference per metric between ``analyze`` (fast path, run dtype) and the
    reference path (float32), each within the dtype's tolerance. A ratio is a share of
    vectors whose neighbour average exceeds tau, so only vectors whose reference average
    lies within that tolerance of tau may flip: a block's ratio may differ by their share
    (plus one vector's)."""
    result = analyze(model, images, batch_size=len(images), device=device, dtype=dtype, progress=False, k=K, tau=TAU)
    expected = reference_arrays(model, images, device)
    one_vector = 1.01 / (result.geometry.num_heads * result.geometry.num_tokens * len(images))
    tolerance = TOLERANCE[dtype]
    differences, passed = {}, True
    for name, value in expected.items():
        if name.startswith("tau_distance"):
            continue
        difference = np.abs(result.arrays[name] - value)
        allowed = tolerance * np.maximum(1.0, np.abs(value))  # distances are in pixels, entropies up to ln T
        if name.startswith("ratio"):
            borderline = (expected[name.replace("ratio", "tau_distance")] <= tolerance).mean(axis=(1, 2, 3))
            allowed = borderline + one_vector
        differences[name] = float(np.nanmax(difference)) if np.isfinite(difference).any() else 0.0
        same_nan = bool((np.isnan(result.arrays[name]) == np.isnan(value)).all())
        passed &= same_nan and bool(np.all(np.nan_to_num(difference) <= allowed))
    return {"images": len(images), "tolerance": tolerance, "max_abs_diff": differences, "passed": passed}


# ----------------------------------------------------------------------------- main


def build(name: str, overrides: dict, device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # the same model in every run (timm's init draws from the global generator)
    model = timm.create_model(name, **overrides).eval().to(device)
    # Weights with spread, so attention maps are not uniform (random init gives flat maps).
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator).to(device) * 0.1)
    return model


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        # What analyze sets on its first batch, set before any mode runs, so that every mode's
        # every repeat runs with the same host allocator (``keep_host_allocations``).
        keep_host_allocations()
    chosen = settings(args)
    dtype = chosen["dtype"]
    model = build(chosen["model"], chosen["overrides"], device)
    num_images, growth_images, naive_images = chosen["num_images"], chosen["growth_images"], chosen["naive_images"]
    images = torch.randn(
        num_images, *model_input_config(model)["input_size"], generator=torch.Generator().manual_seed(0)
    )
    naive = make_naive(model)
    naive_quarter = max(1, naive_images // 4)
    if chosen["batch_size"] == "auto":
        forward_batch = best_batch_size(run_forward, model, images, device, dtype, limit=num_images)
        batch_sizes = {
            "forward": forward_batch,
            # At most growth_images, so that both runs of mem_growth use full batches of one size.
            "analysis": best_batch_size(run_analysis_at_size, model, images, device, dtype, limit=growth_images),
            # Host-bound: about as fast at any size; whole batches in its quarter run.
            "naive": min(forward_batch, naive_quarter),
        }
    else:
        batch_sizes = dict.fromkeys(("forward", "analysis", "naive"), chosen["batch_size"])
    plan = {
        "forward": (run_forward, images, batch_sizes["forward"]),
        "analysis": (run_analysis, images, batch_sizes["analysis"]),
        "naive": (naive, images[:naive_images], batch_sizes["naive"]),
        "analysis_growth": (run_analysis, images[:growth_images], batch_sizes["analysis"]),
        "naive_quarter": (naive, images[:naive_quarter], batch_sizes["naive"]),
    }
    for run, _, batch_size in plan.values():  # warm-up: lazy init, kernels, allocator
        run(model, images[:batch_size], batch_size, device, dtype)
    runs: dict[str, list[dict]] = {mode: [] for mode in plan}
    for _ in range(args.repeats):
        for mode, (run, subset, batch_size) in plan.items():
            runs[mode].append(timed(run, model, subset, batch_size, device, dtype))
    modes = {
        mode: {
            **median_runs(measured),
            "images": len(plan[mode][1]),
            "batch_size": plan[mode][2],
            "images_per_s_all": [m["images_per_s"] for m in measured],
        }
        for mode, measured in runs.items()
    }
    memory_key = "device_peak_extra_mib" if device.type == "cuda" else "host_peak_extra_mib"
    check_images = min(chosen["check_images"], num_images)
    return {
        "preset": chosen["preset"],
        "model": chosen["model"],
        "overrides": chosen["overrides"],
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype,
        "num_images": num_images,
        "growth_images": growth_images,
        "naive_images": naive_images,
        "batch_sizes": batch_sizes,
        "repeats": args.repeats,
        "memory_measure": {"host": "VmHWM (peak RSS) after clear_refs", "device": "torch.cuda.max_memory_allocated"},
        "modes": modes,
        "analysis_vs_forward": modes["analysis"]["images_per_s"] / modes["forward"]["images_per_s"],
        "analysis_vs_naive": modes["analysis"]["images_per_s"] / modes["naive"]["images_per_s"],
        "analysis_vs_naive_ceiling": modes["forward"]["images_per_s"] / modes["naive"]["images_per_s"],
        "mem_growth": _growth(modes["analysis"][memory_key], modes["analysis_growth"][memory_key]),
        "naive_mem_growth": _growth(
            modes["naive"]["host_peak_extra_mib"], modes["naive_quarter"]["host_peak_extra_mib"]
        ),
        "max_abs_diff_similarity_vs_naive": _naive_agreement(model, images[:check_images], device, dtype, naive),
        "check_vs_reference": check_against_reference(model, images[:check_images], device, dtype),
        "torch_threads": torch.get_num_threads(),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "versions": package_versions(),
    }


# Peaks below this are allocator/RSS noise (glibc arenas, page granularity), not data.
NOISE_FLOOR_MIB = 4.0


def _growth(full_mib: float, small_mib: float) -> float:
    """Peak extra memory of the larger run / of the smaller one, both floored at the noise level."""
    return max(full_mib, NOISE_FLOOR_MIB) / max(small_mib, NOISE_FLOOR_MIB)


def _naive_agreement(model: nn.Module, images: torch.Tensor, device: torch.device, dtype: str, naive) -> float:
    """Both modes must compute the same similarity: a benchmark of a wrong result is worthless."""
    result = analyze(model, images, batch_size=len(images), device=device, dtype=dtype, progress=False, k=K, tau=TAU)
    similarity, _ = naive(model, images, len(images), device, dtype)
    return float(np.abs(result.similarity("pre") - similarity).max())


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return match.group(1).strip() if match else "unknown CPU"


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"analyze vs references: {report['model']} on {report['device']} ({report['device_name']}), "
        f"{report['dtype']}, median of {report['repeats']}"
    )
    columns = ["mode", "images", "batch", "images/s", "seconds", "host peak extra MiB"]
    if "device_peak_mib" in report["modes"]["forward"]:
        columns += ["device peak MiB", "device peak extra MiB"]
    for column in columns:
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, values in report["modes"].items():
        row = [
            mode,
            str(values["images"]),
            str(values["batch_size"]),
            f"{values['images_per_s']:.1f}",
            f"{values['seconds']:.2f}",
            f"{values['host_peak_extra_mib']:.1f}",
        ]
        if "device_peak_mib" in values:
            row += [f"{values['device_peak_mib']:.0f}", f"{values['device_peak_extra_mib']:.1f}"]
        table.add_row(*row)
    console = Console()
    console.print(table)
    for key in (
        "analysis_vs_forward",
        "analysis_vs_naive",
        "analysis_vs_naive_ceiling",
        "mem_growth",
        "naive_mem_growth",
        "max_abs_diff_similarity_vs_naive",
    ):
        console.print(f"{key}: {report[key]:.3g}")
    check = report["check_vs_reference"]
    checks = Table(
        title=f"fast path ({report['dtype']}) vs reference path (float32), {check['images']} images, "
        f"tolerance {check['tolerance']:g}: {'PASS' if check['passed'] else 'FAIL'}"
    )
    checks.add_column("metric")
    checks.add_column("max abs diff", justify="right")
    for name, difference in check["max_abs_diff"].items():
        checks.add_row(name, f"{difference:.2e}")
    console.print(checks)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not report["check_vs_reference"]["passed"]:
        raise SystemExit("the fast path does not match the reference path")


if __name__ == "__main__":
    main()
