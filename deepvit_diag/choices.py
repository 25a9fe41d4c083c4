"""The fixed choices and limits that options name: the axes of an attention similarity, the
smallest CKA minibatch, the compute dtypes and a sweep's x axes.

The checks of option values live here too (one validation path for ``Settings`` and the
metric functions). Nothing here imports torch, so that the command line can build its options, answer
``--help`` and report a usage error without loading it; the metrics, the analysis and the
sweeps import these names from here.
"""

from __future__ import annotations

import math

from .errors import DiagError

# The two ways to compare attention maps as vectors: columns (what each token contributes,
# paper Eqn 2) or rows (what each token attends to).
AXES = ("columns", "rows")
# The unbiased HSIC estimator (Song et al. 2012) divides by (n - 1)(n - 2)(n - 3).
MIN_UNBIASED_EXAMPLES = 4
# Compute dtypes of the forward passes, by torch's names.
DTYPE_NAMES = ("float32", "bfloat16")
# What the x axis of a sweep is, and how the figures and tables name it.
X_AXES = {
    "depth": "depth (blocks)",
    "epoch": "epoch",
    "step": "training step",
    "order": "checkpoint (in the order given)",
}
X_AXIS_CHOICES = ("auto", "depth", "epoch", "order")
# The studies of an ablation (``deepvit_diag.ablate``) and how a head is ablated.
STUDIES = ("block", "attention", "transplant", "head", "reattention", "pruning")
HEAD_MODES = ("mean", "zero")


def check_integer(name: str, value: object, minimum: int) -> None:
    """An ``int`` (not a bool) >= ``minimum``, else DiagError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DiagError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_between(name: str, value: object, low: float, high: float) -> None:
    """A finite real number (not text, not a bool) in [low, high], else DiagError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise DiagError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    """One of ``choices``, else DiagError."""
    if value not in choices:
        raise DiagError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_threshold(value: object, name: str) -> float:
    """A threshold (tau, rho) as a float: a real number (not text, not a bool) in [0, 1]."""
    check_between(name, value, 0.0, 1.0)
    return float(value)
