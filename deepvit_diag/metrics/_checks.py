"""Input validation shared by the metrics: every bad input becomes a one-line DiagError.

Shape and dtype checks read only metadata. Value checks (finite, non-negative) read the
data once with ``torch.aminmax`` (NaN propagates into both extremes, an Inf shows in one
of them; a single pass without temporaries, where ``isfinite(x).all()`` writes a mask).
Outside ``deferred_value_checks`` a failed value check raises at once, which makes the
host wait for the device. Inside it the outcome stays on the device as a flag and is
raised when the block ends, so a streaming loop on a GPU never waits on a check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

from ..choices import AXES, check_choice, check_integer
from ..errors import DiagError


class DeferredChecks:
    """Failed value checks kept on the device: for each message, the first position
    (as set with ``at``) where it failed. ``raise_failures`` reads them, one host sync."""

    # Position of a check that never failed; larger than any position a caller sets.
    _NEVER = torch.iinfo(torch.int64).max

    def __init__(self, describe: Callable[[int], str]):
        self.describe = describe
        self.position = 0
        self._first_failure: dict[str, torch.Tensor] = {}  # message -> int64 0-dim, on the device

    def at(self, position: int) -> None:
        """Attribute the checks that follow to ``position`` (e.g. a batch's first image)."""
        self.position = position

    def record(self, ok: torch.Tensor, message: str) -> None:
        failed_at = torch.where(ok, self._NEVER, self.position)
        previous = self._first_failure.get(message)
        self._first_failure[message] = (
            failed_at if previous is None else torch.minimum(previous, failed_at.to(previous.device))
        )

    def raise_failures(self) -> None:
        """DiagError for the earliest failure (the first recorded message on a tie), if any."""
        if not self._first_failure:
            return
        messages = list(self._first_failure)
        device = next(iter(self._first_failure.values())).device
        positions = torch.stack([value.to(device) for value in self._first_failure.values()]).tolist()
        position, message = min(zip(positions, messages), key=lambda pair: pair[0])
        if position != self._NEVER:
            raise DiagError(f"{message} ({self.describe(position)})")


_DEFERRED: ContextVar[DeferredChecks | None] = ContextVar("deferred_value_checks", default=None)


@contextmanager
def deferred_value_checks(
    describe: Callable[[int], str] = lambda position: f"at position {position}",
) -> Iterator[DeferredChecks]:
    """Value checks inside the block are recorded on the device, not raised at once; a
    failure raises DiagError when the block ends normally (naming ``describe(position)``),
    or earlier at ``raise_failures()``. Metrics computed from bad input in the meantime
    are wrong, so callers must not use them before the block has ended."""
    checks = DeferredChecks(describe)
    token = _DEFERRED.set(checks)
    try:
        yield checks
    finally:
        _DEFERRED.reset(token)
    checks.raise_failures()


def _check_values(tensor: torch.Tensor, name: str, nonnegative_for: str | None = None) -> None:
    """NaN/Inf (and, for softmax-only metrics, negative weights) in ``tensor``."""
    low, high = torch.aminmax(tensor)
    outcomes = [(low.isfinite() & high.isfinite(), f"{name} contains NaN or Inf values")]
    if nonnegative_for is not None:
        outcomes.append(
            (low >= 0, f"{nonnegative_for} needs softmax (pre) attention maps, but {name} has negative values")
        )
    for ok, message in outcomes:
        require(ok, message)


def require(ok: torch.Tensor, message: str) -> None:
    """A value check whose outcome ``ok`` (a 0-dim bool tensor) is on the device: raised as
    ``DiagError(message)`` at once, or recorded when inside ``deferred_value_checks``."""
    deferred = _DEFERRED.get()
    if deferred is not None:
        deferred.record(ok, message)
    elif not bool(ok):
        raise DiagError(message)


def as_tensor(values: object, name: str, ndim: int, layout: str) -> torch.Tensor:
    """``values`` as a tensor: a tensor as it is, a numpy array without a copy, and a list or
    tuple of per-block tensors or arrays (what hooks record, one entry per block) stacked
    along a new first dim, like scikit-learn's ``check_array``."""
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "fiub":
            raise DiagError(f"{name} must be a numeric array {layout}, got dtype {values.dtype}")
        return torch.from_numpy(values)
    if isinstance(values, (list, tuple)):
        if not values:
            raise DiagError(f"{name} is an empty sequence; give one {layout[3:].lstrip()} entry per block")
        entries = [as_tensor(entry, f"{name}[{index}]", ndim - 1, "") for index, entry in enumerate(values)]
        shapes = sorted({tuple(entry.shape) for entry in entries})
        if len(shapes) > 1:
            raise DiagError(f"the entries of {name} must have one shape to stack into {layout}, got {shapes}")
        return torch.stack([entry.to(entries[0].device) for entry in entries])
    raise DiagError(
        f"{name} must be a torch.Tensor or numpy array {layout} or a list of per-block tensors, "
        f"got {type(values).__name__}"
    )


def checked(tensor: object, name: str, ndim: int, layout: str, nonnegative_for: str | None = None) -> torch.Tensor:
    """``tensor`` (a tensor, numpy array or list of per-block tensors, ``as_tensor``) checked
    (``ndim`` dims, none empty, float, finite) and detached, in its own dtype. ``layout``
    names the dims for the message, e.g. ``"(L, B, H, T, T)"``; ``nonnegative_for`` names a
    metric that needs weights >= 0."""
    tensor = as_tensor(tensor, name, ndim, layout)
    if tensor.is_meta:
        raise DiagError(f"{name} is on the meta device: it has a shape but no values to measure")
    if tensor.ndim != ndim:
        raise DiagError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise DiagError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise DiagError(f"{name} has an empty dimension: {tuple(tensor.shape)}")
    tensor = tensor.detach()
    _check_values(tensor, name, nonnegative_for)
    return tensor


def as_float32(tensor: object, name: str, ndim: int, layout: str) -> torch.Tensor:
    """``checked`` and cast to float32; the cast keeps the device, float32 input is
    returned as is (no copy)."""
    return checked(tensor, name, ndim, layout).float()


def checked_maps(maps: object, nonnegative_for: str | None = None) -> torch.Tensor:
    """Stacked attention maps (L, B, H, T, T) checked, in their own dtype."""
    maps = checked(maps, "maps", 5, "(L, B, H, T, T)", nonnegative_for)
    if maps.shape[-1] != maps.shape[-2]:
        raise DiagError(f"maps must be square in the last two dims (L, B, H, T, T), got {tuple(maps.shape)}")
    return maps


def as_float32_maps(maps: object) -> torch.Tensor:
    """Stacked attention maps (L, B, H, T, T) checked and cast to float32."""
    return checked_maps(maps).float()


def as_float32_softmax_maps(maps: object, metric: str) -> torch.Tensor:
    """Like ``as_float32_maps`` but also rejects negative weights (Theta-mixed "post" maps)."""
    return checked_maps(maps, nonnegative_for=metric).float()


def as_float32_hidden(hidden: object) -> torch.Tensor:
    """Stacked block outputs (L, B, T, D) checked and cast to float32."""
    return as_float32(hidden, "hidden", 4, "(L, B, T, D)")


# The one validation of parameters, shared by ``Settings`` and the metric functions.


def check_axis(axis: str) -> None:
    check_choice("axis", axis, AXES)


def check_neighbourhood(k: int) -> None:
    check_integer("k", k, 1)


def check_prefix_tokens(num_prefix_tokens: int, num_tokens: int, needed_patches: int) -> int:
    """Number of patch tokens left after the prefix; at least ``needed_patches``."""
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise DiagError(f"num_prefix_tokens must be an integer >= 0, got {num_prefix_tokens!r}")
    num_patches = num_tokens - num_prefix_tokens
    if num_patches < needed_patches:
        raise DiagError(
            f"{num_tokens} tokens with {num_prefix_tokens} prefix tokens leave {num_patches} patch tokens; "
            f"need at least {needed_patches}"
        )
    return num_patches
