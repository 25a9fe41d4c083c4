"""Images from disk: how fast ``analyze`` reads JPEG files with 0 and with N decoding
worker processes (``num_workers``), the pinned-memory ``DataLoader`` of
``ImageSet.batches``.

The folder is written first: ``--num-images`` JPEGs of 500 x 375 px at quality 90 (the
size of an ImageNet validation image), random crops of the bundled photographs. Modes,
each for every worker count in ``--workers``:

* ``decode``: ``ImageSet.batches`` alone (decode, resize, crop, normalise, stack), no model.
* ``analysis``: ``deepvit_diag.analyze`` on the folder, every metric on.

Every mode runs ``--repeats`` times, the worker counts interleaved; images/s are medians.
``speedup`` is images/s over images/s with 0 workers. The analysis results must not depend
on the worker count: the largest difference of any metric array against the 0-worker
run is reported (and must be 0).

Usage::

    python benchmarks/bench_loading.py --quick --json loading.json      # tiny model, CPU, < 1 minute
    python benchmarks/bench_loading.py --device cuda --model deepvit32 --dtype bfloat16 \\
        --batch-size 128 --num-images 2048 --workers 0 4 8 --json gpu-loading.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_analysis import TAU, K, build, device_name
from rich.console import Console
from rich.table import Table

from deepvit_diag.analysis import analyze
from deepvit_diag.device import resolve_device
from deepvit_diag.images import open_images
from deepvit_diag.preprocessing import model_transform
from deepvit_diag.results import package_versions

IMAGE_SIZE = (500, 375)
# A tiny, fast model at 224 px (7 x 7 patches of 32 px), so that decoding is a large share
# of the time, as it is for a large model on a GPU; the files are resized as for any model.
QUICK = {
    "model": "vit16",
    "overrides": {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 32, "num_classes": 10},
    "num_images": 128,
    "batch_size": 16,
    "workers": [0, 1, 2],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny 4-block ViT at 224 px, 128 images, batch 16, workers 0 1 2 (under a minute on 2 CPU cores); "
        "other flags override these",
    )
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    parser.add_argument("--model", help="model name (random weights; default deepvit24)")
    parser.add_argument("--num-images", type=int, help="JPEG files to write and read (default 512; 128 with --quick)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default 32)")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="analysis dtype (default float32)"
    )
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts to measure (default 0 2 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of the main process (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    defaults = (
        QUICK if args.quick else {"model": "deepvit24", "num_images": 512, "batch_size": 32, "workers": [0, 2, 4]}
    )
    for key, value in defaults.items():  # flags given explicitly win over --quick
        if key in vars(args) and getattr(args, key) is None:
            setattr(args, key, value)
    if 0 not in args.workers:
        args.workers = [0, *args.workers]  # the baseline of every speedup
    return args


def write_jpegs(folder: Path, count: int) -> None:
    """``count`` JPEGs cut at random from the bundled photographs (seeded)."""
    photos = list(open_images("photos"))
    rng = random.Random(0)
    for index in range(count):
        photo = photos[index % len(photos)]
        scale = max(IMAGE_SIZE[0] / photo.width, IMAGE_SIZE[1] / photo.height) * rng.uniform(1.0, 1.5)
        resized = photo.resize((round(photo.width * scale) + 1, round(photo.height * scale) + 1))
        left, top = rng.randrange(resized.width - IMAGE_SIZE[0]), rng.randrange(resized.height - IMAGE_SIZE[1])
        crop = resized.crop((left, top, left + IMAGE_SIZE[0], top + IMAGE_SIZE[1]))
        crop.save(folder / f"{index:05d}.jpg", quality=90)


def run_decode(folder: Path, transform, batch_size: int, workers: int, pin_memory: bool) -> int:
    images = open_images(folder)
    return sum(
        len(batch[0]) for batch in images.batches([transform], batch_size, num_workers=workers, pin_memory=pin_memory)
    )


def run_analysis(folder: Path, model, batch_size: int, workers: int, device: torch.device, dtype: str):
    return analyze(
        model,
        str(folder),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        num_workers=workers,
        progress=False,
        k=K,
        tau=TAU,
    )


def timed(run, *args) -> tuple[float, Any]:
    """Seconds and output of ``run(*args)``; both modes end on the host (decoded batches,
    an analysis result read back), so no device synchronisation is needed."""
    start = time.perf_counter()
    output = run(*args)
    return time.perf_counter() - start, output


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = build(args.model, QUICK["overrides"] if args.quick else {}, device)
    transform = model_transform(model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jpegs(folder, args.num_images)
        megabytes = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        pin = device.type == "cuda"
        run_decode(folder, transform, args.batch_size, 0, pin)  # warm-up: file cache, lazy init
        run_analysis(folder, model, args.batch_size, 0, device, args.dtype)
        seconds: dict[str, dict[int, list[float]]] = {"decode": {}, "analysis": {}}
        results = {}
        for _ in range(args.repeats):
            for workers in args.workers:
                seconds["decode"].setdefault(workers, []).append(
                    timed(run_decode, folder, transform, args.batch_size, workers, pin)[0]
                )
                elapsed, results[workers] = timed(
                    run_analysis, folder, model, args.batch_size, workers, device, args.dtype
                )
                seconds["analysis"].setdefault(workers, []).append(elapsed)
    modes = {}
    for mode, per_workers in seconds.items():
        base = args.num_images / statistics.median(per_workers[0])
        modes[mode] = {
            str(workers): {
                "images_per_s": args.num_images / statistics.median(runs),
                "speedup": args.num_images / statistics.median(runs) / base,
                "images_per_s_all": [args.num_images / s for s in runs],
            }
            for workers, runs in per_workers.items()
        }
    baseline = results[0].arrays
    # The examples' names, labels and predictions are text: equal, or infinitely different.
    difference = max(
        (0.0 if np.array_equal(result.arrays[name], baseline[name]) else np.inf)
        if baseline[name].dtype.kind == "U"
        else float(np.nanmax(np.abs(result.arrays[name] - baseline[name]), initial=0.0))
        for result in results.values()
        for name in baseline
    )
    return {
        "model": args.model,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "num_images": args.num_images,
        "image_size": IMAGE_SIZE,
        "folder_mib": megabytes,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "pin_memory": device.type == "cuda",
        "modes": modes,
        "max_abs_diff_vs_0_workers": difference,
        "torch_threads": torch.get_num_threads(),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "versions": package_versions(),
    }


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"JPEG loading: {report['model']} on {report['device']} ({report['device_name']}), "
        f"{report['num_images']} images of {report['image_size'][0]}x{report['image_size'][1]}, "
        f"batch {report['batch_size']}, median of {report['repeats']}"
    )
    for column in ("mode", "workers", "images/s", "speedup vs 0 workers"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, per_workers in report["modes"].items():
        for workers, values in per_workers.items():
            table.add_row(mode, workers, f"{values['images_per_s']:.1f}", f"{values['speedup']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"max abs difference of any metric vs 0 workers: {report['max_abs_diff_vs_0_workers']:.3g}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_benchmark(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["max_abs_diff_vs_0_workers"] != 0:
        raise SystemExit("the results depend on the number of workers")


if __name__ == "__main__":
    main()
