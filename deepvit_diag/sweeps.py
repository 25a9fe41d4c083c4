"""Sweeps: many checkpoints on the same images (``sweep``), or what a ``CollapseMonitor``
recorded during training, as one ``SweepResult``: the paper's Figure 1 and its table.

A sweep is a *depth sweep* (checkpoints of several depths: the x axis is the number of
blocks, one line per group: ViT or DeepViT by default, or groups the user names) or a *training
series* (checkpoints of one architecture from one run: the x axis is the epoch their
files record, the monitor's step, or the order given), and then the report says when
collapse appears. Each checkpoint keeps what the sweep's table and figures show:
``AnalysisResult.summary()`` and three per-block curves. Nothing is measured here: every
number comes from ``analyze``, one model at a time, so the memory of a sweep is that of
one analysis.

On disk a sweep is a folder with ``sweep.json`` (entries, settings, images, versions)
and ``arrays.npz`` (``<i>/<curve>`` for entry i); a monitor writes JSON Lines, one
``monitor_record`` per measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .choices import X_AXES, X_AXIS_CHOICES
from .errors import DiagError
from .formats import ARRAYS_FILE, jsonable, package_versions, read_folder, rebuild, write_folder, written_by_us
from .jsonfiles import check_depth
from .monitor_checks import check_monitor_record, check_same_settings
from .notebook import plot_sweep, short_repr, sweep_html
from .outputs import write_checked
from .readers import REATTENTION
from .results import AnalysisResult, summary_before_regimes
from .settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "deepvit-diag sweep"
MONITOR_FORMAT = "deepvit-diag monitor"
FORMAT_VERSION = 1
# The per-block curves kept of every checkpoint (the default map kind of the settings):
# similarity ratio (L,), similarity of each block with the previous one (L - 1,), and
# attention entropy averaged over heads (L,).
CURVES = ("ratio", "adjacent_similarity", "entropy")
# What every line of a monitor file holds.
MONITOR_KEYS = ("label", "group", "step", "summary", "curves", "settings", "images")


def default_group(result: AnalysisResult) -> str:
    """A checkpoint's group when the user names none, the paper's two kinds of model: DeepViT
    where some block applies Re-attention, else ViT (CaiT's talking heads mix heads too, but
    are no Re-attention)."""
    geometry = result.geometry
    return "DeepViT" if geometry.mixing_blocks and geometry.head_mixing == REATTENTION else "ViT"


@dataclass(eq=False)
class SweepEntry:
    """One checkpoint of a sweep, or one measurement of a monitor.

    Attributes:
        label: its name in tables and figures.
        group: its line in the figures (``default_group``, or a name the user gave).
        step: the training epoch (or monitor step) it was taken at; None when unknown.
        summary: ``AnalysisResult.summary()`` of its analysis.
        curves: the per-block curves of ``CURVES``.
        model: what its result says of the model (``AnalysisResult.model``).
    """

    label: str
    group: str
    step: int | None
    summary: dict[str, Any]
    curves: dict[str, np.ndarray] = field(repr=False)
    model: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, result: AnalysisResult, label: str, group: str | None = None, step: int | None = None) -> SweepEntry:
        curves = {
            "ratio": result.ratio(),
            "adjacent_similarity": result.adjacent_similarity(),
            "entropy": result.entropy().mean(axis=1),
        }
        return cls(label, group or default_group(result), step, result.summary(), curves, result.model)

    @property
    def num_blocks(self) -> int:
        return self.summary["num_blocks"]

    def to_document(self) -> dict[str, Any]:
        return jsonable(
            {"label": self.label, "group": self.group, "step": self.step, "model": self.model, "summary": self.summary}
        )

    @classmethod
    def from_document(cls, document: dict[str, Any], curves: dict[str, np.ndarray]) -> SweepEntry:
        missing = sorted(set(CURVES) - curves.keys())
        if missing:
            raise DiagError(f"sweep entry {document.get('label')!r} lacks the curves {', '.join(missing)}")
        try:
            summary = summary_before_regimes(document["summary"])
            return cls(document["label"], document["group"], document["step"], summary, curves, document["model"])
        except KeyError as err:
            raise DiagError(f"a sweep entry lacks {err}") from None


@dataclass(eq=False)
class SweepResult:
    """Checkpoints analysed on the same images with the same settings.

    Attributes:
        entries: one per checkpoint, in the order given.
        x_axis: what the x axis is (a key of ``X_AXES``; ``x`` gives each entry's value).
        settings: the (resolved) settings of every analysis.
        images: description, count and skipped files of the images.
    """

    entries: list[SweepEntry]
    x_axis: str
    settings: Settings
    images: dict[str, Any]

    def __post_init__(self) -> None:
        if self.x_axis not in X_AXES:
            raise DiagError(f"the x axis of a sweep must be one of {', '.join(X_AXES)}, got {self.x_axis!r}")
        self.images = jsonable(self.images)

    @property
    def x_title(self) -> str:
        """What the x axis shows, in words (e.g. "training step")."""
        return X_AXES[self.x_axis]

    @property
    def is_series(self) -> bool:
        """A training series (epochs, steps or order of one run) rather than a depth sweep."""
        return self.x_axis != "depth"

    def x(self, entry: SweepEntry) -> int:
        """The entry's position on the x axis: its depth, epoch or step, or its place (from 1)."""
        if self.x_axis == "depth":
            return entry.num_blocks
        if self.x_axis == "order":
            return next(index for index, candidate in enumerate(self.entries, start=1) if candidate is entry)
        return entry.step

    def groups(self) -> dict[str, list[SweepEntry]]:
        """The entries of each group (in the order the groups first appear), sorted along x."""
        grouped: dict[str, list[SweepEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.group, []).append(entry)
        return {group: sorted(entries, key=self.x) for group, entries in grouped.items()}

    def collapse_appears(self, group: str) -> SweepEntry | None:
        """The first entry of ``group`` along x whose attention has collapsed (a run of
        similar blocks reaching the last block, ``AnalysisResult.collapse_start``); None if none,
        or if an entry before it lacks its collapse start (``without_verdict``)."""
        for entry in self.groups()[group]:
            if entry.summary.get("collapse_start") is not None:
                return entry
            if "collapse_start" not in entry.summary:
                return None
        return None

    def without_verdict(self, group: str | None = None) -> list[SweepEntry]:
        """The entries (of ``group``, or all) whose summaries lack the collapse start: measured before
        deepvit-diag told near-uniform attention from collapse (``results.summary_before_regimes``)."""
        entries = self.entries if group is None else self.groups()[group]
        return [entry for entry in entries if "collapse_start" not in entry.summary]

    def summary(self) -> dict[str, Any]:
        """The sweep as JSON-able numbers: every entry's position and analysis summary, and
        where collapse first appears in each group (the label, or None)."""
        appears = {group: self.collapse_appears(group) for group in self.groups()}
        return {
            "x_axis": self.x_axis,
            # A group whose entries lack their verdict and show no collapse is left out: "none" would be a guess.
            "collapse_appears": {
                group: None if entry is None else entry.label
                for group, entry in appears.items()
                if entry is not None or not self.without_verdict(group)
            },
            "entries": [
                {"label": entry.label, "group": entry.group, "step": entry.step, "x": self.x(entry), **entry.summary}
                for entry in self.entries
            ],
        }

    def plot(self, name: str = "ratio", **options: Any) -> go.Figure:
        """A Plotly figure of the sweep: ``"similar_blocks"``, ``"collapse_start"``,
        ``"accuracy"`` (along the x axis), or ``"ratio"``, ``"adjacent"``, ``"entropy"``
        (every checkpoint's per-block curve; ``relative_depth=True`` puts blocks on 0..1).

        Example:
            >>> SweepResult.from_monitor("monitor.jsonl").plot("similar_blocks")  # doctest: +SKIP
        """
        return plot_sweep(self, name, options)

    def to_frame(self) -> pd.DataFrame:
        """Every checkpoint's per-block curves in long format: one row per checkpoint and
        block, with the columns ``label``, ``group``, ``step``, ``x`` (its place on the x
        axis), ``block_0based`` (blocks numbered from 0, as in the arrays), ``ratio``,
        ``adjacent_similarity`` (with the next block; NaN for the last) and ``entropy``
        (mean over heads), of the settings' map kind.

        Example:
            >>> sweep.to_frame().groupby("label")["ratio"].max()  # doctest: +SKIP
        """
        import pandas as pd

        rows = []
        for entry in self.entries:
            adjacent = entry.curves["adjacent_similarity"]
            for block in range(len(entry.curves["ratio"])):
                rows.append(
                    {
                        "label": entry.label,
                        "group": entry.group,
                        "step": entry.step,
                        "x": self.x(entry),
                        "block_0based": block,
                        "ratio": float(entry.curves["ratio"][block]),
                        "adjacent_similarity": float(adjacent[block]) if block < len(adjacent) else math.nan,
                        "entropy": float(entry.curves["entropy"][block]),
                    }
                )
        return pd.DataFrame(rows, columns=["label", "group", "step", "x", "block_0based", *CURVES])

    def __repr__(self) -> str:
        return short_repr("SweepResult", {"checkpoints": len(self.entries), "x_axis": self.x_axis})

    def _repr_html_(self) -> str:
        return sweep_html(self)

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """``folder/sweep.json`` and ``folder/arrays.npz``, by the rules of
        ``AnalysisResult.save`` (``force`` included); returns the folder."""
        return write_checked(folder, is_sweep_file, self.write_files, force=force)

    def write_files(self, folder: str | Path) -> Path:
        """``save``'s files written into ``folder`` without its checks (``AnalysisResult.write_files``)."""
        document = {
            "format": SWEEP_FORMAT,
            "version": FORMAT_VERSION,
            "x_axis": self.x_axis,
            "settings": self.settings.to_dict(),
            "images": self.images,
            "entries": [entry.to_document() for entry in self.entries],
            "summary": self.summary(),
            "versions": package_versions(),
        }
        arrays = {
            f"{index}/{name}": curve for index, entry in enumerate(self.entries) for name, curve in entry.curves.items()
        }
        return write_folder(folder, document, arrays, SWEEP_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> SweepResult:
        """The sweep ``save`` wrote into ``folder`` (``DiagError`` for anything else)."""
        document, arrays = read_folder(folder, SWEEP_FORMAT, SWEEP_FILE)

        def build() -> SweepResult:
            entries = [
                SweepEntry.from_document(
                    entry, {name: arrays[f"{index}/{name}"] for name in CURVES if f"{index}/{name}" in arrays}
                )
                for index, entry in enumerate(document["entries"])
            ]
            return cls(entries, document["x_axis"], Settings.from_dict(document["settings"]), document["images"])

        return rebuild(folder, build)

    @classmethod
    def from_monitor(cls, path: str | Path) -> SweepResult:
        """The measurements a ``CollapseMonitor`` appended to ``path``, as a series over its steps."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DiagError(f"cannot read the monitor file {path}: {getattr(err, 'strerror', None) or err}") from None
        records = [_monitor_line(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
        if not records:
            raise DiagError(f"{path} holds no monitor measurement")
        check_same_settings(records, path)
        entries = [
            SweepEntry.from_document(
                record,
                {
                    name: np.array([math.nan if v is None else v for v in values], dtype=np.float32)
                    for name, values in record["curves"].items()
                },
            )
            for record in records
        ]
        first = records[0]
        return cls(entries, "step", Settings.from_dict(first["settings"]), first["images"])


def is_sweep_file(path: Path) -> bool:
    """A ``sweep.json`` or ``arrays.npz`` as ``SweepResult.save`` writes them (what ``--out`` may replace)."""
    return written_by_us(path, {SWEEP_FILE: (SWEEP_FORMAT,)}, (ARRAYS_FILE,))


def monitor_record(entry: SweepEntry, settings: Settings, images: dict[str, Any]) -> dict[str, Any]:
    """One line of a monitor's JSON Lines file (``SweepResult.from_monitor`` reads it back):
    the entry with its curves as lists (undefined values as null), the settings and images."""
    curves = {
        name: [value if math.isfinite(value) else None for value in curve.tolist()]
        for name, curve in entry.curves.items()
    }
    return {
        "format": MONITOR_FORMAT,
        "version": FORMAT_VERSION,
        **entry.to_document(),
        "curves": curves,
        "settings": settings.to_dict(),
        "images": jsonable(images),
    }


def _monitor_line(path: Path, number: int, line: str) -> dict[str, Any]:
    check_depth(line, f"{path}, line {number}")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DiagError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict) or record.get("format") != MONITOR_FORMAT:
        raise DiagError(f"{path}, line {number}: not a deepvit-diag monitor measurement")
    missing = [key for key in MONITOR_KEYS if key not in record]
    if missing:
        raise DiagError(f"{path}, line {number}: the measurement lacks {', '.join(missing)}")
    check_monitor_record(record, f"{path}, line {number}")
    return record


def choose_x_axis(entries: Sequence[SweepEntry], requested: str = "auto") -> str:
    """The x axis of checkpoints: ``requested``, or for "auto" a training series when they
    are all of one group and depth (over their epochs when every one records one, else in
    the order given), else a depth sweep."""
    if requested not in X_AXIS_CHOICES:
        raise DiagError(f"the x axis must be one of {', '.join(X_AXIS_CHOICES)}, got {requested!r}")
    without_epoch = [entry.label for entry in entries if entry.step is None]
    if requested == "epoch" and without_epoch:
        raise DiagError(f"an epoch axis needs every checkpoint to record its epoch; {', '.join(without_epoch)} do not")
    if requested != "auto":
        return requested
    if len({(entry.group, entry.num_blocks) for entry in entries}) > 1:
        return "depth"
    return "order" if without_epoch else "epoch"
