"""Running a sweep: ``sweep()`` loads each checkpoint in turn, analyses it on the same
images and collects the ``SweepEntry`` of each into a ``SweepResult`` (``sweeps``, the
format). It never prints: each checkpoint's start goes to ``notice`` or to logging."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from .analysis import analyze
from .checkpoints import load_model
from .errors import DiagError, failure_line
from .images import ImageSource, default_image_set, is_path_spec, open_images
from .labels import ClassMap
from .progress import ProgressOption
from .settings import Settings
from .sweeps import X_AXIS_CHOICES, SweepEntry, SweepResult, choose_x_axis

logger = logging.getLogger(__name__)


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
    notice: Callable[[str], None] | None = None,
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
        notice: called with a line as each checkpoint starts ("checkpoint 2 of 3: vit24");
            default: the ``deepvit_diag.sweep_runner`` logger at INFO level.
    """
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
        (notice or logger.info)(f"checkpoint {index + 1} of {len(checkpoints)}: {label}")
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
            raise PartialSweep(
                SweepResult(entries, choose_x_axis(entries, x_axis), settings, read), label, err
            ) from err
        step = (getattr(model, "provenance", None) or {}).get("epoch")
        entries.append(SweepEntry.of(result, label, groups[index] if groups else None, step))
        read = read or result.images
        del model, result  # the next checkpoint loads into the memory this one leaves
    return SweepResult(entries, choose_x_axis(entries, x_axis), settings, read)


class PartialSweep(DiagError):
    """A sweep that failed at a checkpoint after others finished: ``sweep`` holds those (the CLI saves them)."""

    def __init__(self, finished: SweepResult, label: str, error: BaseException):
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
