"""The shard format: what ``--shard i/n`` writes into its ``--out`` folder (``shard.json``,
the record and counts, and ``tally.npz``, the sums) and how ``merge`` puts shards back
together into the result one run over all images gives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .distributed import Shard
from .errors import DiagError
from .formats import read_arrays, read_document, write_document, written_by_us
from .introspection import Geometry
from .manifest import check_unit
from .results import AnalysisResult, ComparisonResult
from .settings import Settings
from .shard_checks import check_arrays, check_counts, differing_settings
from .tally import ModelParts, ModelTally, Tally, build_results, combined_computation

TALLY_FILE = "tally.npz"
SHARD_FILE = "shard.json"
SHARD_FORMAT = "deepvit-diag shard"
SHARD_VERSION = 1


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
    counts = save_tally(folder, tally, {index: part.weight_arrays for index, part in enumerate(record.models)})
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
    write_document(folder / SHARD_FILE, document)


def is_shard_file(path: Path) -> bool:
    """A ``shard.json`` or ``tally.npz`` as ``save_shard`` writes them (what ``--out`` may replace)."""
    return written_by_us(path, {SHARD_FILE: (SHARD_FORMAT,)}, (TALLY_FILE,))


@dataclass
class SavedShard:
    """A shard's folder as ``--shard`` wrote it."""

    folder: Path
    record: ShardRecord
    report_labels: list[str]
    tally: Tally


def read_shard(folder: Path) -> SavedShard:
    path = folder / SHARD_FILE
    document = read_document(path, SHARD_FORMAT, "is not a shard of an analysis")
    check_counts(path, document)
    check_unit(folder, (SHARD_FILE, TALLY_FILE))
    try:
        tally, weight_arrays = load_tally(folder, document["tally"])
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
    missing = [str(Shard(index, count)) for index in range(count) if index not in seen]
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
    made, cka_ab = build_results(total, first.models, first.settings, images, computation)
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
    differing = differing_settings(mine.settings.to_dict(), theirs.settings.to_dict())
    if differing:
        raise DiagError(f"{where} were analysed with different settings ({', '.join(differing)})")


def save_tally(folder: Path, tally: Tally, extra: dict[int, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Write ``folder/tally.npz`` (with ``extra``: more arrays per model, e.g. those read
    from its weights); returns the counts for a JSON record."""
    arrays = {f"hsic/{key}": value for key, value in tally.hsic.items()}
    for index, model in enumerate(tally.models):
        arrays.update({f"{index}/sums/{name}": value for name, value in model.sums.items()})
        arrays.update({f"{index}/examples/{name}": value for name, value in model.examples.items()})
        arrays.update({f"{index}/extra/{name}": value for name, value in (extra or {}).get(index, {}).items()})
    np.savez_compressed(folder / TALLY_FILE, **arrays)
    return {
        "count": tally.count,
        "skipped": tally.skipped,
        "open_skipped": tally.open_skipped,
        "models": [{"correct": {str(k): n for k, n in m.correct.items()}, "problem": m.problem} for m in tally.models],
    }


def load_tally(folder: Path, counts: dict[str, Any]) -> tuple[Tally, list[dict[str, np.ndarray]]]:
    """A tally, and each model's extra arrays, from ``folder/tally.npz`` and the counts
    ``save_tally`` returned."""
    arrays = read_arrays(folder / TALLY_FILE)
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
    tally = Tally(counts["count"], models, _section(arrays, "hsic/"), counts["skipped"], counts["open_skipped"])
    return tally, extra


def _section(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name.removeprefix(prefix): value for name, value in arrays.items() if name.startswith(prefix)}
