"""Scaling: ``analyze`` in 1, 2, ... processes of a torch.distributed process group.

Every configuration analyses the same images with the same model: P processes (spawned
with ``torch.multiprocessing``; gloo on CPUs, NCCL with one GPU each on GPUs), each with T
torch threads, each analysing its shard of the images (``deepvit_diag.distributed``); the
gathered sums give the result of all images. Times are from a barrier before the analysis
to the result on rank 0 (model building and process start-up excluded), medians of
``--repeats``; images/s is over all images. Every configuration's result is compared with
the first one's: the largest difference of any metric array is reported (float rounding only).

On the CPU the processes share the machine's cores: compare configurations that use the
same number of cores (P x T), e.g. 1 x 2 against 2 x 1 on 2 cores. On a machine with
several GPUs the same script measures one process per GPU.

Usage::

    python benchmarks/bench_distributed.py --quick --json distributed.json     # CPU, < 2 minutes
    python benchmarks/bench_distributed.py --device cuda --model deepvit32 --img-size 224 --dtype bfloat16 \\
        --num-images 4096 --batch-size 128 --configs 1x1 2x1 4x1 8x1 --json gpu-distributed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_analysis import TAU, K, build, device_name
from rich.console import Console
from rich.table import Table

from deepvit_diag.analysis import analyze
from deepvit_diag.results import AnalysisResult, package_versions

QUICK = {
    "model": "deepvit16",
    "overrides": {"depth": 6, "embed_dim": 64, "num_heads": 4, "img_size": 32, "patch_size": 4, "num_classes": 10},
    "num_images": 512,
    "batch_size": 32,
    "configs": ["1x1", "1x2", "2x1"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small CPU workload (defaults below)")
    parser.add_argument("--model", default=QUICK["model"], help="timm / deepvit-diag model name")
    parser.add_argument("--img-size", type=int, help="image size (default: the quick workload's 32 px)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--num-images", type=int, default=QUICK["num_images"])
    parser.add_argument("--batch-size", type=int, default=QUICK["batch_size"])
    parser.add_argument(
        "--configs", nargs="+", default=QUICK["configs"], metavar="PxT", help="P processes with T threads each"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the report here")
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(QUICK["overrides"]) if args.model == QUICK["model"] else {}
    if args.img_size:
        overrides["img_size"] = args.img_size
    return overrides


def _images(args: argparse.Namespace, overrides: dict[str, Any]) -> torch.Tensor:
    size = overrides.get("img_size", 224)
    return torch.randn(args.num_images, 3, size, size, generator=torch.Generator().manual_seed(0))


def _process(rank: int, world: int, threads: int, args: argparse.Namespace, rendezvous: str, out: str) -> None:
    torch.set_num_threads(threads)
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if on_gpu else "gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        device = torch.device(f"cuda:{rank}" if on_gpu else "cpu")
        overrides = _overrides(args)
        model = build(args.model, overrides, device)
        images = _images(args, overrides)
        options = dict(batch_size=args.batch_size, device=str(device), dtype=args.dtype, k=K, tau=TAU, progress=False)
        analyze(model, images[: args.batch_size * world], **options)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            dist.barrier()
            start = time.perf_counter()
            result = analyze(model, images, **options)
            seconds.append(time.perf_counter() - start)
        if rank == 0:
            result.save(out)
            (Path(out) / "seconds.json").write_text(json.dumps(seconds))
    finally:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, config: str, folder: Path) -> tuple[dict[str, Any], AnalysisResult]:
    processes, threads = (int(part) for part in config.split("x"))
    out = folder / config
    rendezvous = f"file://{folder / (config + '.rendezvous')}"
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    mp.spawn(_process, args=(processes, threads, args, rendezvous, str(out)), nprocs=processes)
    seconds = statistics.median(json.loads((out / "seconds.json").read_text()))
    row = {"config": config, "processes": processes, "threads": threads, "seconds": seconds}
    row["images_per_s"] = args.num_images / seconds
    return row, AnalysisResult.load(out)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    rows, first = [], None
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as folder:
        for config in args.configs:
            row, result = measure(args, config, Path(folder))
            if first is None:
                first = result
            row["max_abs_diff"] = max(
                float(np.nanmax(np.abs(result.arrays[name].astype(np.float64) - array.astype(np.float64))))
                for name, array in first.arrays.items()
                if array.size and array.dtype.kind != "U"  # the examples' names and labels are text
            )
            rows.append(row)
    baseline = rows[0]["images_per_s"]
    for row in rows:
        row["speedup"] = row["images_per_s"] / baseline
    device = torch.device("cuda:0" if args.device.startswith("cuda") else "cpu")
    return {
        "benchmark": "distributed",
        "model": args.model,
        "overrides": _overrides(args),
        "device": args.device,
        "device_name": device_name(device),
        "cores": os.cpu_count(),
        "dtype": args.dtype,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
        "versions": package_versions(),
    }


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"analyze in a process group: {report['model']} on {report['device']} ({report['device_name']}, "
        f"{report['cores']} cores), {report['num_images']} images, median of {report['repeats']}"
    )
    first = report["rows"][0]["config"]
    for column in ("processes x threads", "images/s", "seconds", f"speedup over {first}", "max abs diff to it"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        speed, seconds, speedup = f"{row['images_per_s']:.1f}", f"{row['seconds']:.2f}", f"{row['speedup']:.2f}x"
        table.add_row(row["config"], speed, seconds, speedup, f"{row['max_abs_diff']:.1e}")
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
