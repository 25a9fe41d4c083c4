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
