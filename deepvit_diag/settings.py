"""The analysis parameters: one frozen dataclass, like timm's ``PretrainedCfg``.

``analyze``/``compare`` take a ``Settings`` (or keyword overrides of its fields), the
command line builds its options from the fields (``deepvit_diag.cli``), the app builds its
widgets from them, and every result records the settings it was computed with. Each
field's metadata holds what those consumers need: a one-line ``help``, a short ``label``,
and the allowed values (``minimum`` for integers, an ``interval`` for numbers, ``choices``),
plus the command-line ``flag`` where it is not ``--`` and the field name.

The metric parameters (k, tau, rho, axis, maps) are defined in ``docs/metrics.md``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from .choices import AXES, DTYPE_NAMES, MIN_UNBIASED_EXAMPLES, check_between, check_choice, check_integer
from .errors import DiagError

if TYPE_CHECKING:
    import torch

# Shares of the maximum entropy ln T that the summary counts blocks at or below: a block at
# 0.8 ln T attends selectively, one at 1.0 ln T spreads its attention evenly.
ENTROPY_LEVELS = (0.8, 0.9)
# "pre": the softmax maps; "post": what multiplies V (after Theta in Re-attention blocks).
MAP_KINDS = ("pre", "post")
# The parameters of the metrics themselves (the other settings say how the work is done): the
# same models and images analysed with the same values give the same numbers.
METRIC_PARAMETERS = ("k", "tau", "rho", "axis", "maps")


def _parameter(
    help: str,
    label: str,
    *,
    minimum: int | None = None,
    interval: tuple[float, float] | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    optional: bool = False,
) -> dict[str, Any]:
    return {
        "optional": optional,
        "help": help,
        "label": label,
        "minimum": minimum,
        "interval": interval,
        "choices": choices,
        "flag": flag,
        "metavar": metavar,
    }


@dataclass(frozen=True)
class Settings:
    """How an analysis is computed; every field is validated on construction (``DiagError``).

    ``device="auto"`` and ``num_workers=None`` are resolved by ``resolved()``, which is what
    results record.
    """

    k: int = field(
        default=2,
        metadata=_parameter(
            "neighbouring blocks on each side that a block's similarity ratio compares with",
            "k: neighbour blocks",
            minimum=1,
        ),
    )
    tau: float = field(
        default=0.5,
        metadata=_parameter(
            "cosine similarity above which an attention vector counts as similar to its neighbours'",
            "tau: cosine threshold",
            interval=(0.0, 1.0),
        ),
    )
    rho: float = field(
        default=0.9,
        metadata=_parameter(
            "similarity ratio above which a block counts as similar, as in the paper's Fig. 3",
            "rho: similar-block threshold",
            interval=(0.0, 1.0),
        ),
    )
    axis: str = field(
        default="columns",
        metadata=_parameter(
            "compare attention columns (what each token contributes, paper Eqn 2) or rows (what each token attends to)",
            "attention vectors",
            choices=AXES,
        ),
    )
    maps: str = field(
        default="post",
        metadata=_parameter(
            "maps the headline numbers use in Re-attention blocks: 'post' (after Theta, what multiplies V) or 'pre' "
            "(the softmax maps); plain ViT blocks have only one kind",
            "maps for the headline numbers",
            choices=MAP_KINDS,
        ),
    )
    batch_size: int = field(
        default=32,
        metadata=_parameter(
            "most images per forward pass (fewer when the memory budget needs it; halved on CUDA out-of-memory)",
            "batch size requested",
            minimum=1,
            metavar="B",
        ),
    )
    memory_budget: int | None = field(
        default=None,
        metadata=_parameter(
            "memory in MiB the analysis may use beside the model's weights; it picks the batch size and the chunk "
            "of query rows to fit (default: the device's free memory, on the CPU half the available memory)",
            "memory budget (MiB)",
            minimum=1,
            metavar="MIB",
            optional=True,
        ),
    )
    num_images: int | None = field(
        default=None,
        metadata=_parameter(
            "analyse only the first N usable images (default: all)",
            "images requested",
            minimum=1,
            metavar="N",
            optional=True,
        ),
    )
    device: str = field(
        default="auto",
        metadata=_parameter("'auto' (CUDA when present), 'cpu' or 'cuda[:N]'", "device"),
    )
    dtype: str = field(
        default="float32",
        metadata=_parameter(
            "compute dtype of the forward passes (metrics are always accumulated in float32)",
            "compute dtype",
            choices=DTYPE_NAMES,
        ),
    )
    cka_chunk: int = field(
        default=32,
        metadata=_parameter(
            f"images per minibatch of the CKA estimator (at least {MIN_UNBIASED_EXAMPLES})",
            "images per CKA minibatch",
            minimum=MIN_UNBIASED_EXAMPLES,
            metavar="N",
        ),
    )
    num_examples: int = field(
        # The report draws every example image once per head and block row: two keep report.html small.
        default=2,
        metadata=_parameter(
            "first images whose per-head CLS attention maps are kept (and drawn in the report)",
            "example images kept",
            minimum=0,
            flag="--examples",
            metavar="N",
        ),
    )
    num_workers: int | None = field(
        default=None,
        metadata=_parameter(
            "processes that decode and resize images while the model runs "
            "(default: 0 on the CPU, up to 8 on a GPU, one fewer than the cores)",
            "image-decoding worker processes",
            minimum=0,
            flag="--workers",
            metavar="N",
            optional=True,
        ),
    )

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not (value is None and spec.metadata["optional"]):
                _validate(spec.name, value, spec.metadata)
        # A torch.device can only exist once torch is loaded; settings are built without loading it.
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        if not isinstance(self.device, str):
            raise DiagError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {self.device!r}")

    @property
    def torch_device(self) -> torch.device:
        """The device as a ``torch.device`` ("auto" resolved to the best available)."""
        from .device import resolve_device

        try:
            return resolve_device(self.device)
        except (ValueError, RuntimeError) as err:
            raise DiagError(str(err)) from None

    def resolved(self) -> Settings:
        """The same settings with the device and the worker count made concrete."""
        device = self.torch_device
        workers = default_num_workers(device) if self.num_workers is None else self.num_workers
        return replace(self, device=str(device), num_workers=workers)

    @property
    def grid_ks(self) -> tuple[int, ...]:
        """The k of the robustness grid (docs/metrics.md): k - 1 (when >= 1), k and k + 1."""
        return tuple(value for value in (self.k - 1, self.k, self.k + 1) if value >= 1)

    @property
    def grid_taus(self) -> tuple[float, ...]:
        """The tau of the robustness grid: tau and tau -/+ 0.1, 0.2, inside (0, 1)."""
        return _band(self.tau, GRID_TAU_STEPS)

    @property
    def grid_rhos(self) -> tuple[float, ...]:
        """The rho of the robustness grid: rho and rho -/+ 0.05, 0.1, inside (0, 1)."""
        return _band(self.rho, GRID_RHO_STEPS)

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (JSON-able; ``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        """Settings from ``to_dict()``'s output; unknown names are a ``DiagError``."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DiagError(f"unknown analysis settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def with_overrides(cls, settings: Settings | None, overrides: dict[str, Any]) -> Settings:
        """``settings`` (default: the defaults) with some fields replaced, each checked."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DiagError(f"unknown analysis settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(settings or cls(), **overrides)


# Offsets of the robustness grid around tau and rho; the findings call a verdict fragile
# when it changes inside it.
GRID_TAU_STEPS = (-0.2, -0.1, 0.0, 0.1, 0.2)
GRID_RHO_STEPS = (-0.1, -0.05, 0.0, 0.05, 0.1)


def _band(value: float, steps: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(value + step, 6) for step in steps if 0.0 < round(value + step, 6) < 1.0 or step == 0.0)


def default_num_workers(device: torch.device) -> int:
    """Image-decoding processes for ``device``: none on the CPU, whose cores the model
    already uses; on a GPU up to 8, leaving one core to the main process."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _validate(name: str, value: object, metadata: Any) -> None:
    if metadata["minimum"] is not None:
        check_integer(name, value, metadata["minimum"])
    elif metadata["interval"] is not None:
        check_between(name, value, *metadata["interval"])
    elif metadata["choices"] is not None:
        check_choice(name, value, metadata["choices"])
