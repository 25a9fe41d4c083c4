"""Ablations split into separate runs (``ablate --shard I/N``) and added up by ``deepvit-diag merge``
into the numbers one run over all images gives.

An ablation plans from every image before it ablates any: mean head ablation puts in a head's
mean output over all images, and the similar blocks and the pruning orders by similarity ratio
and by Block Influence come from the whole set's ratios and influences (``ablation.Plan``); the
pruning curve in the measured order needs every block's removal cost over all images. Two
stages give exactly the single run's numbers:

1. ``ablate --shard I/N``, N runs: each first runs the intact model over *every* image (pass 1:
   one forward pass with the maps per image, what ``analyze`` costs, next to the hundreds of
   ablated passes per image of the shard), so every shard plans alike, then ablates its own
   images. ``merge`` checks that the N shards made the same plan (the same similar blocks and
   orders, image and top-k counts; statistics and head means equal up to rounding), adds their
   sums and writes the result. That result is complete unless the studies hold both ``block``
   and ``pruning``: then the curve in the measured order is still to come
   (``AblationResult.pending``).
2. ``ablate --pruning-from MERGED --shard I/N``, N runs: the curve in the measured order of
   MERGED's block removals on the shard's images. Each shard carries MERGED's result, and
   ``merge`` of these N folders writes the complete result.

A shard folder holds ``shard.json`` (``format`` "deepvit-diag ablation shard": the stage, what
was ablated, the plan, the families' layout) and ``tally.npz`` (the sums). ``merge`` refuses
shards of different stages, models, image lists, settings, studies or plans
(``shard_checks.check_same_ablation``) and numbers no run can give (``shard_checks.check_ablation_shard``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .ablation import STATISTICS, Ablation, AblationRun, FamilyTotals, Plan, measured_order
from .ablation_result import AblationResult
from .analysis import ModelStatistics
from .choices import STUDIES
from .distributed import Shard, weights_sha256
from .errors import DiagError
from .formats import jsonable, read_arrays, read_document, written_by_us
from .images import ImageSource
from .introspection import Geometry
from .manifest import check_unit
from .progress import ProgressOption
from .settings import Settings
from .shard_checks import check_ablation_shard, check_same_ablation, differing_settings
from .shards import SHARD_FILE, TALLY_FILE

ABLATION_SHARD_FORMAT = "deepvit-diag ablation shard"
ABLATION_SHARD_VERSION = 1
ABLATIONS_STAGE = "ablations"  # stage 1
MEASURED_PRUNING_STAGE = "measured pruning"  # stage 2
MEASURED = "pruning_measured"


@dataclass
class AblationShard:
    """One shard of an ablation: ``document`` (``shard.json``) and ``arrays`` (``tally.npz``:
    ``statistics/<name>`` and ``head_means`` of the plan, ``families/<family>/<measure>``, and
    in stage 2 ``base/<name>``, the arrays of the merged first stage)."""

    document: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def shard(self) -> Shard:
        return Shard.parse(self.document["shard"])

    @property
    def count(self) -> int:
        """Images this shard ablated."""
        return int(self.document["count"])

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/shard.json`` and ``folder/tally.npz``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SHARD_FILE).write_text(json.dumps(jsonable(self.document), indent=2, allow_nan=False))
        np.savez_compressed(folder / TALLY_FILE, **self.arrays)
        return folder

    def totals(self) -> dict[str, FamilyTotals]:
        return {
            name: FamilyTotals(
                tuple(layout["shape"]),
                [tuple(index) for index in layout["indices"]],
                {
                    key.rsplit("/", 1)[1]: value
                    for key, value in self.arrays.items()
                    if key.startswith(f"families/{name}/")
                },
            )
            for name, layout in self.document["families"].items()
        }

    def base(self) -> AblationResult:
        """Stage 2: the merged first stage it completes."""
        arrays = {key.removeprefix("base/"): value for key, value in self.arrays.items() if key.startswith("base/")}
        return AblationResult.from_document(self.document["base"], arrays)


def is_ablation_shard_file(path: Path) -> bool:
    """A ``shard.json`` or ``tally.npz`` of an ablation shard (what ``--out`` may replace)."""
    return written_by_us(path, {SHARD_FILE: (ABLATION_SHARD_FORMAT,)}, (TALLY_FILE,))


def is_ablation_shard(folder: Path) -> bool:
    """Whether ``folder`` holds a shard of an ablation (rather than of an analysis)."""
    return written_by_us(folder / SHARD_FILE, {SHARD_FILE: (ABLATION_SHARD_FORMAT,)})


def result_sha256(result: AblationResult) -> str:
    """A fingerprint of a result's document and arrays: the shards of stage 2 must complete the same
    one. Not of the package versions the document names: those of the machine that writes it."""
    document = {key: value for key, value in result.to_document().items() if key != "versions"}
    digest = hashlib.sha256(json.dumps(jsonable(document), sort_keys=True).encode())
    for name in sorted(result.arrays):
        values = np.ascontiguousarray(result.arrays[name])
        digest.update(f"{name}:{values.dtype}:{values.shape};".encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def ablate_shard(
    model: nn.Module,
    images: ImageSource,
    settings: Settings | None = None,
    *,
    shard: Shard | str,
    studies: Sequence[str] = STUDIES,
    heads: str = "mean",
    pruning_from: AblationResult | None = None,
    progress: ProgressOption = False,
    **overrides: Any,
) -> AblationShard:
    """Shard ``shard`` (e.g. ``"1/4"``) of ``ablate(model, images, ...)``, for ``merge``: stage 1,
    or, with ``pruning_from`` (the merged stage 1), stage 2 (see the module docstring).
    In stage 2 the studies and head mode are those of ``pruning_from``."""
    settings = Settings.with_overrides(settings, overrides)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    if pruning_from is not None:
        studies, heads = pruning_from.studies, pruning_from.heads
    run = AblationRun(model, images, settings, studies, heads, shard)
    document: dict[str, Any] = {
        "format": ABLATION_SHARD_FORMAT,
        "version": ABLATION_SHARD_VERSION,
        "shard": str(shard),
        "settings": run.settings.to_dict(),
        "studies": list(run.studies),
        "heads": heads,
        "model": ModelStatistics(model, run.settings).model_info(),
        "geometry": run.geometry.to_dict(),
        "weights": weights_sha256(model),
    }
    if pruning_from is None:
        plan, count, totals, stream = run.run_shard(progress)
        arrays = {f"statistics/{name}": plan.statistics[name] for name in STATISTICS}
        if plan.head_means is not None:
            arrays["head_means"] = plan.head_means
        document.update(
            stage=ABLATIONS_STAGE,
            plan={
                "count": plan.count,
                "skipped": plan.skipped,
                "intact_correct": plan.intact_correct.tolist() if plan.has_labels else [],
                "similar": plan.similar,
                "orders": {name: order.tolist() for name, order in plan.orders.items()},
            },
            ks=list(run.ks if plan.has_labels else ()),
            labels=plan.labels,
        )
        passes = 2
    else:
        _check_base(pruning_from, document, run)
        order = measured_order(pruning_from.values("block", "kl"))
        count, totals, stream = run.run_measured_pruning(order, pruning_from.accuracy.available, progress)
        arrays = {f"base/{name}": values for name, values in pruning_from.arrays.items()}
        document.update(
            stage=MEASURED_PRUNING_STAGE,
            base=pruning_from.to_document(),
            base_sha256=result_sha256(pruning_from),
            ks=list(run.ks if pruning_from.accuracy.available else ()),
        )
        passes = 1
    document.update(
        images=stream.whole,
        count=count,
        families={
            name: {"shape": list(t.shape), "indices": [list(i) for i in t.indices]} for name, t in totals.items()
        },
        computation={"processes": 1, "devices": [str(run.device)], "passes": passes},
    )
    width = len(document["ks"])  # without labels no top-k is counted
    for name, family in totals.items():
        sums = {**family.sums, "correct": family.sums["correct"][:, :width]}
        arrays.update({f"families/{name}/{measure}": values for measure, values in sums.items()})
    return AblationShard(jsonable(document), arrays)


def _check_base(base: AblationResult, document: dict[str, Any], run: AblationRun) -> None:
    """Stage 2 completes ``base`` only with its model, images and settings."""
    if MEASURED not in base.pending:
        raise DiagError(
            "--pruning-from needs the merge of the first stage of --shard runs whose measured pruning order is "
            "still to come (studies block and pruning); this result has nothing pending"
        )
    if base.computation.get("weights_sha256") != document["weights"]:
        raise DiagError("--pruning-from: the merged result is of a model with other weights")
    whole = run.stream().whole
    if {key: base.images.get(key) for key in ("total", "fingerprint")} != {
        key: whole.get(key) for key in ("total", "fingerprint")
    }:
        raise DiagError("--pruning-from: the merged result is of another image list; give the same images")
    differing = differing_settings(base.settings.to_dict(), run.settings.to_dict())
    if differing:
        raise DiagError(f"--pruning-from: the merged result was ablated with other settings ({', '.join(differing)})")


def read_ablation_shard(folder: Path) -> AblationShard:
    """A shard folder ``ablate --shard`` wrote, its numbers checked (``shard_checks.check_ablation_shard``)."""
    path = folder / SHARD_FILE
    document = read_document(path, ABLATION_SHARD_FORMAT, "is not a shard of an ablation")
    check_unit(folder, (SHARD_FILE, TALLY_FILE))
    arrays = read_arrays(folder / TALLY_FILE)
    shard = AblationShard(document, arrays)
    try:
        check_ablation_shard(path, document, arrays)
        if shard.document["stage"] == MEASURED_PRUNING_STAGE and result_sha256(shard.base()) != document["base_sha256"]:
            raise DiagError(f"{path}: the merged first stage it carries was changed since the shard was written")
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise DiagError(f"{path} is incomplete or malformed ({type(err).__name__}: {err})") from None
    return shard


def merge_ablation_shards(folders: Sequence[Path]) -> AblationResult:
    """The result one ``ablate`` over all images gives (or its first stage, ``pending`` the
    measured pruning order), from the folders of its ``--shard I/N`` runs of one stage."""
    folders = [Path(folder) for folder in folders]
    shards = [read_ablation_shard(folder) for folder in folders]
    first = shards[0]
    seen: dict[int, Path] = {}
    for folder, shard in zip(folders, shards):
        check_same_ablation(folders[0], first.document, first.arrays, folder, shard.document, shard.arrays)
        index = shard.shard.index
        if index in seen:
            raise DiagError(f"shard {shard.shard} is given twice: {seen[index]} and {folder}")
        seen[index] = folder
    count = first.shard.count
    missing = [str(Shard(index, count)) for index in range(count) if index not in seen]
    if missing:
        raise DiagError(f"shards {', '.join(missing)} are missing (give the --out folders of all {count} shards)")
    shards.sort(key=lambda shard: shard.shard.index)
    totals = shards[0].totals()
    for shard in shards[1:]:
        totals = {name: family + shard.totals()[name] for name, family in totals.items()}
    ablated = sum(shard.count for shard in shards)
    computation = {
        "processes": len(shards),
        "devices": [device for shard in shards for device in shard.document["computation"]["devices"]],
        "shards": count,
        "weights_sha256": first.document["weights"],
    }
    if first.document["stage"] == MEASURED_PRUNING_STAGE:
        return _completed(first.base(), totals[MEASURED], ablated, computation)
    plan_record = first.document["plan"]
    if ablated != plan_record["count"]:
        raise DiagError(f"the shards ablated {ablated} images, but planned from {plan_record['count']}")
    plan = Plan(
        count=plan_record["count"],
        statistics={name: first.arrays[f"statistics/{name}"] for name in STATISTICS},
        intact_correct=np.array(plan_record["intact_correct"], dtype=np.int64),
        has_labels=bool(first.document["ks"]),
        skipped=plan_record["skipped"],
        description=first.document["images"]["description"],
        labels=first.document["labels"],
        head_means=None,
        similar=[int(block) for block in plan_record["similar"]],
        orders={name: np.array(order, dtype=np.int64) for name, order in plan_record["orders"].items()},
    )
    studies = tuple(first.document["studies"])
    pending = (MEASURED,) if "block" in studies and "pruning" in studies else ()
    images = {
        **first.document["images"],
        "count": plan.count,
        "skipped": plan.skipped,
    }
    done = Ablation(
        plan,
        totals,
        plan.orders,
        tuple(first.document["ks"]),
        first.document["labels"],
        {**computation, "passes": 2},
        images,
        pending,
    )
    return done.result(
        first.document["model"],
        Geometry.from_dict(first.document["geometry"]),
        Settings.from_dict(first.document["settings"]),
        first.document["heads"],
        studies,
    )


def _completed(base: AblationResult, measured: FamilyTotals, ablated: int, computation: dict) -> AblationResult:
    """``base`` (the merged first stage) with the pruning curve in the measured order added."""
    if ablated != base.num_images:
        raise DiagError(f"the shards ablated {ablated} images, but the first stage {base.num_images}")
    arrays = {
        **base.arrays,
        **measured.means(MEASURED, ablated, base.accuracy.available),
        f"{MEASURED}_order": measured_order(base.values("block", "kl")).astype(np.int64),
    }
    computation = {**computation, "passes": base.computation.get("passes", 2) + 1}
    return replace(base, arrays=arrays, pending=(), computation=computation)
