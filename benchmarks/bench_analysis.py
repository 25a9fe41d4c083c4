"""Throughput and peak memory of ``analyze`` against two references.

Modes (same model, same synthetic preprocessed images, same batch size and dtype):

* ``forward``: the plain model, fused attention on, ``torch.inference_mode``; the floor.
* ``analysis``: ``deepvit_diag.analyze`` (every metric, pre and post maps, CKA, examples).
* ``naive``: what one would write without deepvit-diag: timm's ``AttentionExtract`` (hook
  mode) on a deep copy whose attention modules have ``fused_attn = False`` (no global
  switch), every softmax map copied to the host and kept, then cross-layer similarity
  and similarity ratio of the pre maps in numpy, block pair by block pair. It computes
  far less than ``analysis`` does.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (device memory, peak minus the
allocation before the run); on the CPU the process's peak resident set (``VmHWM`` of
/proc/self/status, reset with ``/proc/self/clear_refs`` before each run, minus the
resident set at that moment; peaks under 4 MiB count as 4 MiB, the RSS noise level).
``mem_growth`` is the analysis peak over ``--num-images``
images divided by its peak over a quarter of them (1.0 = does not grow with the number
of images); ``naive_mem_growth`` the same for the naive mode.

Ratios: ``analysis_vs_forward`` = analysis images/s / forward images/s (the share of
the plain forward speed the analysis keeps); ``analysis_vs_naive`` = analysis images/s /
naive images/s (above 1: the analysis is faster).

Usage::

    python benchmarks/bench_analysis.py --quick                 # tiny model, CPU, < 1 minute
    python benchmarks/bench_analysis.py --device cuda --model deepvit24 --num-images 2048 \\
        --batch-size 64 --dtype bfloat16 --json bench.json
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import re
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
from deepvit_diag.capture import attention_module, model_input_config, transformer_blocks
from deepvit_diag.device import resolve_device
from deepvit_diag.results import package_versions

# Quick: 65 tokens, so the naive mode's host copies of every map outgrow the RSS noise.
QUICK = {"model": "deepvit16", "overrides": {"depth": 6, "embed_dim": 64, "num_heads": 4, "img_size": 32, "patch_size": 4,
         "num_classes": 10}, "num_images": 64, "batch_size": 16}  # fmt: skip
FULL = {"model": "deepvit24", "overrides": {}, "num_images": 512, "batch_size": 32}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
K, TAU = 2, 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny 6-block model (65 tokens), 64 images: under a minute on 2 CPU cores")
    parser.add_argument("--model", help="timm or deepvit-diag model name (random weights; default deepvit24)")
    parser.add_argument("--num-images", type=int, help="images per mode")
    parser.add_argument("--batch-size", type=int, help="images per forward pass")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="float32 or bfloat16 autocast")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    chosen = dict(QUICK if args.quick else FULL)
    if args.model:  # with --quick, the named model gets the tiny overrides
        chosen["model"] = args.model
    if args.num_images:
        chosen["num_images"] = args.num_images
    if args.batch_size:
        chosen["batch_size"] = args.batch_size
    return chosen


# ----------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of one run above what was in use when it started, in MiB."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_memory()
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.baseline = _proc_status_kib("VmRSS") * 1024

    def stop(self) -> tuple[float, float]:
        """(peak, peak above the start) in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status_kib("VmHWM") * 1024
        return peak / 2**20, (peak - self.baseline) / 2**20


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


def run_analysis(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str) -> None:
    analyze(model, images, batch_size=batch_size, device=device, dtype=dtype, progress=False, k=K, tau=TAU)


def unfused_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose attention materialises its maps; the original keeps fused attention."""
    twin = copy.deepcopy(model)
    for index in range(len(transformer_blocks(twin))):
        attention_module(twin, index).fused_attn = False
    return twin


def naive_similarity(maps: np.ndarray, k: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-layer similarity (L, L) and similarity ratio (L,) of column vectors, pair by pair."""
    vectors = np.swapaxes(maps, -1, -2)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    num_blocks = len(vectors)
    cosines = {(p, q): (vectors[p] * vectors[q]).sum(-1) for p in range(num_blocks) for q in range(num_blocks)}
    similarity = np.array([[cosines[p, q].mean() for q in range(num_blocks)] for p in range(num_blocks)])
    ratio = np.array([
        (np.mean([cosines[p, q] for q in range(num_blocks) if 0 < abs(q - p) <= k], axis=0) > tau).mean()
        for p in range(num_blocks)
    ])  # fmt: skip
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


def measure(run: Callable, model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str) -> dict:
    run(model, images[:batch_size], batch_size, device, dtype)  # warm-up: lazy init, kernels, allocator
    memory = PeakMemory(device)
    memory.start()
    start = time.perf_counter()
    run(model, images, batch_size, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak, peak_extra = memory.stop()
    return {"images_per_s": len(images) / seconds, "seconds": seconds, "peak_mib": peak, "peak_extra_mib": peak_extra}


# ----------------------------------------------------------------------------- main


def build(name: str, overrides: dict, device: torch.device) -> nn.Module:
    model = timm.create_model(name, **overrides).eval().to(device)
    # Weights with spread, so attention maps are not uniform (random init gives flat maps).
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator).to(device) * 0.1)
    return model


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    chosen = settings(args)
    model = build(chosen["model"], chosen["overrides"], device)
    num_images, batch_size = chosen["num_images"], chosen["batch_size"]
    images = torch.randn(num_images, *model_input_config(model)["input_size"], generator=torch.Generator().manual_seed(0))
    naive = make_naive(model)
    quarter = images[: max(batch_size, num_images // 4)]
    modes = {
        "forward": measure(run_forward, model, images, batch_size, device, args.dtype),
        "analysis": measure(run_analysis, model, images, batch_size, device, args.dtype),
        "naive": measure(naive, model, images, batch_size, device, args.dtype),
        "analysis_quarter": measure(run_analysis, model, quarter, batch_size, device, args.dtype),
        "naive_quarter": measure(naive, model, quarter, batch_size, device, args.dtype),
    }
    agreement = _agreement(model, images, batch_size, device, args.dtype, naive)
    return {
        "model": chosen["model"], "overrides": chosen["overrides"], "device": str(device), "dtype": args.dtype,
        "num_images": num_images, "batch_size": batch_size, "quarter_images": len(quarter),
        "memory_measure": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM (peak RSS) after clear_refs",
        "modes": modes,
        "analysis_vs_forward": modes["analysis"]["images_per_s"] / modes["forward"]["images_per_s"],
        "analysis_vs_naive": modes["analysis"]["images_per_s"] / modes["naive"]["images_per_s"],
        "mem_growth": _growth(modes["analysis"], modes["analysis_quarter"]),
        "naive_mem_growth": _growth(modes["naive"], modes["naive_quarter"]),
        "max_abs_diff_similarity_vs_naive": agreement,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
    }  # fmt: skip


# Peaks below this are allocator/RSS noise (glibc arenas, page granularity), not data.
NOISE_FLOOR_MIB = 4.0


def _growth(full: dict, quarter: dict) -> float:
    """Peak extra memory over all images / over a quarter, both floored at the noise level."""
    return max(full["peak_extra_mib"], NOISE_FLOOR_MIB) / max(quarter["peak_extra_mib"], NOISE_FLOOR_MIB)


def _agreement(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, dtype: str, naive) -> float:
    """Both modes must compute the same similarity: a benchmark of a wrong result is worthless."""
    subset = images[:batch_size]
    result = analyze(model, subset, batch_size=batch_size, device=device, dtype=dtype, progress=False, k=K, tau=TAU)
    similarity, _ = naive(model, subset, batch_size, device, dtype)
    return float(np.abs(result.similarity("pre") - similarity).max())


def print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"analyze vs references: {report['model']} on {report['device']}, {report['dtype']}, "
                  f"{report['num_images']} images, batch {report['batch_size']}")  # fmt: skip
    for column in ("mode", "images/s", "seconds", "peak MiB", "peak extra MiB"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for mode, values in report["modes"].items():
        table.add_row(mode, f"{values['images_per_s']:.1f}", f"{values['seconds']:.2f}", f"{values['peak_mib']:.0f}", f"{values['peak_extra_mib']:.1f}")
    console = Console()
    console.print(table)
    for key in ("analysis_vs_forward", "analysis_vs_naive", "mem_growth", "naive_mem_growth", "max_abs_diff_similarity_vs_naive"):
        console.print(f"{key}: {report[key]:.3g}")
    console.print(f"memory: {report['memory_measure']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
