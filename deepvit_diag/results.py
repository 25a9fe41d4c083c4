"""Result objects of ``analyze`` and ``compare``: every metric, saved and loaded as files.

A result holds numpy arrays (``arrays``), the model's ``Geometry``, the ``Settings`` it was
computed with and JSON-able metadata; ``summary()`` turns the arrays into the scalars the
CLI and the app print, so neither re-implements math. On disk a result is a folder with
``result.json`` (metadata, summary, package versions) and ``arrays.npz``. Block indices
are 0-based everywhere. The metrics are defined in ``docs/metrics.md``; which arrays exist
is the catalogue's (``deepvit_diag.catalogue``).

Array names of an ``AnalysisResult`` (L blocks, H heads, R Re-attention blocks,
E examples, grid gh x gw):

==========================  ======================  ===========================================
``similarity_pre/_post``    (L, L)                  cross-layer similarity
``ratio_pre/_post``         (L,)                    similarity ratio
``cross_head_pre/_post``    (L, H, H)               cross-head similarity
``entropy``                 (L, H)                  attention entropy of softmax maps
``attention_distance``      (L, H)                  mean attention distance in pixels
``token_similarity``        (L,)                    token over-smoothing
``rank_residual``           (L,)                    rank-collapse residual
``cka``                     (L, L)                  minibatch linear CKA of block outputs
``theta``                   (R, H, H)               Theta of each Re-attention block, with
``theta_blocks``            (R,)                    their 0-based block indices, and where the
                                                    blocks have them ``theta_bias``,
                                                    ``theta_norm_weight``, ``theta_norm_bias``,
                                                    ``theta_running_mean``,
                                                    ``theta_running_var`` (R, H); CaiT's
                                                    talking heads add
                                                    ``theta_pre_softmax`` (R, H, H),
                                                    ``theta_pre_softmax_bias`` (R, H)
``example_images``          (E, height, width, 3)   uint8 images at model resolution
``example_cls_pre/_post``   (E, L, H, gh, gw)       CLS-token attention to every patch
==========================  ======================  ===========================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .catalogue import required_arrays
from .errors import DiagError
from .formats import ARRAYS_FILE, jsonable, package_versions, read_folder, rebuild, write_folder, written_by_us
from .introspection import Geometry
from .metrics import (
    TOP_K,
    Accuracy,
    HeadMixing,
    SimilarBlocks,
    head_mixing_from_arrays,
    mean_off_diagonal,
    similar_blocks,
)
from .settings import MAP_KINDS, Settings

# Shares of the maximum entropy ln T that the summary counts blocks at or below: a block at
# 0.8 ln T attends selectively, one at 1.0 ln T spreads its attention evenly.
ENTROPY_LEVELS = (0.8, 0.9)

RESULT_FILE = "result.json"
ANALYSIS_FORMAT = "deepvit-diag analysis"
COMPARISON_FORMAT = "deepvit-diag comparison"
# 2: typed geometry, settings and computation; Theta stacked over the Re-attention blocks.
FORMAT_VERSION = 2
ACCURACY_NOT_RECORDED = "not recorded (a result saved before deepvit-diag measured accuracy)"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _arrays_equal(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> bool:
    if first.keys() != second.keys():
        return False
    return all(
        first[name].dtype == second[name].dtype
        and first[name].shape == second[name].shape
        and np.array_equal(first[name], second[name], equal_nan=first[name].dtype.kind == "f")
        for name in first
    )


def is_result_file(path: Path) -> bool:
    """Whether ``path`` is a result.json or arrays.npz as ``save`` writes them (what ``--out`` may replace)."""
    return written_by_us(path, {RESULT_FILE: (ANALYSIS_FORMAT, COMPARISON_FORMAT)}, (ARRAYS_FILE,))


def _nanmean_or_none(values: np.ndarray) -> float | None:
    """Mean of the finite entries (NaN marks an undefined block, e.g. one head); None if none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _trend(per_block: np.ndarray) -> float | None:
    """Least-squares slope of a per-block curve (change per block); None for one block."""
    if len(per_block) < 2:
        return None
    return _finite_or_none(np.polyfit(np.arange(len(per_block)), per_block.astype(np.float64), 1)[0])


def _thirds(values: np.ndarray) -> tuple[float | None, float | None]:
    """Means of the first and last third (at least one value each) of a sequence."""
    if len(values) == 0:
        return None, None
    size = max(1, round(len(values) / 3))
    return _finite_or_none(values[:size].mean()), _finite_or_none(values[-size:].mean())


@dataclass(eq=False)
class AnalysisResult:
    """Every metric of one model over one image set (see the module docstring for arrays).

    Attributes:
        model: description, provenance, arch, class and number of parameters.
        geometry: the model's token layout (blocks, heads, prefix tokens, patch grid,
            image size, Re-attention blocks).
        settings: the resolved settings the analysis ran with.
        images: description, count and skipped (unreadable) files of the image source.
        num_images: images every dataset-level mean is taken over.
        arrays: name -> numpy array.
        computation: how it was computed (``final_batch_size`` after out-of-memory retries).
        accuracy: top-1/top-5 accuracy over the images when they carry labels, else why not.
    """

    model: dict[str, Any]
    geometry: Geometry
    settings: Settings
    images: dict[str, Any]
    num_images: int
    arrays: dict[str, np.ndarray] = field(repr=False)
    computation: dict[str, Any] = field(default_factory=dict)
    accuracy: Accuracy = field(default_factory=lambda: Accuracy.unavailable(ACCURACY_NOT_RECORDED))

    def __post_init__(self) -> None:
        self.model, self.images, self.computation = (
            jsonable(self.model),
            jsonable(self.images),
            jsonable(self.computation),
        )

    def _metadata(self) -> tuple:
        return self.model, self.geometry, self.settings, self.images, self.num_images, self.computation, self.accuracy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnalysisResult):
            return NotImplemented
        return self._metadata() == other._metadata() and _arrays_equal(self.arrays, other.arrays)

    def _kind(self, maps: str | None) -> str:
        maps = maps or self.settings.maps
        if maps not in MAP_KINDS:
            raise DiagError(f"maps must be 'pre' or 'post', got {maps!r}")
        return maps

    def similarity(self, maps: str | None = None) -> np.ndarray:
        """Cross-layer similarity (L, L) of the "pre" or "post" maps (default: settings.maps)."""
        return self.arrays[f"similarity_{self._kind(maps)}"]

    def ratio(self, maps: str | None = None) -> np.ndarray:
        """Similarity ratio per block (L,)."""
        return self.arrays[f"ratio_{self._kind(maps)}"]

    def cross_head(self, maps: str | None = None) -> np.ndarray:
        """Cross-head similarity per block (L, H, H)."""
        return self.arrays[f"cross_head_{self._kind(maps)}"]

    def cross_head_mean(self, maps: str | None = None) -> np.ndarray:
        """Mean off-diagonal cross-head similarity per block (L,)."""
        return mean_off_diagonal(torch.from_numpy(self.cross_head(maps))).numpy()

    def similar_blocks(self, maps: str | None = None, rho: float | None = None) -> SimilarBlocks:
        """Blocks whose dataset-level similarity ratio exceeds rho (default settings.rho)."""
        return similar_blocks(torch.from_numpy(self.ratio(maps)), self.settings.rho if rho is None else rho)

    def collapse_start(self, maps: str | None = None) -> int | None:
        """First block of the run of similar blocks that reaches the last block (the paper's
        "every block after the 17th"); None when the last block is not similar."""
        similar = set(self.similar_blocks(maps).indices)
        start = None
        for block in reversed(range(len(self.ratio(maps)))):
            if block not in similar:
                break
            start = block
        return start

    def adjacent_similarity(self, maps: str | None = None) -> np.ndarray:
        """Similarity of each block with the next, (L - 1,)."""
        return np.diagonal(self.similarity(maps), offset=1)

    def entropy(self) -> np.ndarray:
        """Attention entropy of the softmax maps (L, H), nats."""
        return self.arrays["entropy"]

    def attention_distance(self) -> np.ndarray:
        """Mean attention distance of the softmax maps (L, H), pixels."""
        return self.arrays["attention_distance"]

    def token_similarity(self) -> np.ndarray:
        return self.arrays["token_similarity"]

    def rank_residual(self) -> np.ndarray:
        return self.arrays["rank_residual"]

    def cka(self) -> np.ndarray:
        """Linear CKA between block outputs (L, L); NaN with fewer than 4 images."""
        return self.arrays["cka"]

    def head_mixing(self) -> dict[int, HeadMixing]:
        """How every head-mixing block mixes its heads: Θ or `proj_w` with bias, Norm and distances."""
        return head_mixing_from_arrays(self.arrays)

    def _map_summary(self, maps: str) -> dict[str, Any]:
        similar = self.similar_blocks(maps)
        first_third, last_third = _thirds(self.adjacent_similarity(maps))
        cross_head = self.cross_head_mean(maps)
        return {
            "similar_blocks": similar.count,
            "similar_block_indices": similar.indices,
            "collapse_start": self.collapse_start(maps),
            "adjacent_similarity_first_third": first_third,
            "adjacent_similarity_last_third": last_third,
            "cross_head_similarity": _nanmean_or_none(cross_head),
        }

    def summary(self) -> dict[str, Any]:
        """Scalars for reports (JSON-able; undefined values are None; blocks 0-based).

        Map-based entries come for both map kinds with a ``_pre`` / ``_post`` suffix and
        once more without suffix for the default kind (``settings.maps``). Accuracy
        entries (``accuracy_top1``, ``accuracy_top5``: shares in [0, 1]) are None without
        labels, and ``accuracy_labels`` says where the labels came from or why there are none.
        """
        summary: dict[str, Any] = {
            "num_images": self.num_images,
            "num_blocks": self.geometry.num_blocks,
            "maps": self._kind(None),
        }
        per_kind = {kind: self._map_summary(kind) for kind in MAP_KINDS}
        for kind, values in per_kind.items():
            summary.update({f"{name}_{kind}": value for name, value in values.items()})
        summary.update(per_kind[self._kind(None)])
        for name in ("entropy", "attention_distance"):
            per_block = self.arrays[name].mean(axis=1)
            summary[f"{name}_first_block"] = _finite_or_none(per_block[0])
            summary[f"{name}_last_block"] = _finite_or_none(per_block[-1])
            summary[f"{name}_trend"] = _trend(per_block)
        # Entropy as a share of its maximum ln T, so that models with different token counts compare.
        relative_entropy = self.arrays["entropy"].mean(axis=1) / math.log(self.geometry.num_tokens)
        summary["entropy_relative_median"] = _finite_or_none(np.median(relative_entropy))
        for level in ENTROPY_LEVELS:
            summary[f"blocks_entropy_at_most_{level:g}"] = int(np.sum(relative_entropy <= level))
        summary["token_similarity_last_block"] = _finite_or_none(self.token_similarity()[-1])
        summary["rank_residual_last_block"] = _finite_or_none(self.rank_residual()[-1])
        adjacent_cka = np.diagonal(self.cka(), offset=1)
        summary["cka_adjacent_mean"] = _nanmean_or_none(adjacent_cka)
        mixings = list(self.head_mixing().values())
        for distance in ("distance_from_identity", "distance_from_permutation"):
            values = [getattr(mixing, distance) for mixing in mixings]
            summary[f"theta_{distance}_mean"] = _finite_or_none(float(np.mean(values))) if values else None
        for k in TOP_K:
            summary[f"accuracy_top{k}"] = self.accuracy.top(k)
        summary["accuracy_images"] = self.accuracy.images
        summary["accuracy_labels"] = self.accuracy.labels
        return summary

    def to_document(self) -> dict[str, Any]:
        """The JSON document ``save`` writes (without the arrays)."""
        return {
            "format": ANALYSIS_FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "geometry": self.geometry.to_dict(),
            "settings": self.settings.to_dict(),
            "computation": self.computation,
            "images": self.images,
            "num_images": self.num_images,
            "accuracy": self.accuracy.to_dict(),
            "summary": self.summary(),
            "array_shapes": {name: list(array.shape) for name, array in self.arrays.items()},
            "versions": package_versions(),
        }

    @classmethod
    def from_document(cls, document: dict[str, Any], arrays: dict[str, np.ndarray]) -> AnalysisResult:
        """A result from ``to_document``'s output and its arrays (format 1 is upgraded)."""
        if document.get("version") == 1:
            document, arrays = _upgrade_version_1(document, arrays)
        missing = sorted(required_arrays() - arrays.keys())
        if missing:
            raise DiagError(f"saved analysis lacks the arrays {', '.join(missing)}")
        _check_array_shapes(document.get("array_shapes"), arrays)
        try:
            return cls(
                model=document["model"],
                geometry=Geometry.from_dict(document["geometry"]),
                settings=Settings.from_dict(document["settings"]),
                images=document["images"],
                num_images=document["num_images"],
                arrays=arrays,
                computation=document.get("computation", {}),
                accuracy=Accuracy.from_dict(document["accuracy"])
                if "accuracy" in document
                else Accuracy.unavailable(ACCURACY_NOT_RECORDED),
            )
        except KeyError as err:
            raise DiagError(f"saved analysis lacks the entry {err}") from None

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/result.json`` and ``folder/arrays.npz``; returns the folder."""
        return write_folder(folder, self.to_document(), self.arrays, RESULT_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> AnalysisResult:
        document, arrays = read_folder(folder, ANALYSIS_FORMAT, RESULT_FILE)
        return rebuild(folder, lambda: cls.from_document(document, arrays))


def _check_array_shapes(recorded: Any, arrays: dict[str, np.ndarray]) -> None:
    """The arrays' shapes as the document records them (``to_document``'s ``array_shapes``), when it does:
    result.json and arrays.npz of different analyses do not make one."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise DiagError("its field 'array_shapes' is not an object")
    for name, array in arrays.items():
        if name in recorded and recorded[name] != list(array.shape):
            raise DiagError(
                f"array {name} has shape {list(array.shape)}, but result.json records {recorded[name]} "
                "(result.json and arrays.npz of different analyses)"
            )


_VERSION_1_GEOMETRY = ("num_blocks", "num_heads", "num_prefix_tokens", "patch_size", "grid_size", "image_size")
_VERSION_1_THETA = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")


def _upgrade_version_1(document: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """A format-1 analysis (geometry inside ``model``, ``params``, one ``theta_<i>`` array
    per Re-attention block) in format 2."""
    try:
        model, params = dict(document["model"]), dict(document["params"])
        geometry = {key: model.pop(key) for key in _VERSION_1_GEOMETRY}
        geometry["mixing_blocks"] = model.pop("reattention_blocks")
        model.pop("num_tokens", None)
        computation = {"final_batch_size": params.pop("final_batch_size")}
        blocks, heads = geometry["mixing_blocks"], int(geometry["num_heads"])
        theta = [arrays[f"theta_{block}"] for block in blocks]
    except KeyError as err:
        raise DiagError(f"saved analysis (format 1) lacks the entry {err}") from None
    upgraded = {name: array for name, array in arrays.items() if not name.startswith("theta_")}
    upgraded["theta"] = np.stack(theta) if theta else np.zeros((0, heads, heads), np.float32)
    upgraded["theta_blocks"] = np.array(blocks, dtype=np.int64)
    for name in _VERSION_1_THETA:
        values = [arrays.get(f"theta_{block}_{name}") for block in blocks]
        if values and all(value is not None for value in values):
            upgraded[f"theta_{name}"] = np.stack(values)
    document = {**document, "model": model, "geometry": geometry, "settings": params, "computation": computation}
    return document, upgraded


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(eq=False)
class ComparisonResult:
    """Two models analysed on the same images, plus CKA across their block outputs.

    Attributes:
        a, b: the two analyses (same images, same parameters).
        cka_ab: (L_A, L_B) linear CKA between block i of A and block j of B.
    """

    a: AnalysisResult
    b: AnalysisResult
    cka_ab: np.ndarray = field(repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ComparisonResult):
            return NotImplemented
        return self.a == other.a and self.b == other.b and _arrays_equal({"ab": self.cka_ab}, {"ab": other.cka_ab})

    def best_matching_blocks(self) -> list[int | None]:
        """For every block of A, the block of B whose output is most similar (max CKA)."""
        return [int(np.nanargmax(row)) if np.isfinite(row).any() else None for row in self.cka_ab]

    def differences(self) -> dict[str, float]:
        """``b - a`` for every numeric summary entry both results define."""
        summary_a, summary_b = self.a.summary(), self.b.summary()
        return {
            name: summary_b[name] - value
            for name, value in summary_a.items()
            if _is_number(value) and _is_number(summary_b.get(name))
        }

    def summary(self) -> dict[str, Any]:
        same_depth = self.cka_ab.shape[0] == self.cka_ab.shape[1]
        diagonal = np.diagonal(self.cka_ab) if same_depth else np.array([])
        return {
            "a": self.a.summary(),
            "b": self.b.summary(),
            "differences": self.differences(),
            "cka_ab_best_match": self.best_matching_blocks(),
            "cka_ab_diagonal_mean": _finite_or_none(diagonal.mean()) if len(diagonal) else None,
        }

    def save(self, folder: str | Path) -> Path:
        """One ``result.json`` (both analyses) and one ``arrays.npz`` (``a/...``, ``b/...``, ``cka_ab``)."""
        document = {
            "format": COMPARISON_FORMAT,
            "version": FORMAT_VERSION,
            "a": self.a.to_document(),
            "b": self.b.to_document(),
            "summary": self.summary(),
            "versions": package_versions(),
        }
        arrays = {
            f"{side}/{name}": array
            for side, result in (("a", self.a), ("b", self.b))
            for name, array in result.arrays.items()
        }
        return write_folder(folder, document, {**arrays, "cka_ab": self.cka_ab}, RESULT_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> ComparisonResult:
        document, arrays = read_folder(folder, COMPARISON_FORMAT, RESULT_FILE)

        def build() -> ComparisonResult:
            sides = {
                side: AnalysisResult.from_document(
                    document[side],
                    {name.split("/", 1)[1]: array for name, array in arrays.items() if name.startswith(f"{side}/")},
                )
                for side in ("a", "b")
            }
            return cls(sides["a"], sides["b"], arrays["cka_ab"])

        return rebuild(folder, build)


def load_result(folder: str | Path) -> AnalysisResult | ComparisonResult:
    """A saved analysis or comparison, whichever the folder holds."""
    path = Path(folder) / RESULT_FILE
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        kind = None
    return ComparisonResult.load(folder) if kind == COMPARISON_FORMAT else AnalysisResult.load(folder)
