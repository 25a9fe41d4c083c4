"""The sums an analysis adds up, and the results they make.

Every number of an ``AnalysisResult`` is computed from a ``Tally``: per model the metric
values summed over the images (``catalogue.Metric.measure`` gives per-image means of a
batch; times the batch size they add up), the top-k correct counts and the first example
images; across the models the CKA's summed minibatch HSIC; and the image counts. Tallies
of disjoint shards of one image list add up (``+``) to the tally of the whole list, which
is how processes of a process group and ``deepvit-diag merge`` combine their work
(``deepvit_diag.distributed``). ``results`` turns a tally into results.

On disk a shard of an analysis is ``tally.npz`` (the sums) and ``shard.json`` (what the
analysis was: ``ShardRecord``) in its ``--out`` folder; ``merge_shards`` adds them up.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .archives import read_npz
from .distributed import Shard
from .errors import DiagError
from .introspection import Geometry
from .jsonfiles import check_depth
from .manifest import check_unit
from .metrics import MIN_UNBIASED_EXAMPLES, Accuracy, cka_from_hsic
from .results import AnalysisResult, ComparisonResult, is_zip_archive, jsonable
from .settings import Settings
from .shard_checks import check_arrays, check_counts

TALLY_FILE = "tally.npz"
CKA_KEYS = ("a", "b")  # the CKA of model 0 and model 1 with themselves; "ab" across them


def _add_arrays(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Key by key sums; a key only one side has (an empty shard has none) is taken as it is."""
    return {
        key: first[key] + second[key] if key in first and key in second else first.get(key, second.get(key))
        for key in {**first, **second}
    }


@dataclass
class ModelTally:
    """One model's sums over the images of an analysis or of a shard of it.

    Attributes:
        sums: array name -> per-image values summed over the images (float64).
        correct: k -> images whose label is among the k largest logits.
        problem: why this model's labels cannot be counted, once known (no classifier, ...).
        examples: ``example_images`` and ``example_cls_<kind>``, the first images, in order.
    """

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    correct: dict[int, int] = field(default_factory=dict)
    problem: str | None = None
    examples: dict[str, np.ndarray] = field(default_factory=dict)

    def __add__(self, other: ModelTally) -> ModelTally:
        examples = {
            key: np.concatenate([self.examples[key], other.examples[key]])
            if key in self.examples and key in other.examples
            else self.examples.get(key, other.examples.get(key))
            for key in {**self.examples, **other.examples}
        }
        correct = {k: self.correct.get(k, 0) + other.correct.get(k, 0) for k in {**self.correct, **other.correct}}
        return ModelTally(_add_arrays(self.sums, other.sums), correct, self.problem or other.problem, examples)


@dataclass
class Tally:
    """Everything an analysis sums, for one or two models (see the module docstring).

    Attributes:
        count: images measured.
        models: one ``ModelTally`` per model.
        hsic: ``MinibatchCKA.hsic_totals`` as float64 arrays ("a", and "b", "ab" for two models).
        skipped: images that failed to decode while they were streamed.
        open_skipped: files refused when the whole image source was opened; every shard of a
            source has the same number, so adding keeps one of them.
    """

    count: int
    models: list[ModelTally]
    hsic: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: int = 0
    open_skipped: int = 0

    def __add__(self, other: Tally) -> Tally:
        if len(self.models) != len(other.models):
            raise DiagError(f"cannot add the sums of {len(self.models)} and of {len(other.models)} models")
        return Tally(
            self.count + other.count,
            [first + second for first, second in zip(self.models, other.models)],
            _add_arrays(self.hsic, other.hsic),
            self.skipped + other.skipped,
            max(self.open_skipped, other.open_skipped),
        )

    # ----------------------------------------------------------------------------- files

    def save(self, folder: Path, extra: dict[int, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
        """Write ``folder/tally.npz`` (with ``extra``: more arrays per model, e.g. those read
        from its weights); returns the counts for a JSON record."""
        arrays = {f"hsic/{key}": value for key, value in self.hsic.items()}
        for index, model in enumerate(self.models):
            arrays.update({f"{index}/sums/{name}": value for name, value in model.sums.items()})
            arrays.update({f"{index}/examples/{name}": value for name, value in model.examples.items()})
            arrays.update({f"{index}/extra/{name}": value for name, value in (extra or {}).get(index, {}).items()})
        np.savez_compressed(folder / TALLY_FILE, **arrays)
        return {
            "count": self.count,
            "skipped": self.skipped,
            "open_skipped": self.open_skipped,
            "models": [
                {"correct": {str(k): n for k, n in m.correct.items()}, "problem": m.problem} for m in self.models
            ],
        }

    @classmethod
    def load(cls, folder: Path, counts: dict[str, Any]) -> tuple[Tally, list[dict[str, np.ndarray]]]:
        """A tally, and each model's extra arrays, from ``folder/tally.npz`` and the counts
        ``save`` returned."""
        try:
            arrays = read_npz(folder / TALLY_FILE)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DiagError(f"{folder / TALLY_FILE} is missing or damaged ({type(err).__name__}: {err})") from None
        models = [
            ModelTally(
                sums=_section(arrays, f"{index}/sums/"),
                correct={int(k): int(n) for k, n in model["correct"].items()},
                problem=model["problem"],
                examples=_section(arrays, f"{index}/examples/"),
            )
            for index, model in enumerate(counts["models"])
        ]
        extra = [_section(arrays, f"{index}/extra/") for index in range(len(models))]
        tally = cls(counts["count"], models, _section(arrays, "hsic/"), counts["skipped"], counts["open_skipped"])
        return tally, extra


def _section(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name.removeprefix(prefix): value for name, value in arrays.items() if name.startswith(prefix)}


@dataclass
class ModelParts:
    """What a model's results need besides the sums: who it is, its geometry, the arrays
    read from its weights (Theta) and where its labels came from (or why there are none)."""

    model: dict[str, Any]
    geometry: Geometry
    weight_arrays: dict[str, np.ndarray]
    labels: str


def results(
    tally: Tally, parts: list[ModelParts], settings: Settings, images: dict[str, Any], computation: dict[str, Any]
) -> tuple[list[AnalysisResult], np.ndarray | None]:
    """One result per model from a tally, and the cross-model CKA (L_A, L_B) for two."""
    if tally.count == 0:
        raise DiagError(f"no images to analyse in {images['description']}")
    cka = _cka_matrices(tally, [part.geometry.num_blocks for part in parts])
    made = []
    for index, (model, part) in enumerate(zip(tally.models, parts)):
        means = {name: (total / tally.count).astype(np.float32) for name, total in model.sums.items()}
        examples = {name: value[: settings.num_examples] for name, value in model.examples.items()}
        if model.problem is None and model.correct:
            accuracy = Accuracy(tally.count, dict(sorted(model.correct.items())), part.labels)
        else:
            accuracy = Accuracy.unavailable(model.problem or part.labels)
        made.append(
            AnalysisResult(
                model=part.model,
                geometry=part.geometry,
                settings=settings,
                images=images,
                num_images=tally.count,
                arrays={**means, **examples, **part.weight_arrays, "cka": cka[CKA_KEYS[index]]},
                computation=computation,
                accuracy=accuracy,
            )
        )
    return made, cka.get("ab")


def _cka_matrices(tally: Tally, depths: list[int]) -> dict[str, np.ndarray]:
    """{"a"} or {"a", "b", "ab"}; NaN when there are too few images for the unbiased HSIC."""
    if tally.count < MIN_UNBIASED_EXAMPLES or not tally.hsic:
        shapes = {"a": (depths[0], depths[0])}
        if len(depths) == 2:
            shapes.update(b=(depths[1], depths[1]), ab=(depths[0], depths[1]))
        return {key: np.full(shape, np.nan, dtype=np.float32) for key, shape in shapes.items()}
    totals = {key: torch.from_numpy(value) for key, value in tally.hsic.items()}
    return {key: matrix.numpy() for key, matrix in cka_from_hsic(totals).items()}


def combined_computation(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """How processes or shards computed together (each ``{"final_batch_size", "processes",
    "devices"}``): the smallest batch size any ended with, all processes, all devices."""
    return {
        "final_batch_size": min(part["final_batch_size"] for part in parts),
        "processes": sum(part["processes"] for part in parts),
        "devices": [device for part in parts for device in part["devices"]],
    }


# ----------------------------------------------------------------------------- shards on disk

SHARD_FILE = "shard.json"
SHARD_FORMAT = "deepvit-diag shard"
SHARD_VERSION = 1
# Settings that may differ between the shards of one analysis: they change how, not what, it computes.
RUN_ONLY_SETTINGS = ("device", "num_workers", "batch_size")


@dataclass
class ShardRecord:
    """Everything about a shard of an analysis besides its sums: with its ``Tally`` it is all
    ``merge_shards`` needs (a shard that holds no images has no result of its own).

    Attributes:
        shard: which shard, e.g. ``1/4``.
        images: the whole image list: ``description``, ``total`` (images before cutting)
            and ``fingerprint`` (a hash of its names, or of a tensor's bytes).
        settings: the analysis settings.
        models: each model's ``ModelParts`` (identity, geometry, weight arrays, label source).
        weights: the sha256 of each model's weights (``distributed.weights_sha256``).
        computation: how the shard was computed (``combined_computation``'s form).
    """

    shard: Shard
    images: dict[str, Any]
    settings: Settings
    models: list[ModelParts]
    weights: list[str]
    computation: dict[str, Any]


def save_shard(folder: Path, tally: Tally, record: ShardRecord, report_labels: list[str]) -> None:
    """Write ``shard.json`` (the record, the counts, the models' report labels) and
    ``tally.npz`` (the sums and the arrays read from the weights)."""
    counts = tally.save(folder, {index: part.weight_arrays for index, part in enumerate(record.models)})
    document = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "shard": str(record.shard),
        "images": record.images,
        "settings": record.settings.to_dict(),
        "models": [
            {"model": part.model, "geometry": part.geometry.to_dict(), "labels": part.labels} for part in record.models
        ],
        "weights": record.weights,
        "computation": record.computation,
        "report_labels": report_labels,
        "tally": counts,
    }
    (folder / SHARD_FILE).write_text(json.dumps(jsonable(document), indent=2), encoding="utf-8")


def is_shard_file(path: Path) -> bool:
    """A ``shard.json`` or ``tally.npz`` as ``save_shard`` writes them (what ``--out`` may replace)."""
    if path.name == TALLY_FILE:
        return is_zip_archive(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8")) if path.name == SHARD_FILE else None
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == SHARD_FORMAT


@dataclass
class SavedShard:
    """A shard's folder as ``--shard`` wrote it."""

    folder: Path
    record: ShardRecord
    report_labels: list[str]
    tally: Tally


def read_shard(folder: Path) -> SavedShard:
    path = folder / SHARD_FILE
    try:
        text = path.read_text(encoding="utf-8")
        check_depth(text, str(path))
        document = json.loads(text)
    except OSError as err:
        raise DiagError(f"{folder} is not a shard of an analysis (no readable {SHARD_FILE}: {err.strerror})") from None
    except ValueError as err:
        raise DiagError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(document, dict) or document.get("format") != SHARD_FORMAT:
        raise DiagError(f"{path} is not a deepvit-diag shard record")
    check_counts(path, document)
    check_unit(folder, (SHARD_FILE, TALLY_FILE))
    try:
        tally, weight_arrays = Tally.load(folder, document["tally"])
        models = [
            ModelParts(entry["model"], Geometry.from_dict(entry["geometry"]), weight_arrays[index], entry["labels"])
            for index, entry in enumerate(document["models"])
        ]
        if len(models) != len(tally.models):
            raise DiagError(f"{path}: {len(models)} models, but tally counts for {len(tally.models)}")
        check_arrays(
            folder / TALLY_FILE,
            tally.count,
            [part.geometry for part in models],
            [model.sums for model in tally.models],
            [model.examples for model in tally.models],
            tally.hsic,
        )
        record = ShardRecord(
            Shard.parse(document["shard"]),
            document["images"],
            Settings.from_dict(document["settings"]),
            models,
            document["weights"],
            document["computation"],
        )
        return SavedShard(folder, record, document["report_labels"], tally)
    except (KeyError, TypeError, IndexError) as err:
        raise DiagError(f"{path} is incomplete or malformed ({type(err).__name__}: {err})") from None


def merge_shards(folders: list[Path]) -> tuple[AnalysisResult | ComparisonResult, list[str]]:
    """The result one run over all images gives, from the folders of its ``--shard i/n`` runs,
    and the models' report labels. Refuses (``DiagError``) shards of different models,
    settings or image lists, and missing or repeated shards."""
    shards = [read_shard(Path(folder)) for folder in folders]
    count = shards[0].record.shard.count
    seen: dict[int, Path] = {}
    for shard in shards:
        _check_same_analysis(shards[0], shard)
        index = shard.record.shard.index
        if index in seen:
            raise DiagError(f"shard {shard.record.shard} is given twice: {seen[index]} and {shard.folder}")
        seen[index] = shard.folder
    missing = [f"{index}/{count}" for index in range(count) if index not in seen]
    if missing:
        raise DiagError(f"shards {', '.join(missing)} are missing (give the --out folders of all {count} shards)")
    shards.sort(key=lambda shard: shard.record.shard.index)
    total = sum((shard.tally for shard in shards[1:]), shards[0].tally)
    first = shards[0].record
    images = {
        "description": first.images["description"],
        "count": total.count,
        "skipped": total.skipped + total.open_skipped,
    }
    computation = {**combined_computation([shard.record.computation for shard in shards]), "shards": count}
    made, cka_ab = results(total, first.models, first.settings, images, computation)
    merged = ComparisonResult(*made, cka_ab) if len(made) == 2 else made[0]
    return merged, shards[0].report_labels


def _check_same_analysis(first: SavedShard, other: SavedShard) -> None:
    """One line naming what differs between two shards that must belong to one analysis."""
    mine, theirs = first.record, other.record
    where = f"{other.folder} and {first.folder}"
    if theirs.shard.count != mine.shard.count:
        raise DiagError(f"{where} are shards of {theirs.shard.count} and of {mine.shard.count}")
    if theirs.weights != mine.weights or [p.geometry for p in theirs.models] != [p.geometry for p in mine.models]:
        raise DiagError(f"{where} are shards of different models (their weights differ)")
    for key in ("total", "fingerprint"):
        if theirs.images.get(key) != mine.images.get(key):
            raise DiagError(f"{where} are shards of different image lists")
    settings = {k: v for k, v in mine.settings.to_dict().items() if k not in RUN_ONLY_SETTINGS}
    other_settings = {k: v for k, v in theirs.settings.to_dict().items() if k not in RUN_ONLY_SETTINGS}
    if settings != other_settings:
        differing = sorted(k for k in settings if settings[k] != other_settings[k])
        raise DiagError(f"{where} were analysed with different settings ({', '.join(differing)})")
