"""Top-k accuracy from a classifier's logits (docs/metrics.md, accuracy).

Not an attention metric: the analysis counts, from the logits its forward passes compute
anyway, the images whose label is among the k largest logits. Counts are summed over
batches on the device, so the dataset accuracy is exact at any batch size and the host
reads it once, at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DiagError
from ._checks import checked, require

# The accuracies reported: top-1 and top-5, as in the paper's tables and timm's validate.py.
TOP_K = (1, 5)


def reported_ks(num_classes: int) -> tuple[int, ...]:
    """The k of ``TOP_K`` worth reporting for ``num_classes`` classes: those below it
    (top-k over k >= C classes is always 100%)."""
    return tuple(k for k in TOP_K if k < num_classes)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K) -> torch.Tensor:
    """How many images have their label among the k largest logits, for each k of ``ks``.

    The label's rank is the number of classes with a strictly larger logit,
    ``rank[b] = #{c : logits[b, c] > logits[b, labels[b]]}``, and image b counts for k when
    ``rank[b] < k``. Ties go to the label, so top-1 is ``argmax == label`` whenever the
    largest logit is unique.

    Args:
        logits: (B, C) float, any dtype and device.
        labels: (B,) integer class indices in [0, C), on any device (moved to the logits').
        ks: each between 1 and C.
    Returns:
        int64 (len(ks),) on the device of ``logits``: a count per k (a sum, not a mean, so
        batches add up exactly).

    Example:
        >>> dd.topk_correct(logits, labels)  # logits (B, classes), labels (B,)
    """
    logits = checked(logits, "logits", 2, "(B, C)")
    batch, num_classes = logits.shape
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch,) or not _is_integer(labels):
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DiagError(f"labels must be an integer tensor (B,) = ({batch},) of class indices, got {got}")
    bad_k = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes]
    if bad_k or not ks:
        raise DiagError(f"every k must be a whole number from 1 to the {num_classes} classes, got {list(ks)}")
    labels = labels.to(logits.device, non_blocking=True)
    low, high = torch.aminmax(labels)
    require((low >= 0) & (high < num_classes), f"labels must be class indices from 0 to {num_classes - 1}")
    # Clamped, so that a bad label (reported by the check) cannot make gather fail first.
    true_logit = logits.gather(1, labels.clamp(0, num_classes - 1).unsqueeze(1))
    rank = (logits > true_logit).sum(dim=1)
    return torch.stack([(rank < k).sum() for k in ks])


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


@dataclass(frozen=True)
class Accuracy:
    """Top-k accuracy of a model over the labelled images of an analysis, or why there is none.

    Attributes:
        images: images counted, every analysed image (0 when they carry no labels).
        correct: k -> images whose label is among the k largest logits (``topk_correct``).
        labels: where the labels came from, or why there is no accuracy.
    """

    images: int
    correct: dict[int, int] = field(default_factory=dict)
    labels: str = ""

    @classmethod
    def unavailable(cls, reason: str) -> Accuracy:
        """No accuracy, with the reason (e.g. the images carry no labels)."""
        return cls(0, {}, reason)

    @property
    def available(self) -> bool:
        """Whether labelled images were counted."""
        return self.images > 0 and bool(self.correct)

    def top(self, k: int) -> float | None:
        """The top-k accuracy (a share in [0, 1]); None when it was not measured."""
        return self.correct[k] / self.images if self.available and k in self.correct else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``from_dict`` reads it back)."""
        correct = {str(k): count for k, count in self.correct.items()}  # JSON keys are strings
        return {"images": self.images, "correct": correct, "labels": self.labels}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Accuracy:
        """The accuracy ``to_dict`` wrote."""
        return cls(values["images"], {int(k): int(count) for k, count in values["correct"].items()}, values["labels"])
