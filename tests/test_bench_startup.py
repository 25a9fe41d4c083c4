"""The start-up benchmark's own correctness: the commands it times run and end as a help
text or a usage error would. (Speed lives in the benchmark itself, not here.)"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("bench_startup", BENCHMARKS / "bench_startup.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_timed_commands_are_the_help_and_a_usage_error():
    help_text = subprocess.run(
        bench.command_line(bench.COMMANDS["--help"], eager=False), capture_output=True, text=True
    )
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: ")
    usage = subprocess.run(
        bench.command_line(bench.COMMANDS["usage error"], eager=False), capture_output=True, text=True
    )
    assert usage.returncode == 2 and "--tau" in usage.stderr and "Traceback" not in usage.stderr
    eager = bench.command_line(["--help"], eager=True)
    assert bench.EAGER_PRELUDE in eager[-1]
