"""Sweeps: many checkpoints on the same images (``sweep``), or what a ``CollapseMonitor``
recorded during training, as one ``SweepResult``: the paper's Figure 1 and its table.

A sweep is a *depth sweep* (checkpoints of several depths: the x axis is the number of
blocks, one line per family, ViT or DeepViT, or per group the user names) or a *training
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
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text
from torch import nn

from .errors import DiagError
from .images import ImageSource, default_image_set, is_path_spec, open_images
from .jsonfiles import check_depth
from .labels import ClassMap
from .monitor_checks import check_monitor_record, check_same_settings
from .progress import ProgressOption
from .readers import REATTENTION
from .results import AnalysisResult, _from_saved, _read_folder, _write_folder, jsonable, package_versions
from .settings import Settings

SWEEP_FORMAT = "deepvit-diag sweep"
MONITOR_FORMAT = "deepvit-diag monitor"
FORMAT_VERSION = 1
# The per-block curves kept of every checkpoint (the default map kind of the settings):
# similarity ratio (L,), similarity of each block with the previous one (L - 1,), and
# attention entropy averaged over heads (L,).
CURVES = ("ratio", "adjacent_similarity", "entropy")
# What the x axis of a sweep is, and how the figures and tables name it.
X_AXES = {
    "depth": "depth (blocks)",
    "epoch": "epoch",
    "step": "training step",
    "order": "checkpoint (in the order given)",
}
X_AXIS_CHOICES = ("auto", "depth", "epoch", "order")
# What every line of a monitor file holds.
MONITOR_KEYS = ("label", "group", "step", "summary", "curves", "settings", "images")


def family(result: AnalysisResult) -> str:
    """The paper's two families: DeepViT where some block applies Re-attention, else ViT (CaiT's talking
    heads mix heads too, but are no Re-attention)."""
    geometry = result.geometry
    return "DeepViT" if geometry.reattention_blocks and geometry.head_mixing == REATTENTION else "ViT"


@dataclass(eq=False)
class SweepEntry:
    """One checkpoint of a sweep, or one measurement of a monitor.

    Attributes:
        label: its name in tables and figures.
        group: its line in the figures (its family, or a name the user gave).
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
        return cls(label, group or family(result), step, result.summary(), curves, result.model)

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
            return cls(
                document["label"], document["group"], document["step"], document["summary"], curves, document["model"]
            )
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
        similar blocks reaching the last block, ``AnalysisResult.collapse_start``); None if none."""
        return next((entry for entry in self.groups()[group] if entry.summary["collapse_start"] is not None), None)

    def summary(self) -> dict[str, Any]:
        """The sweep as JSON-able numbers: every entry's position and analysis summary, and
        where collapse first appears in each group (the label, or None)."""
        return {
            "x_axis": self.x_axis,
            "collapse_appears": {
                group: None if (entry := self.collapse_appears(group)) is None else entry.label
                for group in self.groups()
            },
            "entries": [
                {"label": entry.label, "group": entry.group, "step": entry.step, "x": self.x(entry), **entry.summary}
                for entry in self.entries
            ],
        }

    def save(self, folder: str | Path) -> Path:
        """``folder/sweep.json`` and ``folder/arrays.npz``; returns the folder."""
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
        return _write_folder(folder, document, arrays, document_name="sweep.json")

    @classmethod
    def load(cls, folder: str | Path) -> SweepResult:
        document, arrays = _read_folder(folder, SWEEP_FORMAT, document_name="sweep.json")

        def build() -> SweepResult:
            entries = [
                SweepEntry.from_document(
                    entry, {name: arrays[f"{index}/{name}"] for name in CURVES if f"{index}/{name}" in arrays}
                )
                for index, entry in enumerate(document["entries"])
            ]
            return cls(entries, document["x_axis"], Settings.from_dict(document["settings"]), document["images"])

        return _from_saved(folder, build)

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


def checkpoint_labels(checkpoints: Sequence[str | os.PathLike | nn.Module]) -> list[str]:
    """Names for tables and figures: a file's name (its whole path where two names are the
    same), a store, preset or timm name as given, ``model <i>`` for a model object."""
    names = [
        f"model {index}" if isinstance(spec, nn.Module) else Path(spec).name if Path(spec).exists() else str(spec)
        for index, spec in enumerate(checkpoints, start=1)
    ]
    repeated = {name for name in names if names.count(name) > 1}
    return [str(spec) if name in repeated else name for name, spec in zip(names, checkpoints)]


def sweep(
    checkpoints: Sequence[str | os.PathLike | nn.Module],
    images: ImageSource | None = None,
    settings: Settings | None = None,
    *,
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    x_axis: str = "auto",
    arch: str | None = None,
    load_options: dict[str, Any] | None = None,
    class_map: ClassMap | str | Path | None = None,
    progress: ProgressOption = True,
    **overrides: Any,
) -> SweepResult:
    """``analyze`` of every checkpoint on the same images, one model at a time.

    Args:
        checkpoints: what ``load_model`` reads (files, store, preset or timm names), loaded
            one at a time and released before the next; or model objects.
        images: as in ``analyze``, read again for every checkpoint (an iterable of batches
            must be re-iterable, e.g. a DataLoader); a folder, file, glob or bundled set is
            opened once. Default: the bundled set the first checkpoint's model card names,
            else the photos.
        settings: the analysis settings (with keyword ``overrides`` of its fields).
        labels: a name per checkpoint (default: ``checkpoint_labels``).
        groups: the figure line of each checkpoint (default: ViT or DeepViT).
        x_axis: "auto", "depth", "epoch" or "order" (``choose_x_axis``).
        arch: the architecture of checkpoints whose weights cannot say (as in ``load_model``).
        load_options: ``load_model``'s other keyword arguments for every checkpoint (``num_heads``,
            ``img_size``, ``resample_pos_embed``, ...).
        class_map: which class index each image folder is (``open_images``).
        progress: as in ``analyze``; a callable hears the images of all checkpoints as one count.
    """
    from .analysis import analyze
    from .checkpoints import load_model

    settings = Settings.with_overrides(settings, overrides).resolved()
    labels = list(labels) if labels is not None else checkpoint_labels(checkpoints)
    for name, given in (("labels", labels), ("groups", groups)):
        if given is not None and len(given) != len(checkpoints):
            raise DiagError(f"a sweep of {len(checkpoints)} checkpoints needs as many {name}, got {len(given)}")
    if not checkpoints:
        raise DiagError("a sweep needs at least one checkpoint")
    if isinstance(images, Iterator):
        raise DiagError("a sweep reads the images once per checkpoint: pass a DataLoader or a list, not an iterator")
    opens_images = images is None or is_path_spec(images)
    if class_map is not None and not opens_images:
        raise DiagError("a class map applies to the image folders, files and bundled sets a sweep opens")
    if x_axis not in X_AXIS_CHOICES:
        raise DiagError(f"the x axis must be one of {', '.join(X_AXIS_CHOICES)}, got {x_axis!r}")

    def load(checkpoint: str | os.PathLike | nn.Module) -> nn.Module:
        if isinstance(checkpoint, nn.Module):
            return checkpoint
        return load_model(checkpoint, arch=arch, **(load_options or {}))

    # Every checkpoint is read once before the first analysis (and released): a typo or a broken file
    # among them is reported before hours of work, not after.
    for checkpoint in checkpoints:
        load(checkpoint)  # the model is dropped at once
    entries: list[SweepEntry] = []
    read: dict[str, Any] = {}
    for index, (checkpoint, label) in enumerate(zip(checkpoints, labels)):
        if progress is True:
            Console(stderr=True).print(Text(f"checkpoint {index + 1} of {len(checkpoints)}: {label}"))
        try:
            model = load(checkpoint)
            if opens_images and index == 0:  # opened once, after the first model has named its default set
                images = open_images(
                    images or default_image_set([model]), limit=settings.num_images, class_map=class_map
                )
            bar = partial(_overall, progress, index, len(checkpoints)) if callable(progress) else progress
            result = analyze(model, images, settings, progress=bar)
        except Exception as err:  # the checkpoints finished so far are kept
            if not entries:
                raise
            partial_sweep = SweepResult(entries, choose_x_axis(entries, x_axis), settings, read)
            raise PartialSweep(partial_sweep, label, err) from err
        step = (getattr(model, "provenance", None) or {}).get("epoch")
        entries.append(SweepEntry.of(result, label, groups[index] if groups else None, step))
        read = read or result.images
        del model, result  # the next checkpoint loads into the memory this one leaves
    return SweepResult(entries, choose_x_axis(entries, x_axis), settings, read)


class PartialSweep(DiagError):
    """A sweep that failed at a checkpoint after others finished: ``sweep`` holds those (the CLI saves them)."""

    def __init__(self, finished: SweepResult, label: str, error: BaseException):
        from .errors import failure_line

        super().__init__(
            f"checkpoint {label} failed ({failure_line(error)}); the {len(finished.entries)} checkpoint(s) "
            "before it are kept"
        )
        self.sweep = finished


def _overall(progress: Callable[[int, int | None], None], index: int, count: int, done: int, total: int | None) -> None:
    """Progress of checkpoint ``index`` of ``count`` as a share of the whole sweep."""
    if total:
        progress(index * total + done, count * total)
    else:
        progress(done, None)
