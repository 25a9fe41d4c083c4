"""Streaming attention-collapse analysis of one model (``analyze``) or two (``compare``).

Images flow through the model batch by batch; of each batch only every block's queries and
keys are kept (``AttentionRecorder(maps=False)``), and its maps are recomputed from them a
chunk of query rows at a time and reduced on the device to per-batch metric sums
(every ``measure`` of the catalogue, ``deepvit_diag.catalogue.METRICS``;
``metrics.score_statistics``), so peak memory is one batch of queries, keys and block
outputs plus one chunk of maps (``budget``), linear in the token count and the same whatever
the number of images. The batch size and the chunk are chosen up front to fit the memory
budget (``Settings.memory_budget``); on CUDA an out-of-memory error still halves the batch.
Every measured metric is a mean with equal weight per image, so ``sum_b metric(batch) * B / N``
is the exact dataset mean and the result does not depend on the batch size; CKA streams through ``MinibatchCKA``, whose
chunks do not depend on the batches either.

When the images carry labels, the logits of the same forward passes give the top-1/top-5
accuracy: correct counts summed on the device (``topk_correct``), exact at any batch size.

Nothing leaves the device until the end and the host never waits for it inside the loop:
the metrics' input checks (NaN/Inf, negative softmax weights, labels out of range) run
deferred (``deferred_value_checks``), as on-device flags read once after the last batch,
so bad input still ends in a DiagError naming the first bad batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import catalogue
from .budget import MIB, ModelShape, available_bytes, plan
from .capture import AttentionCapture, AttentionRecorder, eval_mode
from .catalogue import Batch
from .choices import DTYPE_NAMES
from .device import keep_host_allocations
from .distributed import Shard, gather, is_reporting_process, local_device, process_group_shard, weights_sha256
from .errors import DiagError
from .example_images import example_arrays
from .images import ImageSource, ImageStream, StreamBatch
from .introspection import Geometry, describe_model, model_device, usable_model
from .labels import model_class_names
from .metrics import (
    MIN_UNBIASED_EXAMPLES,
    AttentionScores,
    DeferredChecks,
    MinibatchCKA,
    deferred_value_checks,
    reported_ks,
    token_distances,
    topk_correct,
)
from .metrics.scores import query_weights
from .preprocessing import model_input_config, to_uint8_images
from .progress import ProgressOption, reporting
from .results import AnalysisResult, ComparisonResult
from .settings import MAP_KINDS, Settings
from .shards import ShardRecord
from .tally import ModelParts, ModelTally, Tally, build_results, combined_computation

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class BatchMeasurement:
    """One batch reduced: metric sums (mean * batch size) plus what CKA, examples and accuracy need."""

    size: int
    sums: dict[str, torch.Tensor]
    features: torch.Tensor  # (L, B, T * D) block outputs flattened per image
    example_images: torch.Tensor | None  # (E_b, H, W, 3) uint8, on the host; None once enough are kept
    example_cls: dict[str, torch.Tensor] | None  # map kind -> (E_b, L, H, gh, gw)
    example_facts: ExampleFacts | None
    correct: torch.Tensor | None  # (K,) int64 top-k counts on the device; None without labels


@dataclass
class ExampleFacts:
    """What is known of a batch's example images (``deepvit_diag.example_images``): names and labels
    as the source gives them, and the top-1 class and whether it is the label, on the device
    (None without class logits, or without labels)."""

    names: tuple[str, ...]
    labels: tuple[str | None, ...]
    top1: torch.Tensor | None  # (E_b,) int64
    correct: torch.Tensor | None  # (E_b,) bool


class ModelStatistics:
    """Device-side running sums of every measured metric of one model, plus its examples and
    its top-k correct counts."""

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
        self.example_facts: list[ExampleFacts] = []
        self._distances: dict[torch.device, torch.Tensor] = {}
        self.correct: torch.Tensor | None = None
        self.ks: tuple[int, ...] = ()
        # Why labels given with the images cannot be counted for this model, once known.
        self.accuracy_problem = "the model has no classifier head" if getattr(model, "num_classes", None) == 0 else None
        self._measured = [metric for metric in catalogue.METRICS if metric.measure is not None]
        self.chunk: int | None = None  # query rows per chunk of maps, set by the plan

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

    def measure(
        self,
        capture: AttentionCapture,
        x: torch.Tensor,
        logits: object,
        labels: torch.Tensor | None,
        described: tuple[tuple[str, ...], tuple[str | None, ...]],
    ) -> BatchMeasurement:
        """Reduce one batch's capture (scores, not maps) to sums, and its logits to top-k
        counts when the batch has ``labels`` (nothing is added until ``add``); ``described``:
        the images' names and labels as the source gives them (``StreamBatch``)."""
        self.follow_input_size(tuple(x.shape[-2:]))
        size = capture.hidden.shape[1]
        num_examples = min(self.examples_needed, size)
        # Once enough examples are kept, later batches add none (and launch nothing for them).
        keep_examples = num_examples > 0 or not self.example_images
        example_images = example_cls = example_facts = None
        if keep_examples:
            example_images = to_uint8_images(x[:num_examples], self.mean, self.std)
            example_cls = _cls_attention(capture.scores, num_examples, self.geometry, self.chunk)
            example_facts = self._example_facts(logits, labels, size, num_examples, described)
        distances = self.token_distances(capture.hidden.device)
        batch = Batch(capture, self.geometry, self.settings, distances, self.chunk)
        sums = {name: value * size for metric in self._measured for name, value in metric.measure(batch).items()}
        correct = self._correct(logits, labels, size)
        return BatchMeasurement(
            size, sums, capture.hidden.flatten(2), example_images, example_cls, example_facts, correct
        )

    def _example_facts(
        self,
        logits: object,
        labels: torch.Tensor | None,
        size: int,
        count: int,
        described: tuple[tuple[str, ...], tuple[str | None, ...]],
    ) -> ExampleFacts:
        """The first ``count`` images' names and labels, top-1 classes and whether they are right."""
        names, label_names = (values[:count] for values in described)
        if not self._class_logits(logits, size):
            return ExampleFacts(names, label_names, None, None)
        top1 = logits[:count].argmax(dim=1)
        correct = None if labels is None else top1 == labels[:count].to(top1.device)
        return ExampleFacts(names, label_names, top1, correct)

    def _class_logits(self, logits: object, size: int) -> bool:
        """Whether ``logits`` are one row of class scores per image of the model's classifier
        (a model without a head returns features, whose largest entry names no class)."""
        num_classes = getattr(self.model, "num_classes", None)
        return (
            isinstance(logits, torch.Tensor)
            and logits.ndim == 2
            and len(logits) == size
            and logits.shape[1] >= 2
            and num_classes != 0
            and (not isinstance(num_classes, int) or logits.shape[1] == num_classes)
        )

    def _correct(self, logits: object, labels: torch.Tensor | None, size: int) -> torch.Tensor | None:
        """The batch's top-k counts; None without labels or without (B, C) logits."""
        if labels is None or self.accuracy_problem is not None:
            return None
        if not (isinstance(logits, torch.Tensor) and logits.ndim == 2 and len(logits) == size):
            self.accuracy_problem = "the model's output is not one row of class logits per image"
            return None
        self.ks = reported_ks(logits.shape[1])
        if not self.ks:
            self.accuracy_problem = "the model has a single class"
            return None
        return topk_correct(logits, labels, self.ks)

    def follow_input_size(self, image_size: tuple[int, int]) -> None:
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
        if measurement.correct is not None:
            self.correct = measurement.correct if self.correct is None else self.correct + measurement.correct
        if measurement.example_images is not None:
            self.example_images.append(measurement.example_images)
            for kind, weights in measurement.example_cls.items():
                self.example_cls[kind].append(weights)
            self.example_facts.append(measurement.example_facts)

    def tally(self) -> ModelTally:
        """The sums, counts and examples on the host (the only device-to-host copy)."""
        examples = {}
        if self.example_images:
            examples["example_images"] = torch.cat(self.example_images).numpy()
            for kind, maps in self.example_cls.items():
                examples[f"example_cls_{kind}"] = torch.cat(maps).cpu().numpy()
            examples.update(self._described_examples())
        correct = {} if self.correct is None else dict(zip(self.ks, self.correct.tolist()))
        sums = {name: total.double().cpu().numpy() for name, total in self.sums.items()}
        return ModelTally(sums, correct, self.accuracy_problem, examples)

    def _described_examples(self) -> dict[str, np.ndarray]:
        """``example_images.example_arrays`` of every example kept (with predictions only when
        every batch had class logits)."""
        facts = self.example_facts
        names = [name for batch in facts for name in batch.names]
        labels = [label for batch in facts for label in batch.labels]
        predicted = all(batch.top1 is not None for batch in facts)
        top1 = torch.cat([batch.top1 for batch in facts]).cpu().numpy() if predicted else None
        checked = predicted and all(batch.correct is not None for batch in facts)
        correct = torch.cat([batch.correct for batch in facts]).cpu().numpy() if checked else None
        known = model_class_names(self.model) if predicted and names else None
        return example_arrays(names, labels, top1, correct, None if known is None else known[0])

    def parts(self, labels: str) -> ModelParts:
        """What the model's result needs besides the sums (``labels``: where its labels came from)."""
        weight_arrays = {}
        for metric in catalogue.METRICS:
            if metric.reads_model is not None:
                weight_arrays.update(metric.reads_model(self.model, self.geometry))
        return ModelParts(self.model_info(), self.geometry, weight_arrays, labels)

    def model_info(self) -> dict[str, Any]:
        return {
            "description": describe_model(self.model),
            "provenance": getattr(self.model, "provenance", None) or {},
            "arch": getattr(self.model, "arch", None),
            "class": f"{type(self.model).__module__}.{type(self.model).__name__}",
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
        }


def _cls_attention(
    scores: list[AttentionScores], num_examples: int, geometry: Geometry, chunk: int | None
) -> dict[str, torch.Tensor]:
    """Map kind -> float32 (E, L, H, gh, gw): the CLS query's weight on every patch in the first
    ``num_examples`` images; a model without prefix tokens gets the mean weight of all queries."""
    prefix = geometry.num_prefix_tokens
    weights = [query_weights(block, 0 if prefix else None, chunk) for block in scores]
    cls = {}
    for kind, per_block in zip(MAP_KINDS, zip(*weights)):
        stacked = torch.stack([block[:num_examples, :, prefix:] for block in per_block]).transpose(0, 1)
        cls[kind] = stacked.reshape(num_examples, len(scores), geometry.num_heads, *geometry.grid_size)
    return cls


def _token_width(model: nn.Module, geometry: Geometry) -> int:
    """The model's token width D (``embed_dim``), or a guess from the parameter count."""
    width = getattr(model, "embed_dim", None) or getattr(model, "num_features", None)
    if isinstance(width, int) and width > 0:
        return width
    return max(1, int((sum(p.numel() for p in model.parameters()) / (12 * geometry.num_blocks)) ** 0.5))


# ----------------------------------------------------------------------------- driver


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[None]:
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

    def __init__(self, models: Sequence[nn.Module], settings: Settings, shard: Shard | str | None = None):
        self.models = models
        self.explicit_shard = Shard.parse(shard) if isinstance(shard, str) else shard
        process_shard = process_group_shard()
        if self.explicit_shard is not None and process_shard is not None:
            raise DiagError("a shard is chosen by the process group already; run --shard without torchrun")
        self.shard = self.explicit_shard or process_shard
        self.settings = replace(settings, device=local_device(settings.device)).resolved()
        self.device = self.settings.torch_device
        self.statistics = [ModelStatistics(model, self.settings) for model in models]
        self.cka = MinibatchCKA(chunk_size=self.settings.cka_chunk)
        self.batch_size = self.settings.batch_size
        self.store_dtype = TORCH_DTYPES[self.settings.dtype] if self.settings.dtype != "float32" else None
        self.checks: DeferredChecks | None = None  # set by run()
        self.planned = False

    def run(self, stream: ImageStream, progress: ProgressOption) -> None:
        if self.device.type == "cpu":
            keep_host_allocations()
        with ExitStack() as stack:
            recorders = []
            for model in self.models:
                stack.enter_context(on_device(model, self.device))
                stack.enter_context(eval_mode(model))
                recorder = AttentionRecorder(
                    model, hidden=True, store_dtype=self.store_dtype, reuse_buffers=True, maps=False
                )
                recorders.append(stack.enter_context(recorder))
            stack.enter_context(torch.inference_mode())
            label = "analysing images" + (f" (shard {self.shard})" if self.shard is not None else "")
            update = stack.enter_context(reporting(progress, label, stream.total))
            # Entered last, so it exits first: bad input raises before the results are read.
            self.checks = stack.enter_context(
                deferred_value_checks(lambda first: f"first in the batch starting at image {first}, 0-based")
            )
            for batch in stream:
                self._process(batch, recorders, lambda: update(self.statistics[0].count))

    def _process(self, batch: StreamBatch, recorders: list[AttentionRecorder], advance: Callable[[], None]) -> None:
        """Measure a batch in parts of the current batch size, halving it on CUDA OOM."""
        if not self.planned:
            self._plan(batch)
        start, total = 0, len(batch)
        while start < total:
            size = min(self.batch_size, total - start)
            parts = batch.part(start, start + size)
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

    def _plan(self, batch: StreamBatch) -> None:
        """Batch size and chunks for the memory budget, from the first batch's image size."""
        shapes = []
        for statistics, images in zip(self.statistics, batch.images):
            statistics.follow_input_size(tuple(images.shape[-2:]))
            shapes.append(ModelShape(statistics.geometry, _token_width(statistics.model, statistics.geometry)))
        budget = self.settings.memory_budget
        budget_bytes = budget * MIB if budget is not None else available_bytes(self.device)
        chosen = plan(shapes, budget_bytes, self.batch_size, self.device)
        self.batch_size = chosen.batch_size
        for statistics, chunk in zip(self.statistics, chosen.chunks):
            statistics.chunk = chunk
        self.planned = True

    def _measure(self, parts: StreamBatch, recorders: list[AttentionRecorder]) -> list[BatchMeasurement]:
        dtype = self.settings.dtype
        autocast = torch.autocast(self.device.type, dtype=TORCH_DTYPES[dtype]) if dtype != "float32" else nullcontext()
        measurements = []
        for model, recorder, statistics, x, labels in zip(
            self.models, recorders, self.statistics, parts.images, parts.labels
        ):
            with autocast:
                logits = model(x.to(self.device, non_blocking=True))
            # One model's maps at a time: they are reduced before the next model runs.
            described = (parts.names, parts.label_names)
            measurements.append(statistics.measure(recorder.take(), x, logits, labels, described))
        return measurements

    def _commit(self, measurements: list[BatchMeasurement]) -> None:
        self.cka.update(*(m.features for m in measurements))
        for statistics, measurement in zip(self.statistics, measurements):
            statistics.add(measurement)

    def gather_results(
        self, stream: ImageStream, parts: list[ModelParts]
    ) -> tuple[list[AnalysisResult], np.ndarray | None]:
        """One result per model, and the cross-model CKA (L_A, L_B) when there are two; in a
        process group, of every process's images (the tallies are gathered and added in rank
        order, so every process gets the same results)."""
        gathered = gather((self.tally(stream), self.computation()))
        total = sum((tally for tally, _ in gathered[1:]), gathered[0][0])
        description = stream.description
        if self.explicit_shard is not None:
            description += f"; {stream.held}"
        images = {"description": description, "count": total.count, "skipped": total.skipped + total.open_skipped}
        return build_results(total, parts, self.settings, images, combined_computation([done for _, done in gathered]))

    def tally(self, stream: ImageStream) -> Tally:
        """This process's sums (of its shard, in a process group or for ``--shard``)."""
        hsic = {key: value.cpu().numpy() for key, value in self.cka.hsic_totals().items()}
        models = [statistics.tally() for statistics in self.statistics]
        return Tally(self.statistics[0].count, models, hsic, stream.skipped, stream.open_skipped)

    def computation(self) -> dict[str, Any]:
        """How this process computed: its device, the batch size it ended with and each model's
        query rows per chunk of maps (None before the first batch)."""
        return {
            "final_batch_size": self.batch_size,
            "rows_per_chunk": [statistics.chunk for statistics in self.statistics],
            "processes": 1,
            "devices": [str(self.device)],
        }


@dataclass
class Run:
    """An analysis of one or two models: a result per model, the CKA across two models'
    block outputs (L_A, L_B), and this process's sums, which ``deepvit-diag merge`` adds up
    with the other shards' (``shard``: what identifies the shard, for ``shard=``). A shard
    that holds no images has sums but no results."""

    results: list[AnalysisResult]
    cka_ab: np.ndarray | None
    tally: Tally
    shard: ShardRecord | None


def run(
    models: Sequence[nn.Module],
    images: ImageSource,
    settings: Settings,
    *,
    progress: ProgressOption = False,
    shard: Shard | str | None = None,
) -> Run:
    """``analyze`` / ``compare`` of one or two models, with the sums behind the results."""
    models = [usable_model(model) for model in models]
    analysis = StreamingAnalysis(models, settings, shard)
    stream = ImageStream(images, models, analysis.settings, analysis.shard)
    if not is_reporting_process():
        progress = False  # one progress bar, rank 0's: the processes share a terminal
    analysis.run(stream, progress)
    parts = [statistics.parts(labels) for statistics, labels in zip(analysis.statistics, stream.label_notes)]
    tally = analysis.tally(stream)
    if analysis.explicit_shard is None:
        return Run(*analysis.gather_results(stream, parts), tally, None)
    record = ShardRecord(
        shard=analysis.explicit_shard,
        images=stream.whole,
        settings=analysis.settings,
        models=parts,
        weights=[weights_sha256(model) for model in models],
        computation=analysis.computation(),
    )
    made, cka_ab = analysis.gather_results(stream, parts) if tally.count else ([], None)
    return Run(made, cka_ab, tally, record)


def analyze(
    model: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    progress: ProgressOption = False,
    shard: Shard | str | None = None,
    **overrides: Any,
) -> AnalysisResult:
    """Every attention-collapse metric of ``model`` over ``images``, exact over all images.

    Args:
        model: a ViT/DeepViT (deepvit-diag or timm ``Attention`` blocks); used in eval
            mode on the settings' device and left exactly as it was (mode, device,
            modules, flags). A ``torch.compile``d model is analysed through its original
            module (``_orig_mod``).
        images: a preprocessed (N, C, H, W) tensor, or an (images, labels) pair of it and
            its (N,) class indices; a list of PIL images; a folder, file, glob or
            bundled-set name, or an ``ImageSet`` (``deepvit_diag.images.open_images``); or an
            iterable of (B, C, H, W) tensors, (images, labels, ...) tuples or dicts with
            ``pixel_values`` (and ``labels``) (a DataLoader). PIL
            and disk images are preprocessed with the model's own timm data config. Labels
            (class folders, the bundled digits, the pairs' labels) give ``result.accuracy``.
        settings: a ``Settings`` (default: the defaults): k, tau, rho, axis, maps,
            batch_size, num_images, device, dtype, cka_chunk, num_examples, num_workers.
        progress: False (default) for none, True for a progress bar on stderr, or a callable
            ``progress(done, total)`` called after every batch (``deepvit_diag.progress``).
        shard: analyse only this shard of the images, e.g. ``"1/4"`` for the first of 4 (``distributed.Shard``);
            ``deepvit-diag merge`` adds the shards' sums up. Inside an initialised
            ``torch.distributed`` process group every process analyses its own shard and
            every process gets the result of all images.
        overrides: fields of ``settings`` to replace, e.g. ``analyze(model, images, k=1)``.

    Example:
        >>> res = dd.analyze(timm.create_model("vit_tiny_patch16_224"), images)  # images (N, 3, 224, 224)
        >>> res.ratio()  # (L,)
        >>> res.plot("ratio")
    """
    settings = Settings.with_overrides(settings, overrides)
    return _results_of(run([model], images, settings, progress=progress, shard=shard))[0]


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    progress: ProgressOption = False,
    shard: Shard | str | None = None,
    **overrides: Any,
) -> ComparisonResult:
    """``analyze`` of two models on the same images in one pass, plus CKA across their
    block outputs (L_A, L_B). Each model gets PIL/disk images through its own data
    config; a tensor or tensor batches go to both unchanged. Arguments as in ``analyze``.

    Example:
        >>> cmp = dd.compare(vit, deepvit, "digits-test")
        >>> cmp.cka_ab.shape  # (L_A, L_B)
        >>> cmp.plot("cka")
    """
    settings = Settings.with_overrides(settings, overrides)
    done = run([model_a, model_b], images, settings, progress=progress, shard=shard)
    return ComparisonResult(*_results_of(done), done.cka_ab)


def _results_of(done: Run) -> list[AnalysisResult]:
    """A run's results; a shard that holds none of the images has none to return (its sums,
    ``run(...).tally``, still count in ``deepvit-diag merge``)."""
    if not done.results:
        raise DiagError(f"shard {done.shard.shard} holds none of the images, so it has no result of its own")
    count = done.results[0].num_images
    if count < MIN_UNBIASED_EXAMPLES:
        warnings.warn(
            f"CKA is undefined with {count} image{'s' if count != 1 else ''}: its unbiased estimator needs at "
            f"least {MIN_UNBIASED_EXAMPLES}, so the CKA matrices are NaN; analyse more images for CKA",
            stacklevel=3,
        )
    return done.results
