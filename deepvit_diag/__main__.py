"""``python -m deepvit_diag`` and the ``deepvit-diag`` console script.

The command line imports torch, timm and the rest for several seconds before it parses
anything; a Ctrl-C in that time must end like one during the work: the line
``interrupted`` and exit status 130, no traceback. So this module imports nothing heavy,
and the command line is imported inside the handler.
"""

from __future__ import annotations

import signal
import sys

from .errors import interrupted


def main() -> int:
    try:
        from .cli import main as run_command

        status = run_command()
    except KeyboardInterrupt:
        status = interrupted()
    # What is left is shutting down (image-loading workers, atexit hooks): a Ctrl-C there changes nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    sys.exit(main())
