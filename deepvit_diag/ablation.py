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

Up to three passes over the images, each streamed batch by batch like ``analyze``: (1)
the intact model with its maps (``Plan``): similarity ratio, cross-head similarity, Block
Influence, the mean head outputs, and what they decide: the similar blocks and the pruning
orders by similarity ratio and by Block Influence; (2) the single ablations, the similar
blocks removed together and those two pruning curves; (3) the pruning curve in the measured
order, which needs the block removals of pass 2. Every number is a sum over images divided
by their count, so it does not depend on the batch size; in a ``torch.distributed`` process
group every process streams its shard and the sums are gathered and added in rank order
after each pass, so every process continues from (and ends with) the numbers of all images.
Separate runs of shards (``--shard I/N``) follow the same passes as two stages
(``ablation_shards``).

Cost: a variant runs only the blocks from its first change on (``interventions``), and the
variants that start at the same block share one batched pass; ``plan_cost`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .ablation_result import MEASURES, ORDERINGS, AblationResult
from .analysis import TORCH_DTYPES, ModelStatistics, on_device
from .capture import AttentionRecorder, eval_mode
from .choices import HEAD_MODES, STUDIES
from .distributed import Shard, gather, is_reporting_process, local_device, process_group_shard
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
# The intact model's measures of pass 1, summed over the images; their means are result arrays.
STATISTICS = ("ratio", "cross_head", "block_influence")


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


def _ascending(values: np.ndarray) -> np.ndarray:
    """Indices from the smallest value up; ties: the earlier block first; NaN last."""
    return np.lexsort((np.arange(len(values)), np.nan_to_num(values, nan=np.inf)))


def known_orders(ratio: np.ndarray, influence: np.ndarray) -> dict[str, np.ndarray]:
    """Blocks from most to least redundant by the intact pass alone: highest similarity ratio
    first, lowest Block Influence first."""
    return {"similarity": _ascending(-ratio), "influence": _ascending(influence)}


def measured_order(block_kl: np.ndarray) -> np.ndarray:
    """Blocks from most to least redundant by the measured cost of removing each alone (KL)."""
    return _ascending(block_kl)


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
    cost["passes"] = 3 if "pruning" in studies and "block" in studies else 2
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


def _means(total: np.ndarray, count: int) -> np.ndarray:
    """A sum over ``count`` images as the float32 mean a result holds. The similar blocks and
    the pruning orders are decided on these means, the numbers a result shows, so a later
    stage reading a saved result decides as a single run does."""
    return (total / count).astype(np.float32)


@dataclass
class FamilyTotals:
    """One family's sums over images: ``shape`` of its arrays, ``indices`` of its planned
    entries in them, and per entry (in that order) ``kl``, ``agreement``, ``cosine`` (n,)
    and ``correct`` (n, K). Totals of disjoint image shards add up (``+``)."""

    shape: tuple[int, ...]
    indices: list[tuple[int, ...]]
    sums: dict[str, np.ndarray]

    def __add__(self, other: FamilyTotals) -> FamilyTotals:
        if (self.shape, self.indices) != (other.shape, other.indices):
            raise ValueError("cannot add the totals of two different plans")
        return FamilyTotals(self.shape, self.indices, _added([self.sums, other.sums]))

    def values(self, measure: str) -> np.ndarray:
        """The sums of ``measure`` in the family's shape (NaN where nothing was planned)."""
        values = self.sums[measure]
        array = np.full(self.shape + values.shape[1:], np.nan)
        for position, index in enumerate(self.indices):
            array[index] = values[position]
        return array

    def means(self, name: str, count: int, labelled: bool) -> dict[str, np.ndarray]:
        """``<name>_kl``, ``_agreement``, ``_cosine`` and, ``labelled``, ``_accuracy`` (shape + (K,))."""
        measures = (*MEASURES, "correct") if labelled else MEASURES
        return {
            f"{name}_{'accuracy' if measure == 'correct' else measure}": _means(self.values(measure), count)
            for measure in measures
        }


def family_totals(families: dict[str, Family], sums: dict[str, np.ndarray]) -> dict[str, FamilyTotals]:
    """The sums of one pass (every variant of ``families`` in planned order) cut per family."""
    totals, offset = {}, 0
    for name, family in families.items():
        span = slice(offset, offset + len(family.entries))
        indices = [index for index, _ in family.entries]
        totals[name] = FamilyTotals(family.shape, indices, {key: value[span] for key, value in sums.items()})
        offset = span.stop
    return totals


@dataclass
class Plan:
    """What pass 1 (the intact model over all images) gives the ablated passes: the sums of
    the ``statistics`` (``STATISTICS``) over ``count`` images, the intact top-k counts, the
    images skipped, the mean input of each block's ``attn.proj`` (L, T, D) for mean head
    ablation, the similar blocks, and the pruning orders that need no ablation."""

    count: int
    statistics: dict[str, np.ndarray]
    intact_correct: np.ndarray
    has_labels: bool
    skipped: int
    description: str
    labels: str  # where the labels came from, or why there are none
    head_means: np.ndarray | None
    similar: list[int]
    orders: dict[str, np.ndarray]


@dataclass
class Ablation:
    """What ``ablate`` computed, before it becomes an ``AblationResult``: the plan's statistics
    and every family's totals over the same ``count`` images; ``pending``: families a later
    stage adds (``ablation_shards``)."""

    plan: Plan
    totals: dict[str, FamilyTotals]
    orders: dict[str, np.ndarray]
    ks: tuple[int, ...]
    labels: str  # where the labels came from, or why there are none
    computation: dict[str, Any]
    images: dict[str, Any]
    pending: tuple[str, ...] = ()

    def arrays(self) -> dict[str, np.ndarray]:
        count = self.plan.count
        arrays = {name: _means(self.plan.statistics[name], count) for name in STATISTICS}
        for name, totals in self.totals.items():
            arrays.update(totals.means(name, count, bool(self.ks)))
        arrays.update({f"pruning_{name}_order": order.astype(np.int64) for name, order in self.orders.items()})
        return arrays

    def accuracy(self) -> Accuracy:
        if self.ks:
            correct = dict(zip(self.ks, (int(n) for n in self.plan.intact_correct)))
            return Accuracy(self.plan.count, correct, self.labels)
        return Accuracy.unavailable(self.labels or "the model has fewer than two classes")

    def result(
        self, model: dict[str, Any], geometry: Geometry, settings: Settings, heads: str, studies: tuple[str, ...]
    ) -> AblationResult:
        return AblationResult(
            model=model,
            geometry=geometry,
            settings=settings,
            images=self.images,
            num_images=self.plan.count,
            heads=heads,
            studies=studies,
            arrays=self.arrays(),
            accuracy=self.accuracy(),
            similar_blocks=self.plan.similar,
            computation=self.computation,
            pending=self.pending,
        )


class AblationRun:
    """Runs the passes (see the module docstring) and owns every accumulator.

    With ``shard`` (``--shard I/N``, no process group) pass 1 reads every image, so that every
    shard plans from the same full-set numbers, and the ablated passes only the shard's."""

    def __init__(
        self,
        model: nn.Module,
        images: ImageSource,
        settings: Settings,
        studies: Sequence[str],
        heads: str,
        shard: Shard | None = None,
    ):
        check_request(studies, heads)
        self.model, self.images, self.studies, self.heads = model, images, tuple(studies), heads
        self.settings = replace(settings, device=local_device(settings.device)).resolved()
        self.device = self.settings.torch_device
        group = process_group_shard()
        if shard is not None and group is not None:
            raise DiagError("a shard is chosen by the process group already; run --shard without torchrun")
        self.explicit_shard, self.shard = shard, shard or group
        self.runner = BlockRunner(model)
        config = model_input_config(model)
        self.geometry = Geometry.of(model, config["input_size"][1:])
        self.ks: tuple[int, ...] = reported_ks(getattr(model, "num_classes", 0) or 0)
        self.label_note = ""
        self.checked = False
        self.has_labels = False
        dtype = self.settings.dtype
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=TORCH_DTYPES[dtype])) if dtype != "float32" else nullcontext
        )

    @property
    def measures_pruning(self) -> bool:
        """Whether a pruning curve is ordered by the measured single-block costs (a further pass)."""
        return "pruning" in self.studies and "block" in self.studies

    def single_families(self) -> dict[str, Family]:
        return single_ablations(self.runner, self.geometry, self.studies, self.heads)

    def stream(self, every_image: bool = False) -> ImageStream:
        return ImageStream(self.images, [self.model], self.settings, None if every_image else self.shard)

    def batches(self, stream: ImageStream) -> Iterator[tuple[torch.Tensor, Any]]:
        """The images of one pass, on the device, with their labels; the progress advances after each batch."""
        for batch in stream:
            x = batch.images[0].to(self.device, non_blocking=True)
            labels = batch.labels[0]
            yield x, (labels.to(self.device) if labels is not None else None)
            self.passed += len(x)
            self.update(self.passed)
        self.label_note = stream.label_notes[0]  # known once the batches are read (tensor pairs)

    def intact(self, x: torch.Tensor) -> IntactPass:
        with self.autocast():
            intact = self.runner.intact(x)
            if not self.checked:
                self.runner.check(x, intact)
                self.checked = True
        return intact

    @contextmanager
    def running(self, progress: ProgressOption, total: int | None) -> Iterator[None]:
        """The model on the device in eval mode, no autograd, and the progress over ``total`` images."""
        with ExitStack() as stack:
            stack.enter_context(on_device(self.model, self.device))
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(torch.inference_mode())
            label = "ablating" + (f" (shard {self.shard})" if self.shard is not None else "")
            self.update = stack.enter_context(reporting(progress, label, total))
            self.passed = 0  # images through any pass so far, for the progress
            yield

    def run(self, progress: ProgressOption) -> Ablation:
        """Every pass over the images of this process (or process group)."""
        total = self.stream().total
        passes = 3 if self.measures_pruning else 2
        with self.running(progress, None if total is None else passes * total):
            plan = self.plan_pass()
            families = self.planned_families(plan)
            _, sums = self.ablation_pass(families, plan.head_means)
            totals = family_totals(families, sums)
            orders = plan.orders
            if self.measures_pruning:
                orders = {"measured": measured_order(_means(totals["block"].values("kl"), plan.count)), **orders}
                measured = pruning_families({"measured": orders["measured"]})
                totals.update(family_totals(measured, self.ablation_pass(measured, None)[1]))
        computation = {
            "processes": 1 if self.shard is None else self.shard.count,
            "devices": [str(self.device)],
            "passes": passes,
        }
        images = {"description": plan.description, "count": plan.count, "skipped": plan.skipped}
        ks = self.ks if self.has_labels else ()
        return Ablation(plan, totals, orders, ks, plan.labels, computation, images)

    def run_shard(self, progress: ProgressOption) -> tuple[Plan, int, dict[str, FamilyTotals], ImageStream]:
        """Stage 1 of ``--shard``: the plan from every image, the ablations (all but the measured
        pruning order) of the shard's images: the plan, the shard's image count and totals, and its stream."""
        own = self.stream()
        with self.running(progress, self.stream(every_image=True).total + own.total):
            plan = self.plan_pass()
            families = self.planned_families(plan)
            count, sums = self.ablation_pass(families, plan.head_means, own)
        return plan, count, family_totals(families, sums), own

    def run_measured_pruning(
        self, order: np.ndarray, labelled: bool, progress: ProgressOption
    ) -> tuple[int, dict[str, FamilyTotals], ImageStream]:
        """Stage 2 of ``--shard``: the pruning curve of the measured ``order`` on the shard's images."""
        own = self.stream()
        self.has_labels = labelled
        families = pruning_families({"measured": order})
        with self.running(progress, own.total):
            count, sums = self.ablation_pass(families, None, own)
        return count, family_totals(families, sums), own

    def planned_families(self, plan: Plan) -> dict[str, Family]:
        """Every family the plan decides: the single ablations, the similar blocks together and
        the pruning curves by similarity ratio and by Block Influence."""
        families = self.single_families()
        if plan.similar:
            families["similar"] = Family((1,), [((0,), removal(plan.similar))])
        if "pruning" in self.studies:
            families.update(pruning_families(plan.orders))
        return families

    def plan_pass(self) -> Plan:
        """Pass 1: sums of the similarity ratio (maps as ``settings.maps``), cross-head
        similarity, Block Influence and (for mean head ablation) each block's input of
        ``attn.proj``, and the intact top-k counts; of all processes' images (of every image
        for ``--shard``), and what they decide."""
        settings = self.settings
        count = 0
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros(len(self.ks), dtype=torch.int64, device=self.device)
        head_sums = "head" in self.studies and self.heads == "mean"
        stream = self.stream(every_image=self.explicit_shard is not None)
        with ExitStack() as stack:
            recorder = stack.enter_context(AttentionRecorder(self.model, hidden=False))
            proj_inputs: list[torch.Tensor | None] = [None] * self.runner.num_blocks
            if head_sums:
                for index, attn in enumerate(self.runner.attns):
                    stack.callback(attn.proj.register_forward_pre_hook(_keeper(proj_inputs, index)).remove)
            for x, labels in self.batches(stream):
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
        gathered = gather((count, host, correct.cpu().numpy(), self.has_labels, stream.skipped))
        self.has_labels = any(part[3] for part in gathered)
        count = sum(part[0] for part in gathered)
        if count == 0:
            raise DiagError("no images to ablate")
        present = [part[1] for part in gathered if part[1]]
        totals = _added(present) if present else {}
        means = totals.pop("head_sums", None)
        ratio = _means(totals["ratio"], count)
        orders = {}
        if "pruning" in self.studies:
            orders = known_orders(ratio, _means(totals["block_influence"], count))
        return Plan(
            count=count,
            statistics=totals,
            intact_correct=sum(part[2] for part in gathered),
            has_labels=self.has_labels,
            skipped=sum(part[4] for part in gathered) + stream.open_skipped,  # refused at opening: counted once
            description=stream.description,
            labels=self.label_note,
            head_means=None if means is None else _means(means, count),
            similar=similar_blocks(torch.from_numpy(ratio), settings.rho).indices,
            orders=orders,
        )

    def ablation_pass(
        self, families: dict[str, Family], head_means: np.ndarray | None, stream: ImageStream | None = None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Every variant of ``families`` on every image of ``stream`` (default: this process's);
        the image count and the sums, of all processes, in planned order."""
        variants = [variant for family in families.values() for _, variant in family.entries]
        groups = _groups(variants)
        sums = VariantSums(len(variants), self.ks, self.device)
        means = None if head_means is None else torch.from_numpy(head_means).to(self.device)
        count = 0
        for x, labels in self.batches(stream or self.stream()):
            intact = self.intact(x)
            for first, group in groups:
                with self.autocast():
                    ablated = self.runner.run_variants(intact, group, means)
                sums.add(first, intact.outputs, ablated, labels if self.has_labels else None)
            count += len(x)
        gathered = gather((count, sums.host()))
        return sum(part[0] for part in gathered), _added([part[1] for part in gathered])


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
    shard of the images and every process gets the result of all images. Separate runs
    (``--shard I/N``) are ``ablation_shards.ablate_shard`` and ``merge``.

    Example:
        >>> abl = dd.ablate(dd.load_model("vit32"), "digits-clutter-test", studies=["block"], num_images=64)
        >>> abl.values("block", "kl")  # (L,) mean KL of each block's removal from the intact model
    """
    settings = Settings.with_overrides(settings, overrides)
    run = AblationRun(model, images, settings, studies, heads)
    if not is_reporting_process():
        progress = False
    done = run.run(progress)
    model_info = ModelStatistics(model, run.settings).model_info()
    return done.result(model_info, run.geometry, run.settings, heads, run.studies)
