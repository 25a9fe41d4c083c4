"""How ``analyze``'s cost follows the model's forward as images get bigger and models deeper.

For every token count T in ``--tokens`` and depth L in ``--depths``: a random timm ViT-S
(``vit_small_patch16_224``: width 384, 6 heads; the image size gives T = 1 + (size / 16)^2,
e.g. 592 px for T = 1,370) runs ``--images`` random images (default: one batch) in batches of
``--batch-size``,
as the plain forward (fused attention, ``torch.inference_mode``) and as ``analyze`` (every
metric, CKA, examples), the two modes interleaved ``--repeats`` times so that load changes on
a shared machine hit both alike. Reported per (T, L), medians over the repeats:

* ``ratio`` = analysis images/s / forward images/s (1.0: the analysis costs nothing beyond
  the forward);
* ``extra_mib_per_image`` = (analysis peak - forward peak) / batch size, the memory the
  analysis needs beyond the forward per image of a batch (host RSS on the CPU, allocated
  device memory with ``--device cuda``; ``bench_analysis.PeakMemory``);
* the batch and the rows per chunk the memory budget chose (the analysis's own record,
  ``computation``), and the load average before and after.

Usage::

    python benchmarks/bench_scaling.py --threads 1 --json benchmarks/results/scaling_t1.json
    python benchmarks/bench_scaling.py --tokens 65 197 --depths 6 --repeats 1   # a quick look
    python benchmarks/bench_scaling.py --device cuda --batch-size 32 --tokens 197 577 1370 --depths 12 24
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import timm
import torch
from bench_analysis import device_name, median_runs, timed
from rich.console import Console
from rich.table import Table

from deepvit_diag.analysis import analyze
from deepvit_diag.device import keep_host_allocations, resolve_device
from deepvit_diag.results import package_versions

PATCH = 16
MODEL = "vit_small_patch16_224"


def image_size(num_tokens: int) -> int:
    """The image side whose 16-px patch grid plus the class token gives ``num_tokens``."""
    side = math.isqrt(num_tokens - 1)
    if side * side != num_tokens - 1:
        raise SystemExit(f"error: {num_tokens} tokens are not 1 + a square number of patches")
    return side * PATCH


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[65, 197, 577, 1370])
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--images", type=int, help="images per run (default: one batch)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--memory-budget", type=int, help="MiB passed to analyze (default: its own)")
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda; on CUDA the memory column is device memory"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def run_case(num_tokens: int, depth: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    size = image_size(num_tokens)
    # More images at small T keep analyze's fixed cost per call from dominating the ratio, but
    # CKA and the examples then hold more images, which the memory column would count.
    count = args.images or args.batch_size
    torch.manual_seed(0)
    model = timm.create_model(MODEL, depth=depth, img_size=size, num_classes=10).eval().to(device)
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    options = {"progress": False, "num_examples": 1}
    if args.memory_budget:
        options["memory_budget"] = args.memory_budget

    def forward(model, images, batch_size, device, dtype) -> None:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size])

    def analysis(model, images, batch_size, device, dtype) -> dict[str, Any]:
        return analyze(model, images, batch_size=batch_size, device=device, **options).computation

    if device.type == "cuda":  # kernels chosen and loaded before the first timed run
        forward(model, images, args.batch_size, device, "float32")
        analysis(model, images, args.batch_size, device, "float32")
    runs: dict[str, list[dict]] = {"forward": [], "analysis": []}
    for _ in range(args.repeats):
        for mode, run in (("forward", forward), ("analysis", analysis)):
            runs[mode].append(timed(run, model, images, args.batch_size, device, "float32"))
    median = {mode: median_runs(measured) for mode, measured in runs.items()}
    peak = "device_peak_extra_mib" if device.type == "cuda" else "host_peak_extra_mib"
    extra = median["analysis"][peak] - median["forward"][peak]
    computation = median["analysis"]["computation"]
    batch_size = computation["final_batch_size"]
    return {
        "tokens": num_tokens,
        "depth": depth,
        "image_size": size,
        "images": count,
        "batch_size": batch_size,
        "rows_per_chunk": computation["rows_per_chunk"][0],
        "forward_images_per_s": median["forward"]["images_per_s"],
        "analysis_images_per_s": median["analysis"]["images_per_s"],
        "ratio": median["analysis"]["images_per_s"] / median["forward"]["images_per_s"],
        "memory": "CUDA max_memory_allocated" if device.type == "cuda" else "host RSS",
        "forward_peak_mib": median["forward"][peak],
        "analysis_peak_mib": median["analysis"][peak],
        "extra_mib_per_image": extra / min(count, batch_size),
        "runs": runs,
    }


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"analyze vs forward, {report['model']} on {report['device']}, {report['torch_threads']} thread(s), "
        f"median of {report['repeats']}; load {report['load_before']} -> {report['load_after']}"
    )
    for column in ("T", "L", "px", "batch", "rows/chunk", "forward img/s", "analysis img/s", "ratio", "extra MiB/img"):
        table.add_column(column, justify="right")
    for case in report["cases"]:
        table.add_row(
            str(case["tokens"]),
            str(case["depth"]),
            str(case["image_size"]),
            str(case["batch_size"]),
            str(case["rows_per_chunk"]),
            f"{case['forward_images_per_s']:.2f}",
            f"{case['analysis_images_per_s']:.2f}",
            f"{case['ratio']:.2f}",
            f"{case['extra_mib_per_image']:.1f}",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if device.type == "cpu":
        keep_host_allocations()  # as analyze does on its first batch, so the forward runs alike
    load_before = [round(value, 2) for value in os.getloadavg()]
    cases = [run_case(tokens, depth, args, device) for depth in args.depths for tokens in args.tokens]
    report = {
        "model": MODEL,
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "load_before": load_before,
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "versions": package_versions(),
        "cases": cases,
    }
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
