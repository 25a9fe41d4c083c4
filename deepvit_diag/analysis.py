"""Streaming attention-collapse analysis of one model (``analyze``) or two (``compare``).

Images flow through the model batch by batch; each batch's maps are reduced on the
device to per-batch metric sums (every ``measure`` of the catalogue,
``deepvit_diag.catalogue.METRICS``) and dropped before the next batch, so peak memory is one
batch of maps whatever the number of images. Every measured metric is a mean with equal
weight per image, so ``sum_b metric(batch) * B / N`` is the exact dataset mean and the
result does not depend on the batch size; CKA streams through ``MinibatchCKA``, whose
chunks do not depend on the batches either.

Nothing leaves the device until the end and the host never waits for it inside the loop:
the metrics' input checks (NaN/Inf, negative softmax weights) run deferred
(``deferred_value_checks``), as on-device flags read once after the last batch, so bad
input still ends in a DiagError naming the first bad batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import catalogue
from .capture import AttentionCapture, AttentionRecorder, eval_mode
from .catalogue import Batch
from .errors import DiagError
from .images import ImageSource, ImageStream
from .introspection import Geometry, describe_model, model_device
from .metrics import MIN_UNBIASED_EXAMPLES, DeferredChecks, MinibatchCKA, deferred_value_checks, token_distances
from .preprocessing import model_input_config, to_uint8_images
from .progress import ProgressOption, reporting
from .results import AnalysisResult, ComparisonResult
from .settings import DTYPES, MAP_KINDS, Settings


@dataclass
class BatchMeasurement:
    """One batch reduced: metric sums (mean * batch size) plus what CKA and examples need."""

    size: int
    sums: dict[str, torch.Tensor]
    features: torch.Tensor  # (L, B, T * D) block outputs flattened per image
    example_images: torch.Tensor | None  # (E_b, H, W, 3) uint8, on the host; None once enough are kept
    example_cls: dict[str, torch.Tensor] | None  # map kind -> (E_b, L, H, gh, gw)


class ModelStatistics:
    """Device-side running sums of every measured metric of one model, plus its examples."""

    def __init__(self, model: nn.Module, settings: Settings):
        self.model = model
        self.settings = settings
        config = model_input_config(model)
        self.geometry = Geometry.of(model, config["input_size"][1:])
        self.mean, self.std = tuple(config["mean"]), tuple(config["std"])
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.example_images: list[torch.Tensor] = []
        self.example_cls: dict[str, list[torch.Tensor]] = {kind: [] for kind in MAP_KINDS}
        self._distances: dict[torch.device, torch.Tensor] = {}
        # Measures that overwrite the maps run last (False sorts before True).
        self._measured = sorted((m for m in catalogue.METRICS if m.measure is not None), key=lambda m: m.consumes_maps)

    @property
    def examples_needed(self) -> int:
        return self.settings.num_examples - sum(len(images) for images in self.example_images)

    def token_distances(self, device: torch.device) -> torch.Tensor:
        """The geometry's token distances on ``device``, made once per device."""
        if device not in self._distances:
            geometry = self.geometry
            self._distances[device] = token_distances(
                geometry.grid_size, geometry.patch_size, geometry.num_prefix_tokens, device
            )
        return self._distances[device]

    def measure(self, capture: AttentionCapture, x: torch.Tensor) -> BatchMeasurement:
        """Reduce one batch's capture to sums (nothing is added until ``add``).

        The capture is used up: measures that consume the maps run last (see
        ``catalogue.Metric.consumes_maps``), after the examples have been read.
        """
        self._follow_input_size(tuple(x.shape[-2:]))
        size = capture.pre.shape[1]
        num_examples = min(self.examples_needed, size)
        # Once enough examples are kept, later batches add none (and launch nothing for them).
        keep_examples = num_examples > 0 or not self.example_images
        example_images = example_cls = None
        if keep_examples:
            example_images = to_uint8_images(x[:num_examples], self.mean, self.std)
            example_cls = {
                kind: _cls_attention(getattr(capture, kind)[:, :num_examples], self.geometry) for kind in MAP_KINDS
            }
        batch = Batch(capture, self.geometry, self.settings, self.token_distances(capture.pre.device))
        sums = {name: value * size for metric in self._measured for name, value in metric.measure(batch).items()}
        return BatchMeasurement(size, sums, capture.hidden.flatten(2), example_images, example_cls)

    def _follow_input_size(self, image_size: tuple[int, int]) -> None:
        """A model that takes any image size (``dynamic_img_size``) has the patch grid of the images it is
        given, which may not be its data config's size; all images of one analysis share one size."""
        if self.geometry.image_size == image_size:
            return
        if self.count:
            raise DiagError(
                f"images of {image_size[0]} x {image_size[1]} px after images of {self.geometry.image_size[0]} x "
                f"{self.geometry.image_size[1]} px: one analysis needs one image size"
            )
        self.geometry = Geometry.of(self.model, image_size)
        self._distances.clear()

    def add(self, measurement: BatchMeasurement) -> None:
        for name, value in measurement.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += measurement.size
        if measurement.example_images is not None:
            self.example_images.append(measurement.example_images)
            for kind, weights in measurement.example_cls.items():
                self.example_cls[kind].append(weights)

    def arrays(self) -> dict[str, np.ndarray]:
        """Dataset means, examples and the arrays read from the weights, as numpy (the only
        device-to-host copy)."""
        arrays = {name: (total / self.count).cpu().numpy() for name, total in self.sums.items()}
        arrays["example_images"] = torch.cat(self.example_images).numpy()
        for kind, weights in self.example_cls.items():
            arrays[f"example_cls_{kind}"] = torch.cat(weights).cpu().numpy()
        for metric in catalogue.METRICS:
            if metric.reads_model is not None:
                arrays.update(metric.reads_model(self.model, self.geometry))
        return arrays

    def model_info(self) -> dict[str, Any]:
        return {
            "description": describe_model(self.model),
            "provenance": getattr(self.model, "provenance", None) or {},
            "arch": getattr(self.model, "arch", None),
            "class": f"{type(self.model).__module__}.{type(self.model).__name__}",
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }


def _cls_attention(maps: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(L, E, H, T, T) -> float32 (E, L, H, gh, gw): the CLS query's weight on every patch;
    a model without prefix tokens gets the mean weight of all queries."""
    prefix = geometry.num_prefix_tokens
    weights = maps[..., 0, prefix:] if prefix else maps[..., prefix:].float().mean(dim=-2)
    num_blocks, num_examples, num_heads, _ = weights.shape
    # A copy, so the example does not keep the whole batch's maps alive.
    weights = weights.to(torch.float32, copy=True).transpose(0, 1)
    return weights.reshape(num_examples, num_blocks, num_heads, *geometry.grid_size)


# ----------------------------------------------------------------------------- driver


@contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` moved to ``device`` for the analysis and back afterwards (no move, not
    even a walk over every parameter, when it is there already)."""
    original = model_device(model)
    if all(tensor.device == device for tensor in (*model.parameters(), *model.buffers())):
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(original)


class StreamingAnalysis:
    """Runs the models over the image stream and owns every accumulator."""

    def __init__(self, models: Sequence[nn.Module], settings: Settings):
        self.models = models
        self.settings = settings.resolved()
        self.device = self.settings.torch_device
        self.statistics = [ModelStatistics(model, self.settings) for model in models]
        self.cka = MinibatchCKA(chunk_size=self.settings.cka_chunk)
        self.batch_size = self.settings.batch_size
        self.store_dtype = DTYPES[self.settings.dtype] if self.settings.dtype != "float32" else None
        self.checks: DeferredChecks | None = None  # set by run()

    def run(self, stream: ImageStream, progress: ProgressOption) -> None:
        with ExitStack() as stack:
            recorders = []
            for model in self.models:
                stack.enter_context(_on_device(model, self.device))
                stack.enter_context(eval_mode(model))
                recorder = AttentionRecorder(model, hidden=True, store_dtype=self.store_dtype, reuse_buffers=True)
                recorders.append(stack.enter_context(recorder))
            stack.enter_context(torch.inference_mode())
            update = stack.enter_context(reporting(progress, "analysing images", stream.total))
            # Entered last, so it exits first: bad input raises before the results are read.
            self.checks = stack.enter_context(
                deferred_value_checks(lambda first: f"first in the batch starting at image {first}, 0-based")
            )
            for batch in stream:
                self._process(batch, recorders, lambda: update(self.statistics[0].count))

    def _process(
        self, batch: tuple[torch.Tensor, ...], recorders: list[AttentionRecorder], advance: Callable[[], None]
    ) -> None:
        """Measure a batch in parts of the current batch size, halving it on CUDA OOM."""
        start, total = 0, len(batch[0])
        while start < total:
            size = min(self.batch_size, total - start)
            parts = tuple(x[start : start + size] for x in batch)
            self.checks.at(self.statistics[0].count)
            try:
                measurements = self._measure(parts, recorders)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise DiagError(
                        "out of device memory with a single image per batch; try --dtype bfloat16 or the CPU"
                    ) from None
                self.batch_size = size // 2
            else:
                self._commit(measurements)
                start += size
                advance()
                continue
            # Outside the except block, so the failed attempt's tensors are already released.
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _measure(self, parts: tuple[torch.Tensor, ...], recorders: list[AttentionRecorder]) -> list[BatchMeasurement]:
        dtype = self.settings.dtype
        autocast = torch.autocast(self.device.type, dtype=DTYPES[dtype]) if dtype != "float32" else nullcontext()
        measurements = []
        for model, recorder, statistics, x in zip(self.models, recorders, self.statistics, parts):
            with autocast:
                model(x.to(self.device, non_blocking=True))
            # One model's maps at a time: they are reduced before the next model runs.
            measurements.append(statistics.measure(recorder.take(), x))
        return measurements

    def _commit(self, measurements: list[BatchMeasurement]) -> None:
        self.cka.update(*(m.features for m in measurements))
        for statistics, measurement in zip(self.statistics, measurements):
            statistics.add(measurement)

    def results(self, stream: ImageStream) -> tuple[list[AnalysisResult], np.ndarray | None]:
        """One result per model, and the cross-model CKA (L_A, L_B) when there are two."""
        count = self.statistics[0].count
        cka = self._cka_matrices(count)
        computation = {"final_batch_size": self.batch_size}
        results = []
        for statistics, key in zip(self.statistics, ("a", "b")):
            results.append(
                AnalysisResult(
                    model=statistics.model_info(),
                    geometry=statistics.geometry,
                    settings=self.settings,
                    images=stream.provenance(),
                    num_images=count,
                    arrays={**statistics.arrays(), "cka": cka[key]},
                    computation=computation,
                )
            )
        return results, cka.get("ab")

    def _cka_matrices(self, count: int) -> dict[str, np.ndarray]:
        """{"a"} or {"a", "b", "ab"}; NaN when there are too few images for the unbiased HSIC."""
        if count < MIN_UNBIASED_EXAMPLES:
            sizes = [statistics.geometry.num_blocks for statistics in self.statistics]
            shapes = {"a": (sizes[0], sizes[0])}
            if len(sizes) == 2:
                shapes.update(b=(sizes[1], sizes[1]), ab=(sizes[0], sizes[1]))
            return {key: np.full(shape, np.nan, dtype=np.float32) for key, shape in shapes.items()}
        return {key: matrix.cpu().numpy() for key, matrix in self.cka.result().items()}


def _run(
    models: Sequence[nn.Module], images: ImageSource, settings: Settings, progress: ProgressOption
) -> tuple[list[AnalysisResult], np.ndarray | None]:
    analysis = StreamingAnalysis(models, settings)
    stream = ImageStream(images, models, analysis.settings)
    analysis.run(stream, progress)
    return analysis.results(stream)


def analyze(
    model: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    progress: ProgressOption = True,
    **overrides: Any,
) -> AnalysisResult:
    """Every attention-collapse metric of ``model`` over ``images``, exact over all images.

    Args:
        model: a ViT/DeepViT (deepvit-diag or timm ``Attention`` blocks); used in eval
            mode on the settings' device and left exactly as it was (mode, device,
            modules, flags).
        images: a preprocessed (N, C, H, W) tensor; a list of PIL images; a folder, file,
            glob or bundled-set name (``deepvit_diag.images.open_images``); or an iterable
            of (B, C, H, W) tensors (or (images, labels) pairs). PIL and disk images are
            preprocessed with the model's own timm data config.
        settings: a ``Settings`` (default: the defaults): k, tau, rho, axis, maps,
            batch_size, num_images, device, dtype, cka_chunk, num_examples, num_workers.
        progress: True for a progress bar on stderr, False for none, or a callable
            ``progress(done, total)`` called after every batch (``deepvit_diag.progress``).
        overrides: fields of ``settings`` to replace, e.g. ``analyze(model, images, k=1)``.
    """
    settings = Settings.with_overrides(settings, overrides)
    (result,), _ = _run([model], images, settings, progress)
    return result


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    progress: ProgressOption = True,
    **overrides: Any,
) -> ComparisonResult:
    """``analyze`` of two models on the same images in one pass, plus CKA across their
    block outputs (L_A, L_B). Each model gets PIL/disk images through its own data
    config; a tensor or tensor batches go to both unchanged. Arguments as in ``analyze``."""
    settings = Settings.with_overrides(settings, overrides)
    (result_a, result_b), cka_ab = _run([model_a, model_b], images, settings, progress)
    return ComparisonResult(result_a, result_b, cka_ab)
