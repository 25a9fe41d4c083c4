"""The ``deepvit-diag`` console script.

It lives outside the ``deepvit_diag`` package on purpose: a command imports torch and timm
(and registers the presets with timm) for several seconds, and a Ctrl-C in that time must
end like one during the work, with the line ``interrupted`` and exit status
130, not a traceback. Python runs a package's ``__init__`` before any module inside it, so
only a module outside the package can catch that interrupt.
"""

from __future__ import annotations

import signal
import sys

# The same words and status as deepvit_diag.errors.INTERRUPTED_LINE and INTERRUPTED_STATUS, which cannot be imported
# before the package has loaded.
INTERRUPTED_STATUS = 130


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)  # deepvit_diag.errors.raise_interrupt, before the package can be imported


def main() -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM ends a run like Ctrl-C, also while importing
    try:
        from deepvit_diag.cli import main as run_command

        status = run_command()
    except KeyboardInterrupt as err:
        terminated = bool(err.args) and err.args[0] == signal.SIGTERM
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        status = 128 + signal.SIGTERM if terminated else INTERRUPTED_STATUS
    # What is left is shutting down (image-loading workers, atexit hooks): a signal there changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    sys.exit(main())
