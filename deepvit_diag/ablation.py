"""Ablation studies: what removing blocks, attention, heads or Re-attention costs (``ablate``).

Similar attention maps (the collapse metrics) suggest that blocks are redundant; an
ablation measures it. Every study is a set of ``interventions.Variant``\\ s, each compared
with the intact model on the same images (``metrics.ablation``: KL divergence of the
predictive distribution, top-1 agreement, cosine of the final features, top-k accuracy
where the images carry labels):

* ``block``: block p removed (its output is its input: both residual branches zeroed);
* ``attention``: block p's attention branch zeroed, its MLP kept;
* ``transplant``: block p's maps that multiply V replaced by block p-1's on the same image;
* ``head``: head h of block p replaced by its mean output over the image set (per token
  position), or by zero (``heads="zero"``);
* ``reattention``: Re-attention switched off in block p (Theta = I, Norm bypassed: the
  softmax maps multiply V), and in all Re-attention blocks at once (``reattention_all``);
* ``similar``: all blocks whose similarity ratio exceeds rho removed together;
* ``pruning``: the k most redundant blocks removed, k = 1..L, in three orderings: smallest
  measured single-block cost (KL), highest similarity ratio, lowest Block Influence.

Three passes over the images, each streamed batch by batch like ``analyze``: (1) the
intact model with its maps: similarity ratio, cross-head similarity, Block Influence, the
mean head outputs; (2) the single ablations; (3) the pruning curves, whose measured
ordering needs pass 2. Every number is a sum over images divided by their count, so it does
not depend on the batch size; in a ``torch.distributed`` process group every process
streams its shard and the sums are gathered and added in rank order after each pass, so
every process continues from (and ends with) the numbers of all images.

Cost: a variant runs only the blocks from its first change on (``interventions``), and the
variants that start at the same block share one batched pass; ``plan_cost`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .ablation_result import ORDERINGS, AblationResult
from .analysis import TORCH_DTYPES, ModelStatistics, on_device
from .capture import AttentionRecorder, eval_mode
from .choices import HEAD_MODES, STUDIES
from .distributed import gather, is_reporting_process, local_device, process_group_shard
from .errors import DiagError
from .images import ImageSource, ImageStream
from .interventions import (
    MEAN_HEAD,
    PLAIN_ATTENTION,
    RECORD_MAPS,
    SKIP_BLOCK,
    TRANSPLANT_MAPS,
    ZERO_ATTENTION,
    ZERO_HEAD,
    Action,
    BlockRunner,
    IntactPass,
    Outputs,
    Variant,
    maps_module,
    mixes_with_theta,
)
from .introspection import Geometry
from .metrics import (
    Accuracy,
    block_influence,
    collapse_statistics,
    feature_cosine,
    prediction_divergence,
    reported_ks,
    similar_blocks,
    top1_agreement,
    topk_correct,
)
from .preprocessing import model_input_config
from .progress import ProgressOption, reporting
from .settings import Settings

# Variants stacked in one batched pass at most (V x batch size rows).
VARIANTS_PER_PASS = 16


@dataclass
class Family:
    """The variants of one study and where each one's numbers go: ``shape`` of its arrays,
    ``entries`` (index into them, variant); entries not planned stay NaN."""

    shape: tuple[int, ...]
    entries: list[tuple[tuple[int, ...], Variant]] = field(default_factory=list)


def single_ablations(runner: BlockRunner, geometry: Geometry, studies: Sequence[str], heads: str) -> dict[str, Family]:
    """The families of pass 2 for ``studies`` (``STUDIES`` without ``pruning``)."""
    depth, num_heads = runner.num_blocks, geometry.num_heads
    families: dict[str, Family] = {}
    if "block" in studies:
        families["block"] = Family((depth,), [((p,), Variant(p, p + 1)) for p in range(depth)])
    if "attention" in studies:
        families["attention"] = Family(
            (depth,), [((p,), Variant(p, p, (Action(p, ZERO_ATTENTION),))) for p in range(depth)]
        )
    if "transplant" in studies:
        swappable = [maps_module(attn) is not None for attn in runner.attns]
        families["transplant"] = Family(
            (depth,),
            [
                ((p,), Variant(p - 1, p - 1, (Action(p - 1, RECORD_MAPS), Action(p, TRANSPLANT_MAPS))))
                for p in range(1, depth)
                if swappable[p - 1] and swappable[p]
            ],
        )
    if "head" in studies:
        kind = MEAN_HEAD if heads == "mean" else ZERO_HEAD
        families["head"] = Family(
            (depth, num_heads),
            [((p, h), Variant(p, p, (Action(p, kind, h),))) for p in range(depth) for h in range(num_heads)],
        )
    mixing = [p for p, attn in enumerate(runner.attns) if mixes_with_theta(attn)]
    if "reattention" in studies and mixing:
        families["reattention"] = Family(
            (depth,), [((p,), Variant(p, p, (Action(p, PLAIN_ATTENTION),))) for p in mixing]
        )
        every = tuple(Action(p, PLAIN_ATTENTION) for p in mixing)
        families["reattention_all"] = Family((1,), [((0,), Variant(mixing[0], mixing[0], every))])
    return families


def removal(blocks: Sequence[int]) -> Variant:
    """The model without ``blocks``: it starts after the first of them, skipping the others."""
    first, *others = sorted(blocks)
    return Variant(first, first + 1, tuple(Action(block, SKIP_BLOCK) for block in others))


def pruning_orders(block_kl: np.ndarray | None, ratio: np.ndarray, influence: np.ndarray) -> dict[str, np.ndarray]:
    """Blocks from most to least redundant: smallest measured removal KL first, highest
    similarity ratio first, lowest Block Influence first (ties: the earlier block first;
    NaN last). ``measured`` needs the ``block`` study (``block_kl``)."""

    def ascending(values: np.ndarray) -> np.ndarray:
        return np.lexsort((np.arange(len(values)), np.nan_to_num(values, nan=np.inf)))

    orders = {"similarity": ascending(-ratio), "influence": ascending(influence)}
    if block_kl is not None:
        orders = {"measured": ascending(block_kl), **orders}
    return orders


def pruning_families(orders: dict[str, np.ndarray]) -> dict[str, Family]:
    """One family per ordering: entry k-1 removes its first k blocks, k = 1..L."""
    return {
        f"pruning_{name}": Family(
            (len(order),), [((k - 1,), removal(order[:k].tolist())) for k in range(1, len(order) + 1)]
        )
        for name, order in orders.items()
    }


def plan_cost(families: dict[str, Family], depth: int) -> dict[str, Any]:
    """Per image: ablated forward passes per family (``variants``), the blocks they run in all
    (``block_evaluations``) and those in full forward passes of the model (``forward_equivalents``)."""
    variants = [variant for family in families.values() for _, variant in family.entries]
    evaluations = sum(depth - variant.start for variant in variants)
    return {
        "variants": {name: len(family.entries) for name, family in families.items()},
        "block_evaluations": evaluations,
        "forward_equivalents": evaluations / depth,
    }


def planned_cost(model: nn.Module, studies: Sequence[str] = STUDIES, heads: str = "mean") -> dict[str, Any]:
    """What ``ablate`` will run per image, before any image is read (``--dry-run``): ``plan_cost``
    of the single studies, and of the pruning curves at most (their first removed block, where
    the shared part ends, is known only after the measurements), plus the intact ``passes``."""
    check_request(studies, heads)
    runner = BlockRunner(model)
    geometry = Geometry.of(model, model_input_config(model)["input_size"][1:])
    depth = runner.num_blocks
    cost = plan_cost(single_ablations(runner, geometry, studies, heads), depth)
    if "pruning" in studies:
        orderings = len(ORDERINGS) if "block" in studies else len(ORDERINGS) - 1
        # The k most redundant blocks removed, k = 1..L; at worst the first of them is block 0.
        cost["variants"]["pruning"] = orderings * depth
        cost["block_evaluations"] += orderings * depth * (depth - 1)
    cost["variants"]["similar"] = 1  # at most: when some block is similar
    cost["block_evaluations"] += depth - 1
    cost["forward_equivalents"] = cost["block_evaluations"] / depth
    cost["passes"] = 3 if "pruning" in studies else 2
    return cost


def check_request(studies: Sequence[str], heads: str) -> None:
    unknown = [study for study in studies if study not in STUDIES]
    if unknown or not studies:
        raise DiagError(f"unknown ablation studies {unknown or 'none'}; choose from {', '.join(STUDIES)}")
    if heads not in HEAD_MODES:
        raise DiagError(f"heads must be one of {', '.join(HEAD_MODES)}, got {heads!r}")


# ----------------------------------------------------------------------------- sums


class VariantSums:
    """Per variant, summed over images on the device: KL, top-1 agreement, feature cosine
    (float64) and, with labels, top-k correct counts (int64)."""

    def __init__(self, count: int, ks: tuple[int, ...], device: torch.device):
        self.kl = torch.zeros(count, dtype=torch.float64, device=device)
        self.agreement = torch.zeros_like(self.kl)
        self.cosine = torch.zeros_like(self.kl)
        self.correct = torch.zeros(count, len(ks), dtype=torch.int64, device=device)
        self.ks = ks

    def add(self, first: int, intact: Outputs, ablated: Outputs, labels: torch.Tensor | None) -> None:
        """Variants ``first``, ``first + 1``, ...: ``ablated`` holds (V, B, ...) outputs."""
        span = slice(first, first + ablated.logits.shape[0])
        self.kl[span] += prediction_divergence(intact.logits, ablated.logits).sum(dim=-1).double()
        self.agreement[span] += top1_agreement(intact.logits, ablated.logits).sum(dim=-1).double()
        self.cosine[span] += feature_cosine(intact.features, ablated.features).sum(dim=-1).double()
        if labels is not None and self.ks:
            self.correct[span] += torch.stack([topk_correct(logits, labels, self.ks) for logits in ablated.logits])

    def host(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).cpu().numpy() for name in ("kl", "agreement", "cosine", "correct")}


def _added(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Key-by-key sums of every process's arrays, in rank order."""
    return {key: sum((part[key] for part in parts[1:]), parts[0][key]) for key in parts[0]}


@dataclass
class Ablation:
    """What ``ablate`` computed, before it becomes an ``AblationResult`` (sums over ``count`` images)."""

    count: int
    statistics: dict[str, np.ndarray]
    families: dict[str, Family]
    sums: dict[str, np.ndarray]  # kl, agreement, cosine (n,), correct (n, K) over all planned variants in order
    intact_correct: np.ndarray  # (K,)
    ks: tuple[int, ...]
    labels: str  # where the labels came from, or why there are none
    orders: dict[str, np.ndarray]
    similar: list[int]
    computation: dict[str, Any]
    images: dict[str, Any]


class AblationRun:
    """Runs the three passes (see the module docstring) and owns every accumulator."""

    def __init__(self, model: nn.Module, images: ImageSource, settings: Settings, studies: Sequence[str], heads: str):
        check_request(studies, heads)
        self.model, self.images, self.studies, self.heads = model, images, tuple(studies), heads
        self.settings = replace(settings, device=local_device(settings.device)).resolved()
        self.device = self.settings.torch_device
        self.shard = process_group_shard()
        self.runner = BlockRunner(model)
        config = model_input_config(model)
        self.geometry = Geometry.of(model, config["input_size"][1:])
        self.ks: tuple[int, ...] = reported_ks(getattr(model, "num_classes", 0) or 0)
        self.label_note = ""
        self.checked = False
        dtype = self.settings.dtype
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=TORCH_DTYPES[dtype])) if dtype != "float32" else nullcontext
        )

    def single_families(self) -> dict[str, Family]:
        return single_ablations(self.runner, self.geometry, self.studies, self.heads)

    def stream(self) -> ImageStream:
        return ImageStream(self.images, [self.model], self.settings, self.shard)

    def batches(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """The images of one pass, on the device, with their labels; the progress advances after each batch."""
        stream = self.stream()
        for batch in stream:
            x = batch.images[0].to(self.device, non_blocking=True)
            labels = batch.labels[0]
            yield x, (labels.to(self.device) if labels is not None else None)
            self.passed += len(x)
            self.update(self.passed)
        self.skipped, self.open_skipped = stream.skipped, stream.open_skipped
        self.description = stream.description
        self.label_note = stream.label_notes[0]  # known once the batches are read (tensor pairs)

    def intact(self, x: torch.Tensor) -> IntactPass:
        with self.autocast():
            intact = self.runner.intact(x)
            if not self.checked:
                self.runner.check(x, intact)
                self.checked = True
        return intact

    def run(self, progress: ProgressOption) -> Ablation:
        with ExitStack() as stack:
            stack.enter_context(on_device(self.model, self.device))
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.inference_mode())
            total = self.stream().total
            passes = 3 if "pruning" in self.studies else 2
            label = "ablating" + (f" (shard {self.shard})" if self.shard is not None else "")
            self.update = stack.enter_context(reporting(progress, label, None if total is None else passes * total))
            self.passed = 0  # images through any pass so far, for the progress
            count, statistics, intact_correct = self.statistics_pass()
            if count == 0:
                raise DiagError("no images to ablate")
            families = self.single_families()
            similar = similar_blocks(torch.from_numpy(statistics["ratio"] / count), self.settings.rho).indices
            if similar:
                families["similar"] = Family((1,), [((0,), removal(similar))])
            means = statistics.get("head_sums")
            head_means = torch.from_numpy(means / count).float().to(self.device) if means is not None else None
            sums = self.ablation_pass(families, head_means)
            orders: dict[str, np.ndarray] = {}
            if "pruning" in self.studies:
                block_kl = None
                if "block" in families:
                    block_kl = _family_values(families, sums, "kl", "block") / count
                orders = pruning_orders(block_kl, statistics["ratio"] / count, statistics["block_influence"] / count)
                pruning = pruning_families(orders)
                pruning_sums = self.ablation_pass(pruning, None)
                families.update(pruning)
                sums = {key: np.concatenate([sums[key], pruning_sums[key]]) for key in sums}
        skipped = sum(gather(self.skipped)) + self.open_skipped  # files refused at opening count once
        images = {"description": self.description, "count": count, "skipped": skipped}
        computation = {
            "processes": 1 if self.shard is None else self.shard.count,
            "devices": [str(self.device)],
            "passes": passes,
        }
        return Ablation(
            count, statistics, families, sums, intact_correct, self.ks if self.has_labels else (), self.label_note,
            orders, similar, computation, images,
        )  # fmt: skip

    def statistics_pass(self) -> tuple[int, dict[str, np.ndarray], np.ndarray]:
        """Pass 1: sums of the similarity ratio (maps as ``settings.maps``), cross-head
        similarity, Block Influence and (for mean head ablation) each block's input of
        ``attn.proj``, and the intact top-k counts; of all processes' images."""
        settings = self.settings
        count = 0
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros(len(self.ks), dtype=torch.int64, device=self.device)
        self.has_labels = False
        head_sums = "head" in self.studies and self.heads == "mean"
        with ExitStack() as stack:
            recorder = stack.enter_context(AttentionRecorder(self.model, hidden=False))
            proj_inputs: list[torch.Tensor | None] = [None] * self.runner.num_blocks
            if head_sums:
                for index, attn in enumerate(self.runner.attns):
                    stack.callback(attn.proj.register_forward_pre_hook(_keeper(proj_inputs, index)).remove)
            for x, labels in self.batches():
                intact = self.intact(x)
                capture = recorder.take()
                maps = capture.post if settings.maps == "post" else capture.pre
                measured = collapse_statistics(maps, settings.k, settings.tau, settings.axis, overwrite=True)
                size = len(x)
                batch = {
                    "ratio": measured["ratio"],
                    "cross_head": measured["cross_head"],
                    "block_influence": block_influence(intact.inputs[1:], intact.inputs[0]),
                }
                batch = {name: value.double() * size for name, value in batch.items()}
                if head_sums:
                    batch["head_sums"] = torch.stack([part.double().sum(dim=0) for part in proj_inputs])
                for name, value in batch.items():
                    sums[name] = sums[name] + value if name in sums else value
                if labels is not None and self.ks:
                    self.has_labels = True
                    correct += topk_correct(intact.outputs.logits, labels, self.ks)
                count += size
        host = {name: value.cpu().numpy() for name, value in sums.items()}
        gathered = gather((count, host, correct.cpu().numpy(), self.has_labels))
        self.has_labels = any(part[3] for part in gathered)
        present = [part[1] for part in gathered if part[1]]
        totals = _added(present) if present else {}
        return sum(part[0] for part in gathered), totals, sum(part[2] for part in gathered)

    def ablation_pass(self, families: dict[str, Family], head_means: torch.Tensor | None) -> dict[str, np.ndarray]:
        """Every variant of ``families`` on every image; the sums of all processes, in planned order."""
        variants = [variant for family in families.values() for _, variant in family.entries]
        groups = _groups(variants)
        sums = VariantSums(len(variants), self.ks, self.device)
        for x, labels in self.batches():
            intact = self.intact(x)
            for first, group in groups:
                with self.autocast():
                    ablated = self.runner.run_variants(intact, group, head_means)
                sums.add(first, intact.outputs, ablated, labels if self.has_labels else None)
        return _added(gather(sums.host()))


def _keeper(store: list, index: int) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        store[index] = args[0]

    return hook


def _groups(variants: list[Variant]) -> list[tuple[int, list[Variant]]]:
    """(index of the first, variants) of consecutive planned variants that share their start,
    at most ``VARIANTS_PER_PASS`` each: what one batched pass runs."""
    groups: list[tuple[int, list[Variant]]] = []
    for index, variant in enumerate(variants):
        if groups and groups[-1][1][0].start == variant.start and len(groups[-1][1]) < VARIANTS_PER_PASS:
            groups[-1][1].append(variant)
        else:
            groups.append((index, [variant]))
    return groups


def _family_values(families: dict[str, Family], sums: dict[str, np.ndarray], measure: str, name: str) -> np.ndarray:
    """The sums of ``measure`` for family ``name`` in its array shape (NaN where not planned)."""
    offset = 0
    for key, family in families.items():
        if key == name:
            values = sums[measure]
            width = values.shape[1:]
            array = np.full(family.shape + width, np.nan)
            for position, (index, _) in enumerate(family.entries):
                array[index] = values[offset + position]
            return array
        offset += len(family.entries)
    raise KeyError(name)


def family_arrays(ablation: Ablation) -> dict[str, np.ndarray]:
    """Each family's means: ``<family>_kl``, ``_agreement``, ``_cosine`` in its shape and, with
    labels, ``<family>_accuracy`` (shape + (K,)): top-k accuracy of the ablated model."""
    arrays = {}
    for name in ablation.families:
        for measure in ("kl", "agreement", "cosine"):
            arrays[f"{name}_{measure}"] = (
                _family_values(ablation.families, ablation.sums, measure, name) / ablation.count
            ).astype(np.float32)
        if ablation.ks:
            correct = _family_values(ablation.families, ablation.sums, "correct", name)
            arrays[f"{name}_accuracy"] = (correct / ablation.count).astype(np.float32)
    return arrays


def ablate(
    model: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    studies: Sequence[str] = STUDIES,
    heads: str = "mean",
    progress: ProgressOption = False,
    **overrides: Any,
) -> AblationResult:
    """What removing blocks, attention, heads or Re-attention costs ``model`` on ``images``.

    Args:
        model: a ViT/DeepViT whose blocks run one after another on the tokens (timm's
            ``VisionTransformer`` family, deepvit-diag's models), with a classifier head;
            used in eval mode on the settings' device and left as it was.
        images: as for ``analyze`` (tensor, (images, labels) pair, PIL images, folder, file,
            glob, bundled set, ``ImageSet``, iterable of batches). With labels, every
            ablation also reports its top-k accuracy.
        settings: a ``Settings``: k, tau, rho, axis and maps for the similarity ratio that
            orders the pruning and names the similar blocks; batch_size, num_images, device,
            dtype, num_workers.
        studies: which of ``STUDIES`` to run (all by default).
        heads: ``"mean"`` (a head's output replaced by its mean over the images) or ``"zero"``.
        progress: True for a bar on stderr, False for none, or ``progress(done, total)``.
        overrides: fields of ``settings`` to replace.
    Inside an initialised ``torch.distributed`` process group every process ablates its
    shard of the images and every process gets the result of all images.

    Example:
        >>> abl = dd.ablate(dd.load_model("vit32"), "digits-clutter-test", studies=["block"], num_images=64)
        >>> abl.values("block", "kl")  # (L,) mean KL of each block's removal from the intact model
    """
    settings = Settings.with_overrides(settings, overrides)
    run = AblationRun(model, images, settings, studies, heads)
    if not is_reporting_process():
        progress = False
    done = run.run(progress)
    arrays = {name: (done.statistics[name] / done.count).astype(np.float32) for name in _STATISTICS}
    arrays.update(family_arrays(done))
    arrays.update({f"pruning_{name}_order": order.astype(np.int64) for name, order in done.orders.items()})
    if done.ks:
        accuracy = Accuracy(done.count, dict(zip(done.ks, (int(n) for n in done.intact_correct))), done.labels)
    else:
        accuracy = Accuracy.unavailable(done.labels or "the model has fewer than two classes")
    return AblationResult(
        model=ModelStatistics(model, run.settings).model_info(),
        geometry=run.geometry,
        settings=run.settings,
        images=done.images,
        num_images=done.count,
        heads=heads,
        studies=run.studies,
        arrays=arrays,
        accuracy=accuracy,
        similar_blocks=done.similar,
        computation=done.computation,
    )


_STATISTICS = ("ratio", "cross_head", "block_influence")
