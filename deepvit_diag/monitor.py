"""``CollapseMonitor``: the headline collapse numbers of a model in training, measured on a
fixed probe set from inside the training loop and appended to a JSON Lines file, which
``deepvit-diag sweep --monitor FILE`` and the app's Sweep view draw as a training series.

A measurement is an ``analyze`` of the probe images that leaves the training exactly as
it was: no gradient is computed or touched (inference mode), every module's train/eval
mode is restored, the model stays on its device, and the random number generators
(torch's CPU and CUDA generators, numpy's and Python's global ones) are put back as they
were, so a run with the monitor is bit-identical to the same run without it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .analysis import analyze
from .errors import DiagError
from .images import ImageSource, is_path_spec, open_images
from .introspection import model_device
from .settings import Settings
from .sweeps import SweepEntry, SweepResult, monitor_record


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Every global random number generator as it was when the block began: torch's CPU
    generator and those of the CUDA devices in use, numpy's and Python's."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class CollapseMonitor:
    """Measures a model's attention collapse every ``every`` steps of a training loop.

    ::

        monitor = CollapseMonitor(model, "digits-test", every=100, path="collapse.jsonl", num_images=64)
        for step, (x, y) in enumerate(loader):
            ...  # forward, backward, optimizer step
            monitor.step(step)  # measures on steps 0, 100, 200, ...

    Args:
        model: the model being trained (used as it is, on its device, and left as it was).
        probe_images: the fixed probe set, as in ``analyze``: a folder, bundled set or
            files (opened once), a tensor or an (images, labels) pair, ...; labelled images
            add the accuracy to every measurement.
        every: ``step(n)`` measures when n is a multiple of ``every``.
        path: the JSON Lines file every measurement is appended to (one line each); None
            keeps them in ``entries`` only.
        settings: the analysis settings; by default without image-decoding workers and
            without example images. Keyword ``overrides`` replace fields (e.g.
            ``num_images=64``). Unless they name a device, each measurement runs on the
            device the model is on at that moment.
        label: the name of the run in figures (default "training run").
        group: its line in the figures (default: ViT or DeepViT).
    """

    def __init__(
        self,
        model: nn.Module,
        probe_images: ImageSource,
        every: int = 1,
        path: str | Path | None = None,
        settings: Settings | None = None,
        *,
        label: str = "training run",
        group: str | None = None,
        **overrides: Any,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DiagError(f"every must be a whole number >= 1, got {every!r}")
        self.model = model
        self.every = every
        self.path = Path(path) if path is not None else None
        self.settings = Settings.with_overrides(settings or Settings(num_workers=0, num_examples=0), overrides)
        if is_path_spec(probe_images):
            probe_images = open_images(probe_images, limit=self.settings.num_images)
        self.probe_images = probe_images
        self.label, self.group = label, group
        self.entries: list[SweepEntry] = []
        # What the last measurement read, and the settings it resolved (device, workers).
        self._images: dict[str, Any] = {}
        self._settings = self.settings

    def step(self, step: int) -> SweepEntry | None:
        """Measure if ``step`` (a training step or epoch) is a multiple of ``every``; the
        measurement, or None."""
        return self.measure(step) if step % self.every == 0 else None

    def measure(self, step: int) -> SweepEntry:
        """Measure now, record the measurement as taken at ``step`` and append it to ``path``."""
        settings = self.settings
        if settings.device == "auto":  # where the model is now: the analysis must not move it
            settings = replace(settings, device=str(model_device(self.model)))
        with preserved_random_state():
            result = analyze(self.model, self.probe_images, settings, progress=False)
        entry = replace(
            SweepEntry.of(result, self.label, self.group, step), model={"description": result.model["description"]}
        )
        self._images, self._settings = result.images, result.settings
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(monitor_record(entry, result.settings, result.images), allow_nan=False) + "\n")
        self.entries.append(entry)
        return entry

    def result(self) -> SweepResult:
        """The measurements so far as a series over their steps (what ``path`` holds, if given)."""
        if not self.entries:
            raise DiagError("the monitor has measured nothing yet")
        return SweepResult(list(self.entries), "step", self._settings, self._images)
