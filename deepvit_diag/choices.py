"""The fixed choices and limits that options name: the axes of an attention similarity, the
smallest CKA minibatch, the compute dtypes and a sweep's x axes.

Nothing here imports torch, so that the command line can build its options, answer
``--help`` and report a usage error without loading it; the metrics, the analysis and the
sweeps import these names from here.
"""

from __future__ import annotations

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
