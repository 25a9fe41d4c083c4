"""Start-up: the wall time of ``deepvit-diag --help`` and of a usage error, each in a new
(cold) Python process, against the same commands with torch, timm and the presets loaded
first, as every command did before the package loaded them lazily.

Each command runs ``--repeats`` times, the cases interleaved; times are medians.
``vs_eager`` is the eager case's median over this case's median (how many times faster).
The console script is used when it is installed, else ``python -m deepvit_diag``.

Usage::

    python benchmarks/bench_startup.py --json benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# What the package imported on every command before its names became lazy.
EAGER_PRELUDE = "import torch, timm, deepvit_diag.models, deepvit_diag.analysis; "
COMMANDS = {"--help": ["--help"], "usage error": ["analyze", "--ckpt", "vit32", "--tau", "2"]}


def command_line(argv: list[str], eager: bool) -> list[str]:
    """The process to start: the console script (or ``-m deepvit_diag``), or, for the eager
    case, the same ``main`` after the heavy imports."""
    if eager:
        code = f"{EAGER_PRELUDE}import sys; from deepvit_diag.cli import main; sys.exit(main({argv!r}))"
        return [sys.executable, "-c", code]
    script = shutil.which("deepvit-diag", path=str(Path(sys.executable).parent))
    return [script, *argv] if script else [sys.executable, "-m", "deepvit_diag", *argv]


def time_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 2) or "Traceback" in done.stderr:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
    return elapsed


def measure(repeats: int) -> list[dict[str, Any]]:
    times: dict[tuple[str, bool], list[float]] = {(name, eager): [] for name in COMMANDS for eager in (False, True)}
    for _ in range(repeats):
        for (name, eager), samples in times.items():
            samples.append(time_once(command_line(COMMANDS[name], eager)))
    rows = []
    for name in COMMANDS:
        lazy, eager = statistics.median(times[name, False]), statistics.median(times[name, True])
        rows.append(
            {
                "command": f"deepvit-diag {' '.join(COMMANDS[name])}",
                "median_s": lazy,
                "eager_median_s": eager,
                "vs_eager": eager / lazy,
                "samples_s": times[name, False],
                "eager_samples_s": times[name, True],
            }
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5; the median is kept)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = measure(args.repeats)
    table = Table(title=f"start-up, cold process, median of {args.repeats}")
    for column in ("command", "lazy s", "eager s", "eager / lazy"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["command"], f"{row['median_s']:.3f}", f"{row['eager_median_s']:.3f}", f"{row['vs_eager']:.1f}x"
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
