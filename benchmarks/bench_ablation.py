"""Cost of ``ablate`` relative to ``analyze`` on the same model and images, in one run.

Workloads (the CPU quick model of ``bench_analysis.py``, synthetic labelled images):

* ``quick``: deepvit16 with 6 blocks, dim 64, 4 heads, 32 px images, patch 4 (65 tokens);
* ``quick32``: the same model with 32 blocks, where "the whole block study costs well under
  L times a plain analysis" is measured at L = 32 (block study only).

Modes, each timed over the same images with the same batch size:

* ``analysis``: ``deepvit_diag.analyze`` (every collapse metric);
* ``ablate_<study>``: ``deepvit_diag.ablate(studies=[study])`` for each study (its intact
  passes included: pass 1 with the maps, then the ablations);
* ``naive_block_study``: what the block study costs without deepvit-diag's batching: for each
  block, the model rebuilt without it and run over every image (L full forward passes per
  image, plus one intact), numbers compared with ``ablate``'s.

Ratios: ``<mode>_vs_analysis`` = mode seconds / analysis seconds; for the block study also
``block_study_vs_L_analyses`` = ablate_block seconds / (L x analysis seconds) (the issue's
"well under L times a plain analysis": below 1, and the lower the better) and
``block_study_vs_naive`` = ablate_block seconds / naive_block_study seconds. ``planned`` is
``ablation.planned_cost``: the forward passes per image the run was expected to cost.
Modes are interleaved over ``--repeats``; times are medians.

Usage::

    python benchmarks/bench_ablation.py --quick --json benchmarks/results/ablation_quick_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_analysis import build, device_name
from rich.console import Console
from rich.table import Table
from torch import nn

from deepvit_diag.ablation import STUDIES, ablate, planned_cost
from deepvit_diag.analysis import analyze
from deepvit_diag.metrics import prediction_divergence
from deepvit_diag.results import package_versions

QUICK = {"depth": 6, "embed_dim": 64, "num_heads": 4, "img_size": 32, "patch_size": 4, "num_classes": 10}
WORKLOADS = {
    "quick": {"overrides": QUICK, "num_images": 64, "studies": STUDIES},
    # The block study only: at 32 blocks the head study alone runs 4 x 32 ablations per image.
    "quick32": {"overrides": {**QUICK, "depth": 32}, "num_images": 16, "studies": ("block",)},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="both CPU workloads with their defaults (a few minutes)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--num-images", type=int, help="images per workload (default: the workload's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser.parse_args(argv)


def labelled_images(count: int, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 3, size, size, generator=generator), torch.randint(
        0, classes, (count,), generator=generator
    )


def naive_block_study(model: nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """Mean KL of each block's removal, one rebuilt model and full forward passes per block."""
    with torch.inference_mode():
        intact = torch.cat([model(x) for x in images.split(batch_size)])
        kl = []
        for block in range(len(model.blocks)):
            pruned = copy.deepcopy(model)
            pruned.blocks = nn.ModuleList(b for index, b in enumerate(model.blocks) if index != block)
            logits = torch.cat([pruned(x) for x in images.split(batch_size)])
            kl.append(float(prediction_divergence(intact, logits).mean()))
    return np.array(kl)


def timed(run) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def run_workload(name: str, args: argparse.Namespace) -> dict[str, Any]:
    workload = WORKLOADS[name]
    model = build("deepvit16", workload["overrides"], torch.device("cpu"))
    depth = len(model.blocks)
    count = args.num_images or workload["num_images"]
    images = labelled_images(count, workload["overrides"]["img_size"], workload["overrides"]["num_classes"])
    options = dict(batch_size=args.batch_size, device="cpu", progress=False)
    modes = {
        "analysis": lambda: analyze(model, images, **options),
        **{
            f"ablate_{study}": (lambda study=study: ablate(model, images, studies=[study], **options))
            for study in workload["studies"]
        },
    }
    if len(workload["studies"]) > 1:
        modes["ablate_all"] = lambda: ablate(model, images, studies=workload["studies"], **options)
    modes["naive_block_study"] = lambda: naive_block_study(model, images[0], args.batch_size)
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    outputs: dict[str, Any] = {}
    for _ in range(args.repeats):
        for mode, run in modes.items():
            elapsed, outputs[mode] = timed(run)
            seconds[mode].append(elapsed)
    median = {mode: statistics.median(values) for mode, values in seconds.items()}
    analysis = median["analysis"]
    ablated_kl = outputs["ablate_block"].values("block", "kl")
    return {
        "workload": name,
        "depth": depth,
        "num_images": count,
        "batch_size": args.batch_size,
        "seconds": median,
        "vs_analysis": {mode: value / analysis for mode, value in median.items()},
        "block_study_vs_L_analyses": median["ablate_block"] / (depth * analysis),
        "block_study_vs_naive": median["ablate_block"] / median["naive_block_study"],
        "block_kl_max_difference_vs_naive": float(np.abs(ablated_kl - outputs["naive_block_study"]).max()),
        "planned": {
            "block": planned_cost(model, ["block"]),
            "all": planned_cost(model, list(workload["studies"])),
        },
    }


def print_table(report: dict[str, Any]) -> None:
    console = Console()
    for workload in report["workloads"]:
        table = Table(
            title=f"{workload['workload']}: {workload['depth']} blocks, {workload['num_images']} images, "
            f"batch {workload['batch_size']}, {report['threads']} thread(s), load {report['load_average']}"
        )
        for column in ("mode", "seconds", "vs analysis"):
            table.add_column(column, justify="right")
        for mode, value in workload["seconds"].items():
            table.add_row(mode, f"{value:.2f}", f"{workload['vs_analysis'][mode]:.2f}x")
        console.print(table)
        planned = workload["planned"]["block"]
        console.print(
            f"block study: {workload['block_study_vs_L_analyses']:.3f} of L = {workload['depth']} analyses, "
            f"{workload['block_study_vs_naive']:.2f}x the naive rebuilt-model loop (max KL difference "
            f"{workload['block_kl_max_difference_vs_naive']:.1e}); planned {planned['forward_equivalents']:.1f} "
            f"forward passes per image for its {planned['variants']['block']} removals",
            highlight=False,
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "load_average": round(os.getloadavg()[0], 2),
        "versions": package_versions(),
        "workloads": [run_workload(name, args) for name in args.workloads],
    }
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
