"""``python -m deepvit_diag`` (and ``torchrun -m deepvit_diag``): the command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
