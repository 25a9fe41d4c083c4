"""What ``merge`` checks in a shard before adding it: every number it would add.

A shard's ``shard.json`` and ``tally.npz`` are files a user can edit or a failing disk can damage, and
added up they make the merged result. Refused, with one line naming the shard's file and the field:
an unknown format version; counts that are not whole numbers >= 0; more correct answers than images;
a sum of an unknown name, of the wrong shape for the declared geometry (blocks L, heads H) or type,
with a NaN or infinity, outside the range its metric allows, or missing where the shard has images (shapes and
ranges are those the catalogue's entries declare: ``catalogue.Sum``, so every metric's sums are checked);
a similarity sum whose diagonal (every block against itself: 1 per image) does not count the images;
example arrays of more images than the shard holds; CKA totals of the wrong shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .catalogue import LN_TOKENS, Sum, summed_arrays
from .errors import DiagError
from .introspection import Geometry
from .metrics import TOP_K

SHARD_VERSIONS = (1,)
_SLACK = 1e-4  # float32 per-image values summed in float64


def _count(document: Any, field: str, path: Path) -> int:
    value = document.get(field) if isinstance(document, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DiagError(f"{path}: tally field {field!r} must be a whole number >= 0, got {value!r}")
    return value


def check_counts(path: Path, document: dict[str, Any]) -> None:
    """The version and the counts of ``shard.json`` (before its arrays are read)."""
    version = document.get("version")
    if version not in SHARD_VERSIONS:
        raise DiagError(f"{path}: format version {version!r} is not one this deepvit-diag reads (1)")
    counts = document.get("tally")
    if not isinstance(counts, dict):
        raise DiagError(f"{path}: field 'tally' must be an object")
    count = _count(counts, "count", path)
    _count(counts, "skipped", path)
    _count(counts, "open_skipped", path)
    models = counts.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise DiagError(f"{path}: tally field 'models' must be a list of objects")
    for index, model in enumerate(models):
        correct = model.get("correct")
        if not isinstance(correct, dict):
            raise DiagError(f"{path}: tally field models[{index}].correct must be an object")
        for k, n in correct.items():
            if k not in {str(top) for top in TOP_K}:
                raise DiagError(f"{path}: tally field models[{index}].correct has an unknown top-k {k!r}")
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= count:
                raise DiagError(
                    f"{path}: tally field models[{index}].correct[{k!r}] must be a whole number from 0 to the "
                    f"{count} images, got {n!r}"
                )
        if model.get("problem") is not None and not isinstance(model["problem"], str):
            raise DiagError(f"{path}: tally field models[{index}].problem must be text or null")


def check_arrays(
    path: Path,
    count: int,
    geometries: list[Geometry],
    sums: list[dict[str, np.ndarray]],
    examples: list[dict[str, np.ndarray]],
    hsic: dict[str, np.ndarray],
) -> None:
    """Every array of a shard's ``tally.npz`` (``path``) against its counts and the declared geometries."""
    required = set(summed_arrays())
    for index, (geometry, model_sums) in enumerate(zip(geometries, sums)):
        missing = sorted(required - model_sums.keys()) if count else []
        if missing:
            raise DiagError(f"{path}: model {index} lacks the sums {', '.join(missing)} of its {count} images")
        for name, values in model_sums.items():
            _check_sum(path, f"{index}/sums/{name}", name, values, count, geometry)
        for name, values in examples[index].items():
            if values.ndim == 0 or values.shape[0] > count:
                raise DiagError(f"{path}: {index}/examples/{name} holds more example images than the {count} analysed")
    depths = [geometry.num_blocks for geometry in geometries]
    expected = {"a": (depths[0], depths[0])}
    if len(depths) == 2:
        expected.update(b=(depths[1], depths[1]), ab=(depths[0], depths[1]))
    for key, values in hsic.items():
        if key not in expected or values.shape != expected[key] or values.dtype.kind != "f":
            raise DiagError(f"{path}: hsic/{key} is not a CKA total of shape {expected.get(key, 'of a known name')}")
        if not np.isfinite(values).all():
            raise DiagError(f"{path}: hsic/{key} holds NaN or infinite values")


def _check_sum(path: Path, entry: str, name: str, values: np.ndarray, count: int, geometry: Geometry) -> None:
    known = summed_arrays().get(name)
    if known is None:
        raise DiagError(f"{path}: {entry} is not a sum deepvit-diag writes")
    check_summed(path, entry, values, known, count, geometry)
    if name == "similarity_pre" and count:
        if not np.allclose(np.diagonal(values), count, rtol=1e-3, atol=1e-3):
            raise DiagError(
                f"{path}: {entry} does not count {count} images on its diagonal (each block is similar to itself)"
            )


def check_summed(path: Path, entry: str, values: np.ndarray, spec: Sum, count: int, geometry: Geometry) -> None:
    """``values``, the sum over ``count`` images of a ``catalogue.Sum`` ``spec``: its shape for
    ``geometry``, floating point, finite, and within what ``count`` images can add up to."""
    sizes = {"L": geometry.num_blocks, "H": geometry.num_heads}
    # The grid's own sizes come from the settings, which every shard of one analysis shares (checked on merge).
    sizes.update(zip("KU", values.shape[:2] if values.ndim == 3 else (-1, -1)))
    shape = tuple(sizes[letter] for letter in spec.shape)
    if values.shape != shape or values.dtype.kind != "f":
        raise DiagError(
            f"{path}: {entry} has shape {values.shape} ({values.dtype}), but the declared geometry needs {shape} "
            "floating-point values"
        )
    high = math.log(geometry.num_tokens) if spec.high == LN_TOKENS else spec.high
    check_range(path, entry, values, count, spec.low, high)


def check_range(path: Path, entry: str, values: np.ndarray, count: int, low: float | None, high: float | None) -> None:
    """Finite ``values`` within what ``count`` images of one value each in [low, high] add up to."""
    if not np.isfinite(values).all():
        raise DiagError(f"{path}: {entry} holds NaN or infinite values")
    slack = _SLACK * max(count, 1)
    if values.size and (
        (low is not None and values.min() < low * count - slack)
        or (high is not None and values.max() > high * count + slack)
    ):
        raise DiagError(f"{path}: {entry} is outside what {count} images can add up to")


# ----------------------------------------------------------------------------- ablation shards

# Settings that may differ between the shards of one analysis or ablation: they change how, not what, it computes.
RUN_ONLY_SETTINGS = ("device", "num_workers", "batch_size", "memory_budget")
ABLATION_STAGES = ("ablations", "measured pruning")
# Each ablated forward pass of one image gives a KL >= 0, a top-1 agreement of 0 or 1 and a cosine in [-1, 1].
MEASURE_RANGES = {"kl": (0.0, None), "agreement": (0.0, 1.0), "cosine": (-1.0, 1.0)}
# Shards plan from every image themselves: their statistics and head means agree up to rounding.
PLAN_RTOL = 1e-5


def differing_settings(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The names of the settings (``Settings.to_dict``) that differ, but those of ``RUN_ONLY_SETTINGS``."""
    return sorted(k for k in {**mine, **theirs} if k not in RUN_ONLY_SETTINGS and mine.get(k) != theirs.get(k))


def _whole(value: Any, what: str, path: Path, top: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (top is not None and value > top):
        limit = f" to {top}" if top is not None else ""
        raise DiagError(f"{path}: {what} must be a whole number from 0{limit}, got {value!r}")
    return value


def check_ablation_shard(path: Path, document: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The counts and every array of an ablation shard (``path``: its ``shard.json``) against
    its declared geometry, studies and counts; ``arrays`` is its ``tally.npz``."""
    if document.get("version") not in SHARD_VERSIONS:
        raise DiagError(f"{path}: format version {document.get('version')!r} is not one this deepvit-diag reads (1)")
    stage = document.get("stage")
    if stage not in ABLATION_STAGES:
        raise DiagError(f"{path}: stage {stage!r} is not one of {', '.join(ABLATION_STAGES)}")
    geometry = Geometry.from_dict(document["geometry"])
    count = _whole(document.get("count"), "field 'count'", path)
    ks = document["ks"]
    if not isinstance(ks, list) or any(k not in TOP_K for k in ks):
        raise DiagError(f"{path}: field 'ks' must list top-k values of {TOP_K}, got {ks!r}")
    expected = set()
    for name, layout in document["families"].items():
        shape = tuple(layout["shape"])
        indices = [tuple(index) for index in layout["indices"]]
        if any(len(index) != len(shape) or not all(0 <= i < n for i, n in zip(index, shape)) for index in indices):
            raise DiagError(f"{path}: family {name} places an entry outside its shape {shape}")
        for measure, (low, high) in MEASURE_RANGES.items():
            entry = f"families/{name}/{measure}"
            values = _array(path, arrays, entry, (len(indices),), "f")
            check_range(path, entry, values, count, low, high)
        correct = _array(path, arrays, f"families/{name}/correct", (len(indices), len(ks)), "i")
        if correct.size and (correct.min() < 0 or correct.max() > count):
            raise DiagError(f"{path}: families/{name}/correct counts more correct answers than the {count} images")
        expected.update(f"families/{name}/{measure}" for measure in (*MEASURE_RANGES, "correct"))
    if stage == "ablations":
        plan = document["plan"]
        planned = _whole(plan["count"], "plan.count", path)
        _whole(plan["skipped"], "plan.skipped", path)
        if count > planned:
            raise DiagError(f"{path}: the shard ablated {count} images, more than the {planned} it planned from")
        if len(plan["intact_correct"]) != len(ks):
            raise DiagError(f"{path}: plan.intact_correct must count one top-k each of {ks}")
        for k, correct in zip(ks, plan["intact_correct"]):
            _whole(correct, f"plan.intact_correct (top-{k})", path, planned)
        specs = summed_arrays()
        maps = document["settings"]["maps"]
        for name in ("ratio", "cross_head", "block_influence"):
            spec = specs.get(name) or specs[f"{name}_{maps}"]
            entry = f"statistics/{name}"
            check_summed(path, entry, _array(path, arrays, entry, None, "f"), spec, planned, geometry)
            expected.add(entry)
        if "head_means" in arrays:
            means = _array(path, arrays, "head_means", None, "f")
            if means.ndim != 3 or means.shape[:2] != (geometry.num_blocks, geometry.num_tokens):
                raise DiagError(f"{path}: head_means must hold (blocks, tokens, width) means, got {means.shape}")
            check_range(path, "head_means", means, 1, None, None)
            expected.add("head_means")
    else:
        expected.update(name for name in arrays if name.startswith("base/"))
    unknown = sorted(set(arrays) - expected)
    if unknown:
        raise DiagError(f"{path.parent / 'tally.npz'}: {unknown[0]} is not an array deepvit-diag writes in this shard")


def _array(path: Path, arrays: dict[str, np.ndarray], name: str, shape: tuple | None, kind: str) -> np.ndarray:
    values = arrays.get(name)
    if values is None:
        raise DiagError(f"{path.parent / 'tally.npz'}: {name} is missing")
    if (shape is not None and values.shape != shape) or values.dtype.kind != kind:
        wanted = "floating-point" if kind == "f" else "integer"
        raise DiagError(
            f"{path.parent / 'tally.npz'}: {name} has shape {values.shape} ({values.dtype}), but needs {wanted} "
            f"values{f' of shape {shape}' if shape is not None else ''}"
        )
    return values


def check_same_ablation(
    first: Path, mine: dict[str, Any], my_arrays: dict, other: Path, theirs: dict[str, Any], their_arrays: dict
) -> None:
    """One line naming what differs between two shards (``first``, ``other``: their folders)
    that must be shards of one stage of one ablation."""
    where = f"{other} and {first}"
    if theirs["stage"] != mine["stage"]:
        raise DiagError(
            f"{where} are shards of different stages ({theirs['stage']} and {mine['stage']}); merge the shards of "
            "each stage on their own"
        )
    their_count, my_count = (int(document["shard"].split("/")[1]) for document in (theirs, mine))
    if their_count != my_count:
        raise DiagError(f"{where} are shards of {their_count} and of {my_count}")
    if theirs["weights"] != mine["weights"] or theirs["geometry"] != mine["geometry"]:
        raise DiagError(f"{where} are shards of different models (their weights differ)")
    for key in ("total", "fingerprint"):
        if theirs["images"].get(key) != mine["images"].get(key):
            raise DiagError(f"{where} are shards of different image lists")
    differing = differing_settings(mine["settings"], theirs["settings"])
    if differing:
        raise DiagError(f"{where} were ablated with different settings ({', '.join(differing)})")
    for key in ("studies", "heads", "ks"):
        if theirs[key] != mine[key]:
            raise DiagError(f"{where} ran different ablations ({key}: {theirs[key]} and {mine[key]})")
    if theirs["families"] != mine["families"]:
        raise DiagError(f"{where} ran different ablations (their families of ablated models differ)")
    if mine["stage"] != "ablations":
        if theirs["base_sha256"] != mine["base_sha256"]:
            raise DiagError(f"{where} complete different merged first stages (--pruning-from)")
        return
    for key in ("count", "skipped", "intact_correct", "similar", "orders"):
        if theirs["plan"][key] != mine["plan"][key]:
            raise DiagError(
                f"{where} planned differently from all images ({key} differs): they are not shards of one ablation"
            )
    for name in sorted(name for name in my_arrays if name.startswith("statistics/") or name == "head_means"):
        mine_values, their_values = my_arrays[name], their_arrays.get(name)
        scale = float(np.abs(mine_values).max()) if mine_values.size else 0.0
        if (
            their_values is None
            or their_values.shape != mine_values.shape
            or not np.allclose(their_values, mine_values, rtol=PLAN_RTOL, atol=PLAN_RTOL * scale)
        ):
            raise DiagError(f"{where} planned differently from all images ({name} differs)")
