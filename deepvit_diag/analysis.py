"""Streaming attention-collapse analysis of one model (``analyze``) or two (``compare``).

Images flow through the model batch by batch; each batch's maps are reduced on the
device to per-batch metric sums (``collapse_statistics`` for the similarity family, one
batched call per map kind; ``softmax_statistics`` for entropy and distance) and dropped
before the next batch, so peak memory is one batch of maps whatever the number of
images. Every metric except CKA is a mean with equal weight per image
(``deepvit_diag.metrics``), so ``sum_b metric(batch) * B / N`` is the exact dataset mean
and the result does not depend on the batch size; CKA streams through ``MinibatchCKA``,
whose chunks do not depend on the batches either.

Nothing leaves the device until the end and the host never waits for it inside the loop:
the metrics' input checks (NaN/Inf, negative softmax weights) run deferred
(``deferred_value_checks``), as on-device flags read once after the last batch, so bad
input still ends in a DiagError naming the first bad batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from .capture import (
    AttentionCapture,
    AttentionRecorder,
    attention_module,
    eval_mode,
    model_device,
    model_input_config,
    model_transform,
    num_prefix_tokens,
    transformer_blocks,
)
from .device import resolve_device
from .errors import DiagError
from .images import ImageSet, open_images
from .metrics import MinibatchCKA, collapse_statistics, rank_collapse, theta_matrices, token_similarity
from .metrics._checks import DeferredChecks, checked_maps, deferred_value_checks
from .metrics.attention import _patch_distances
from .metrics.cka import MIN_UNBIASED_EXAMPLES
from .results import MAP_KINDS, THETA_FIELDS, AnalysisResult, ComparisonResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
AXES = ("columns", "rows")

ImageSource = (
    torch.Tensor | Sequence[Image.Image] | str | Path | Sequence[str | Path] | ImageSet | Iterable[torch.Tensor]
)


@dataclass
class Settings:
    """Validated analysis parameters (see ``analyze``)."""

    k: int = 2
    tau: float = 0.5
    rho: float = 0.9
    axis: str = "columns"
    maps: str = "post"
    batch_size: int = 32
    num_images: int | None = None
    device: str | torch.device = "auto"
    dtype: str = "float32"
    cka_chunk: int = 32
    num_examples: int = 4
    progress: bool = True
    num_workers: int | None = None

    def __post_init__(self) -> None:
        _require_int("k", self.k, minimum=1)
        _require_int("batch_size", self.batch_size, minimum=1)
        _require_int("cka_chunk", self.cka_chunk, minimum=MIN_UNBIASED_EXAMPLES)
        _require_int("num_examples", self.num_examples, minimum=0)
        if self.num_images is not None:
            _require_int("num_images", self.num_images, minimum=1)
        for name in ("tau", "rho"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DiagError(f"{name} must be a finite number, got {value!r}")
        if self.axis not in AXES:
            raise DiagError(f"axis must be 'columns' or 'rows', got {self.axis!r}")
        if self.maps not in MAP_KINDS:
            raise DiagError(f"maps must be 'pre' or 'post', got {self.maps!r}")
        if self.dtype not in DTYPES:
            raise DiagError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        try:
            self.device = resolve_device(self.device)
        except (ValueError, RuntimeError) as err:
            raise DiagError(str(err)) from None
        if self.num_workers is None:
            self.num_workers = default_num_workers(self.device)
        _require_int("num_workers", self.num_workers, minimum=0)

    def params(self, final_batch_size: int) -> dict[str, Any]:
        """The parameters a result records."""
        return {
            "k": self.k,
            "tau": self.tau,
            "rho": self.rho,
            "axis": self.axis,
            "maps": self.maps,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "final_batch_size": final_batch_size,
            "device": str(self.device),
            "cka_chunk": self.cka_chunk,
            "num_examples": self.num_examples,
            "num_workers": self.num_workers,
        }


def default_num_workers(device: torch.device) -> int:
    """Image-decoding processes for ``device``: none on the CPU, whose cores the model
    already uses; on a GPU up to 8, leaving one core to the main process."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DiagError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------- images


class ImageStream:
    """Batches of at most ``settings.batch_size`` images, as one tensor per model.

    Tensors and iterables of tensor batches are passed to every model as they are (already
    preprocessed); PIL images and image files are preprocessed with each model's own timm
    data config (models with the same config share one tensor), by ``settings.num_workers``
    processes and into pinned memory when the device is a GPU.
    """

    def __init__(self, images: ImageSource, models: Sequence[nn.Module], settings: Settings):
        self.models = models
        self.batch_size = settings.batch_size
        self.limit = settings.num_images
        self.num_workers = settings.num_workers
        self.pin_memory = settings.device.type == "cuda"
        self.count = 0
        self._image_set: ImageSet | None = None
        self._tensors: Iterable[torch.Tensor] | None = None
        self.total: int | None = None
        self._classify(images)

    def _classify(self, images: ImageSource) -> None:
        if isinstance(images, torch.Tensor):
            self._tensors, self.total = [images], min(len(images), self.limit or len(images))
            self.description = f"a tensor of {len(images)} preprocessed images"
        elif isinstance(images, ImageSet) or _is_path_spec(images):
            self._use(images if isinstance(images, ImageSet) else open_images(images, limit=self.limit))
        elif isinstance(images, Sequence) and images and all(isinstance(image, Image.Image) for image in images):
            self._use(ImageSet.of_images(images))
        elif isinstance(images, Iterable) and not isinstance(images, (str, bytes, Image.Image)):
            self._tensors, self.total = images, self.limit
            self.description = f"batches of preprocessed images from a {type(images).__name__}"
        else:
            raise DiagError(
                "images must be a (N, C, H, W) tensor, a list of PIL images, a folder/file/glob/bundled-set "
                f"name, or an iterable of (B, C, H, W) batches; got {type(images).__name__}"
            )

    def _use(self, image_set: ImageSet) -> None:
        self._image_set = image_set
        self.total = min(len(image_set), self.limit or len(image_set))
        self.description = image_set.description

    def provenance(self) -> dict[str, Any]:
        skipped = self._image_set.skipped if self._image_set is not None else 0
        return {"description": self.description, "count": self.count, "skipped": skipped}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        source = self._image_batches() if self._image_set is not None else self._tensor_batches()
        for batch in source:
            if self.limit is not None:
                batch = tuple(x[: self.limit - self.count] for x in batch)
            self.count += len(batch[0])
            yield batch
            if self.limit is not None and self.count >= self.limit:
                return
        if self.count == 0:
            raise DiagError(f"no images to analyse in {self.description}")

    def _tensor_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for item in self._tensors:
            x = _batch_tensor(item)
            for model in self.models:
                _check_input_size(model, x)
            for start in range(0, len(x), self.batch_size):
                part = x[start : start + self.batch_size]
                yield (part,) * len(self.models)

    def _image_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        configs = [repr(sorted(model_input_config(model).items())) for model in self.models]
        transforms = {config: model_transform(model) for config, model in zip(configs, self.models)}
        batches = self._image_set.batches(
            list(transforms.values()), self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        for tensors in batches:
            by_config = dict(zip(transforms, tensors))
            yield tuple(by_config[config] for config in configs)


def _is_path_spec(images: object) -> bool:
    if isinstance(images, (str, Path)):
        return True
    return isinstance(images, (list, tuple)) and bool(images) and all(isinstance(item, (str, Path)) for item in images)


def _batch_tensor(item: object) -> torch.Tensor:
    """A (B, C, H, W) float tensor from a batch, or from the first entry of an (images, labels) pair."""
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        item = item[0]
    if not isinstance(item, torch.Tensor) or item.ndim != 4 or not item.is_floating_point():
        shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
        raise DiagError(f"every batch of images must be a preprocessed float tensor (B, C, H, W), got {shape}")
    return item


def _check_input_size(model: nn.Module, x: torch.Tensor) -> None:
    if getattr(model, "dynamic_img_size", False):
        return
    expected = tuple(model_input_config(model)["input_size"])
    if tuple(x.shape[1:]) != expected:
        raise DiagError(
            f"images have shape (C, H, W) = {tuple(x.shape[1:])}, but {describe_model(model)} expects {expected}"
        )


# ----------------------------------------------------------------------------- per model


def describe_model(model: nn.Module) -> str:
    """The provenance description, else the timm architecture or class name."""
    provenance = getattr(model, "provenance", None) or {}
    if provenance.get("description"):
        return str(provenance["description"])
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"{architecture or type(model).__name__} ({len(transformer_blocks(model))} blocks, no provenance)"


@dataclass
class Geometry:
    """Token layout of a model, needed by the distance metric and the example overlays."""

    num_blocks: int
    num_heads: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _distances: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, model: nn.Module) -> Geometry:
        patch_embed = getattr(model, "patch_embed", None)
        patch_size, grid_size = getattr(patch_embed, "patch_size", None), getattr(patch_embed, "grid_size", None)
        if patch_size is None or grid_size is None:
            raise DiagError(
                f"cannot find the patch grid of {type(model).__name__}: it has no patch_embed.patch_size/grid_size"
            )
        config = model_input_config(model)
        return cls(
            num_blocks=len(transformer_blocks(model)),
            num_heads=attention_module(model, 0).num_heads,
            num_prefix_tokens=num_prefix_tokens(model),
            patch_size=_pair(patch_size),
            grid_size=_pair(grid_size),
            image_size=tuple(config["input_size"][1:]),
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
        )

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def patch_distances(self, device: torch.device) -> torch.Tensor:
        """(T * T,) float32 on ``device``: at ``i * T + j`` the pixel distance between the
        centres of tokens i and j, 0 where either is a prefix token (made once per device)."""
        key = str(device)
        if key not in self._distances:
            prefix = self.num_prefix_tokens
            padded = torch.zeros(self.num_tokens, self.num_tokens, device=device)
            padded[prefix:, prefix:] = _patch_distances(self.grid_size, tuple(map(float, self.patch_size)), device)
            self._distances[key] = padded.flatten()
        return self._distances[key]


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


# The smallest normal float32: its logarithm is finite, so 0 * log(0 clamped to it) = 0.
_TINY = torch.finfo(torch.float32).tiny


def softmax_statistics(maps: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention entropy and mean attention distance (L, H) of softmax maps, fast path.

    The numbers of ``attention_entropy`` and ``mean_attention_distance`` (REFERENCE.md 4.6,
    4.7; the readable reference, tested against this) up to float rounding, block by block
    with one reused float32 scratch block (which also holds the cast of bfloat16 maps),
    never a maps-sized temporary. The distance is a matrix-vector product with
    ``geometry.patch_distances`` (zeros there drop the prefix rows and columns without
    renormalising, as the reference does); the entropy sums ``A ln A`` with the logarithm's
    argument clamped at the smallest normal float, which gives ``0 ln 0 = 0``.
    """
    maps = checked_maps(maps, nonnegative_for="attention entropy and distance")
    num_blocks, batch, num_heads, num_tokens = maps.shape[:4]
    if num_tokens != geometry.num_tokens:
        raise DiagError(
            f"maps have {num_tokens} tokens, but the model's patch grid and prefix make {geometry.num_tokens}"
        )
    distances = geometry.patch_distances(maps.device)
    scratch = maps.new_empty(maps.shape[1:], dtype=torch.float32)
    entropy = maps.new_empty((num_blocks, num_heads), dtype=torch.float32)
    distance = maps.new_empty((num_blocks, num_heads), dtype=torch.float32)
    for index, block in enumerate(maps):
        values = block if block.dtype == torch.float32 else scratch.copy_(block)
        distance[index] = (values.reshape(batch, num_heads, -1) @ distances).sum(dim=0)
        logs = torch.clamp(values, min=_TINY, out=scratch).log_()
        entropy[index] = logs.mul_(block).sum(dim=(0, 2, 3))
    return entropy.neg_() / (batch * num_tokens), distance / (batch * geometry.num_patches)


@dataclass
class BatchMeasurement:
    """One batch reduced: metric sums (mean * batch size) plus what CKA and examples need."""

    size: int
    sums: dict[str, torch.Tensor]
    features: torch.Tensor  # (L, B, T * D) block outputs flattened per image
    example_images: torch.Tensor | None  # (E_b, H, W, 3) uint8, on the host; None once enough are kept
    example_cls: dict[str, torch.Tensor] | None  # map kind -> (E_b, L, H, gh, gw)


@dataclass
class ModelStatistics:
    """Device-side running sums of every per-image metric of one model, plus its examples."""

    model: nn.Module
    geometry: Geometry
    settings: Settings
    count: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    example_images: list[torch.Tensor] = field(default_factory=list)
    example_cls: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {kind: [] for kind in MAP_KINDS})
    reattention_blocks: list[int] = field(default_factory=list)

    @property
    def examples_needed(self) -> int:
        return self.settings.num_examples - sum(len(images) for images in self.example_images)

    def measure(self, capture: AttentionCapture, x: torch.Tensor) -> BatchMeasurement:
        """Reduce one batch's capture to sums (nothing is added until ``add``).

        The capture is used up: its float32 maps are normalised in place (the recorder
        reuses them for the next forward anyway), so everything else reads them first.
        """
        size = capture.pre.shape[1]
        geometry, settings = self.geometry, self.settings
        num_examples = min(self.examples_needed, size)
        # Once enough examples are kept, later batches add none (and launch nothing for them).
        keep_examples = num_examples > 0 or not self.example_images
        example_images = _to_uint8_images(x[:num_examples], geometry) if keep_examples else None
        example_cls = None
        if keep_examples:
            example_cls = {
                kind: _cls_attention(getattr(capture, kind)[:, :num_examples], geometry) for kind in MAP_KINDS
            }
        entropy, distance = softmax_statistics(capture.pre, geometry)

        def similarity_family(maps: torch.Tensor) -> dict[str, torch.Tensor]:
            return collapse_statistics(maps, settings.k, settings.tau, settings.axis, overwrite=True)

        stats = {"post": similarity_family(capture.post)}
        # Without Re-attention blocks, post is pre (the same tensor): measure it once.
        stats["pre"] = stats["post"] if capture.pre is capture.post else similarity_family(capture.pre)
        sums = {f"{name}_{kind}": value * size for kind in MAP_KINDS for name, value in stats[kind].items()}
        sums["entropy"], sums["attention_distance"] = entropy * size, distance * size
        sums["token_similarity"] = token_similarity(capture.hidden, geometry.num_prefix_tokens) * size
        sums["rank_residual"] = rank_collapse(capture.hidden) * size
        return BatchMeasurement(
            size=size,
            sums=sums,
            features=capture.hidden.flatten(2),
            example_images=example_images,
            example_cls=example_cls,
        )

    def add(self, measurement: BatchMeasurement) -> None:
        for name, value in measurement.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += measurement.size
        if measurement.example_images is not None:
            self.example_images.append(measurement.example_images)
            for kind, weights in measurement.example_cls.items():
                self.example_cls[kind].append(weights)

    def arrays(self) -> dict[str, np.ndarray]:
        """Dataset means, examples and Theta as numpy (the only device-to-host copy)."""
        arrays = {name: (total / self.count).cpu().numpy() for name, total in self.sums.items()}
        arrays["example_images"] = torch.cat(self.example_images).numpy()
        for kind, weights in self.example_cls.items():
            arrays[f"example_cls_{kind}"] = torch.cat(weights).cpu().numpy()
        arrays.update(_theta_arrays(self.model))
        return arrays

    def model_info(self) -> dict[str, Any]:
        geometry = self.geometry
        return {
            "description": describe_model(self.model),
            "provenance": getattr(self.model, "provenance", None) or {},
            "arch": getattr(self.model, "arch", None),
            "class": f"{type(self.model).__module__}.{type(self.model).__name__}",
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "num_blocks": geometry.num_blocks,
            "num_heads": geometry.num_heads,
            "num_tokens": geometry.num_tokens,
            "num_prefix_tokens": geometry.num_prefix_tokens,
            "patch_size": geometry.patch_size,
            "grid_size": geometry.grid_size,
            "image_size": geometry.image_size,
            "reattention_blocks": self.reattention_blocks,
        }


def _to_uint8_images(x: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Preprocessed images (E, C, H, W) back to (E, H, W, C) uint8 with the model's mean/std."""
    mean = torch.tensor(geometry.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(geometry.std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1)


def _cls_attention(maps: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(L, E, H, T, T) -> float32 (E, L, H, gh, gw): the CLS query's weight on every patch;
    a model without prefix tokens gets the mean weight of all queries."""
    prefix = geometry.num_prefix_tokens
    weights = maps[..., 0, prefix:] if prefix else maps[..., prefix:].float().mean(dim=-2)
    num_blocks, num_examples, num_heads, _ = weights.shape
    # A copy, so the example does not keep the whole batch's maps alive.
    weights = weights.to(torch.float32, copy=True).transpose(0, 1)
    return weights.reshape(num_examples, num_blocks, num_heads, *geometry.grid_size)


def _theta_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    arrays = {}
    for block, info in theta_matrices(model).items():
        arrays[f"theta_{block}"] = info.theta
        for name in THETA_FIELDS:
            if getattr(info, name) is not None:
                arrays[f"theta_{block}_{name}"] = getattr(info, name)
    return arrays


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


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


class StreamingAnalysis:
    """Runs the models over the image stream and owns every accumulator."""

    def __init__(self, models: Sequence[nn.Module], settings: Settings):
        self.models = models
        self.settings = settings
        self.statistics = [ModelStatistics(model, Geometry.of(model), settings) for model in models]
        self.cka = MinibatchCKA(chunk_size=settings.cka_chunk)
        self.batch_size = settings.batch_size
        self.store_dtype = DTYPES[settings.dtype] if settings.dtype != "float32" else None
        self.checks: DeferredChecks | None = None  # set by run()

    def run(self, stream: ImageStream) -> None:
        device = self.settings.device
        with ExitStack() as stack:
            recorders = []
            for model in self.models:
                stack.enter_context(_on_device(model, device))
                stack.enter_context(eval_mode(model))
                recorder = AttentionRecorder(model, hidden=True, store_dtype=self.store_dtype, reuse_buffers=True)
                recorders.append(stack.enter_context(recorder))
            for statistics, recorder in zip(self.statistics, recorders):
                statistics.reattention_blocks = recorder.reattention_blocks
            stack.enter_context(torch.inference_mode())
            progress = stack.enter_context(_progress(self.settings.progress))
            # Entered last, so it exits first: bad input raises before the results are read.
            self.checks = stack.enter_context(
                deferred_value_checks(lambda first: f"first in the batch starting at image {first}, 0-based")
            )
            task = progress.add_task("analysing images", total=stream.total)
            for batch in stream:
                self._process(batch, recorders, lambda done: progress.advance(task, done))

    def _process(
        self, batch: tuple[torch.Tensor, ...], recorders: list[AttentionRecorder], advance: Callable[[int], None]
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
                advance(size)
                continue
            # Outside the except block, so the failed attempt's tensors are already released.
            if self.settings.device.type == "cuda":
                torch.cuda.empty_cache()

    def _measure(self, parts: tuple[torch.Tensor, ...], recorders: list[AttentionRecorder]) -> list[BatchMeasurement]:
        device = self.settings.device
        autocast = (
            torch.autocast(device.type, dtype=DTYPES[self.settings.dtype])
            if self.settings.dtype != "float32"
            else nullcontext()
        )
        measurements = []
        for model, recorder, statistics, x in zip(self.models, recorders, self.statistics, parts):
            with autocast:
                model(x.to(device, non_blocking=True))
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
        params = self.settings.params(self.batch_size)
        results = []
        for statistics, key in zip(self.statistics, ("a", "b")):
            arrays = {**statistics.arrays(), "cka": cka[key]}
            results.append(AnalysisResult(statistics.model_info(), params, stream.provenance(), count, arrays))
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
    models: Sequence[nn.Module], images: ImageSource, settings: Settings
) -> tuple[list[AnalysisResult], np.ndarray | None]:
    analysis = StreamingAnalysis(models, settings)
    stream = ImageStream(images, models, settings)
    analysis.run(stream)
    return analysis.results(stream)


def analyze(
    model: nn.Module,
    images: ImageSource,
    *,
    k: int = 2,
    tau: float = 0.5,
    rho: float = 0.9,
    axis: str = "columns",
    maps: str = "post",
    batch_size: int = 32,
    num_images: int | None = None,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    cka_chunk: int = 32,
    num_examples: int = 4,
    progress: bool = True,
    num_workers: int | None = None,
) -> AnalysisResult:
    """Every attention-collapse metric of ``model`` over ``images``, exact over all images.

    Args:
        model: a ViT/DeepViT (deepvit-diag or timm ``Attention`` blocks); used in eval
            mode on ``device`` and left exactly as it was (mode, device, modules, flags).
        images: a preprocessed (N, C, H, W) tensor; a list of PIL images; a folder, file,
            glob or bundled-set name (``deepvit_diag.images.open_images``); or an iterable
            of (B, C, H, W) tensors (or (images, labels) pairs). PIL and disk images are
            preprocessed with the model's own timm data config.
        k, tau: neighbour blocks and cosine threshold of the similarity ratio (REFERENCE.md 4.2).
        rho: ratio above which a block counts as similar (4.3).
        axis: ``"columns"`` (paper Eqn 2) or ``"rows"`` attention vectors.
        maps: the map kind ("pre" softmax or "post" Re-attention) summaries use by default.
        batch_size: images per forward pass; halved and retried on CUDA out-of-memory.
        num_images: analyse only the first ``num_images`` images.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``.
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast; maps stored in bf16, metrics in float32).
        cka_chunk: images per minibatch of the CKA estimator (>= 4).
        num_examples: first images kept for overlays, with their CLS attention per block and
            head (pre and post); the pixels are recovered with the model's mean/std.
        progress: show a progress bar over images.
        num_workers: processes that decode and preprocess PIL and disk images ahead of the
            model (``ImageSet.batches``); default 0 on the CPU, up to 8 on a GPU.
    """
    settings = Settings(
        k=k,
        tau=tau,
        rho=rho,
        axis=axis,
        maps=maps,
        batch_size=batch_size,
        num_images=num_images,
        device=device,
        dtype=dtype,
        cka_chunk=cka_chunk,
        num_examples=num_examples,
        progress=progress,
        num_workers=num_workers,
    )
    (result,), _ = _run([model], images, settings)
    return result


def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    images: ImageSource,
    *,
    k: int = 2,
    tau: float = 0.5,
    rho: float = 0.9,
    axis: str = "columns",
    maps: str = "post",
    batch_size: int = 32,
    num_images: int | None = None,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    cka_chunk: int = 32,
    num_examples: int = 4,
    progress: bool = True,
    num_workers: int | None = None,
) -> ComparisonResult:
    """``analyze`` of two models on the same images in one pass, plus CKA across their
    block outputs (L_A, L_B). Each model gets PIL/disk images through its own data
    config; a tensor or tensor batches go to both unchanged. Arguments as in ``analyze``."""
    settings = Settings(
        k=k,
        tau=tau,
        rho=rho,
        axis=axis,
        maps=maps,
        batch_size=batch_size,
        num_images=num_images,
        device=device,
        dtype=dtype,
        cka_chunk=cka_chunk,
        num_examples=num_examples,
        progress=progress,
        num_workers=num_workers,
    )
    (result_a, result_b), cka_ab = _run([model_a, model_b], images, settings)
    return ComparisonResult(result_a, result_b, cka_ab)
