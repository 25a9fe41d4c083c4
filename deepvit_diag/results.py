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
``uniformity_pre/_post``    (L, H)                  closeness to the uniform map (regimes)
``ratio_grid_pre/_post``    (K, U, L)               similarity ratio at every (k, tau) of the
                                                    robustness grid (``Settings.grid_ks``,
                                                    ``Settings.grid_taus``)
``entropy``                 (L, H)                  attention entropy of softmax maps
``attention_distance``      (L, H)                  mean attention distance in pixels
``token_similarity``        (L,)                    token over-smoothing
``rank_residual``           (L,)                    rank-collapse residual
``block_influence``         (L,)                    1 - cos(block input, block output)
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
``example_names`` ...       (E,)                    each example's name, label and the model's
                                                    prediction (``deepvit_diag.example_images``)
==========================  ======================  ===========================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .catalogue import NEAR_UNIFORM_CUTOFF, REGIMES_AND_GRID, metric_named, required_arrays
from .errors import DiagError
from .example_images import ExampleImage, describe_examples
from .figures.style import model_label
from .formats import ARRAYS_FILE, jsonable, package_versions, read_folder, rebuild, write_folder, written_by_us
from .introspection import Geometry
from .metrics import (
    TOP_K,
    Accuracy,
    HeadMixing,
    SimilarBlocks,
    head_mixing_from_arrays,
    mean_off_diagonal,
    near_uniform_blocks,
    similar_blocks,
)
from .notebook import analysis_html, comparison_html, plot_analysis, plot_comparison, short_repr
from .outputs import write_checked
from .settings import ENTROPY_LEVELS, MAP_KINDS, Settings
from .summary import NOT_IN_RESULT

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

REGIMES = ("near-uniform", "selective")

RESULT_FILE = "result.json"
ANALYSIS_FORMAT = "deepvit-diag analysis"
COMPARISON_FORMAT = "deepvit-diag comparison"
# 2: typed geometry, settings and computation; Theta stacked over the Re-attention blocks.
# 3: every result holds the attention regimes, the robustness grid and Block Influence.
FORMAT_VERSION = 3
# The catalogue metrics a result saved before format 3 may lack. It loads without them: nothing it saved
# gives them back. Uniformity is a statistic of every row of every map (the saved entropy is another one,
# of the softmax maps only, and bounds it on one side only), the grid needs the per-vector similarities at
# other k and tau (only their share above tau at the chosen k is saved), Block Influence the tokens
# entering each block.
LATER_METRICS = (REGIMES_AND_GRID, "Block Influence")
ACCURACY_NOT_RECORDED = "not recorded (a result saved before deepvit-diag measured accuracy)"


def finite_or_none(value: float) -> float | None:
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
    return finite_or_none(np.polyfit(np.arange(len(per_block)), per_block.astype(np.float64), 1)[0])


def _thirds(values: np.ndarray) -> tuple[float | None, float | None]:
    """Means of the first and last third (at least one value each) of a sequence."""
    if len(values) == 0:
        return None, None
    size = max(1, round(len(values) / 3))
    return finite_or_none(values[:size].mean()), finite_or_none(values[-size:].mean())


def trailing_run(blocks: list[int], num_blocks: int) -> int | None:
    """First block of the run of ``blocks`` (0-based) that ends at the last block, or None."""
    chosen, start = set(blocks), None
    for block in reversed(range(num_blocks)):
        if block not in chosen:
            break
        start = block
    return start


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

    def not_in_result(self) -> list[str]:
        """The metrics this result lacks because it was saved before deepvit-diag measured them (of
        ``LATER_METRICS``: the attention regimes and robustness grid, Block Influence); empty for a
        result of this version. Their methods raise ``DiagError``: "not in this result; re-run analyze
        to get it" (docs/metrics.md, results saved before a metric existed).

        Example:
            >>> AnalysisResult.load("runs/old").not_in_result()  # doctest: +SKIP
            ['attention regimes and robustness grid', 'Block Influence']
        """
        return [name for name in LATER_METRICS if not set(metric_named(name).arrays) <= self.arrays.keys()]

    def _measured(self, metric: str) -> None:
        if metric in self.not_in_result():
            raise DiagError(f"{metric}: {NOT_IN_RESULT}")

    def uniformity(self, maps: str | None = None) -> np.ndarray:
        """Closeness of each head's maps to the uniform map (L, H), in [0, 1]."""
        self._measured(REGIMES_AND_GRID)
        return self.arrays[f"uniformity_{self._kind(maps)}"]

    def near_uniform_blocks(self, maps: str | None = None) -> list[int]:
        """0-based blocks whose maps are near-uniform (head-averaged uniformity above
        ``NEAR_UNIFORM_CUTOFF``): alike because they barely select, not collapse."""
        return near_uniform_blocks(torch.from_numpy(self.uniformity(maps)), NEAR_UNIFORM_CUTOFF)

    def regimes(self, maps: str | None = None) -> list[str]:
        """Each block's regime, ``"near-uniform"`` or ``"selective"`` (``REGIMES``)."""
        uniform = set(self.near_uniform_blocks(maps))
        return [REGIMES[0] if block in uniform else REGIMES[1] for block in range(self.geometry.num_blocks)]

    def collapsed_blocks(self, maps: str | None = None, rho: float | None = None) -> list[int]:
        """Similar blocks whose maps are selective: the paper's collapse (selective maps
        that stop changing with depth), 0-based."""
        uniform = set(self.near_uniform_blocks(maps))
        return [block for block in self.similar_blocks(maps, rho).indices if block not in uniform]

    def collapse_start(self, maps: str | None = None) -> int | None:
        """First block of the run of collapsed blocks (similar and selective) that reaches
        the last block (the paper's "every block after the 17th"); None when the last block
        is not collapsed (not similar, or near-uniform). Without the regimes (``not_in_result``)
        only that None is known, when the last block is not similar."""
        if REGIMES_AND_GRID in self.not_in_result() and self._last_block_dissimilar(maps):
            return None
        return trailing_run(self.collapsed_blocks(maps), self.geometry.num_blocks)

    def _last_block_dissimilar(self, maps: str | None) -> bool:
        """Whether no run of similar blocks reaches the last block: then no run of collapsed ones does."""
        return trailing_run(self.similar_blocks(maps).indices, self.geometry.num_blocks) is None

    def robustness(self, maps: str | None = None) -> dict[str, np.ndarray]:
        """The verdict over the robustness grid (docs/metrics.md), from the ratios of the same pass.

        Returns ``similar_blocks`` and ``collapse_start`` (K, U, R) over ``settings.grid_ks``,
        ``grid_taus`` and ``grid_rhos`` (collapse start 0-based, -1 for none).
        """
        uniform = set(self.near_uniform_blocks(maps))
        grid = self.arrays[f"ratio_grid_{self._kind(maps)}"]
        rhos = self.settings.grid_rhos
        counts = np.zeros((*grid.shape[:2], len(rhos)), dtype=np.int64)
        starts = np.full_like(counts, -1)
        for index in np.ndindex(*grid.shape[:2]):
            for r, rho in enumerate(rhos):
                similar = similar_blocks(torch.from_numpy(grid[index]), rho).indices
                counts[(*index, r)] = len(similar)
                start = trailing_run([block for block in similar if block not in uniform], len(grid[index]))
                starts[(*index, r)] = -1 if start is None else start
        return {"similar_blocks": counts, "collapse_start": starts}

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
        """Token over-smoothing per block (L,): mean cosine similarity between the patch
        tokens of a block's output (1 = all tokens alike)."""
        return self.arrays["token_similarity"]

    def rank_residual(self) -> np.ndarray:
        """Rank-collapse residual per block (L,): relative distance of a block's output from
        the nearest rank-1 matrix (0 = collapsed to one token)."""
        return self.arrays["rank_residual"]

    def cka(self) -> np.ndarray:
        """Linear CKA between block outputs (L, L); NaN with fewer than 4 images."""
        return self.arrays["cka"]

    def head_mixing(self) -> dict[int, HeadMixing]:
        """How every head-mixing block mixes its heads: Θ or `proj_w` with bias, Norm and distances."""
        return head_mixing_from_arrays(self.arrays)

    def examples(self) -> list[ExampleImage]:
        """The example images (``example_images``, in order) with their names, labels and this
        model's top-1 predictions (``deepvit_diag.example_images``)."""
        return describe_examples(self.arrays)

    def plot(self, name: str = "ratio", *, label: str | None = None, example: int = 0, **options: Any) -> go.Figure:
        """A Plotly figure of this analysis, which a notebook renders.

        Args:
            name: ``"ratio"`` (similarity ratio per block), ``"similarity"`` (L x L cross-layer
                similarity), ``"cross_head"``, ``"cross_head_matrices"``, ``"entropy"``,
                ``"attention_distance"``, ``"token_similarity"``, ``"rank_residual"``,
                ``"cka"``, ``"theta"``, ``"theta_distances"``, ``"norm_gains"``, ``"cls"``
                (CLS-token attention per head over an example image), or a catalogue key.
            label: the model's name in the figure (default its description).
            example: the example image of ``"cls"`` (0-based).
            options: keyword arguments of the figure function, e.g. ``maps="post"``,
                ``blocks=[0, 5]`` (``"cls"``), ``block=3`` (``"cross_head_matrices"``).

        Example:
            >>> res.plot("ratio", maps="post")  # doctest: +SKIP
        """
        return plot_analysis(self, name, label, example, options)

    def to_frame(self) -> pd.DataFrame:
        """The per-block metrics as a pandas DataFrame, one row per block (L rows).

        The index ``block_0based`` numbers blocks from 0, as the arrays and ``summary()`` do
        (figures and tables number them from 1). Columns: ``ratio_pre/_post``,
        ``similar_pre/_post`` (ratio above ``settings.rho``), ``adjacent_similarity_pre/_post``
        (with the next block; NaN for the last), ``cross_head_pre/_post`` (mean off-diagonal
        cross-head similarity), ``entropy`` and ``attention_distance`` (means over heads),
        ``token_similarity``, ``rank_residual`` and ``cka_next`` (CKA with the next block's
        output; NaN for the last).

        Example:
            >>> res.to_frame()["ratio_pre"].idxmax()  # doctest: +SKIP
        """
        import pandas as pd

        blocks = self.geometry.num_blocks
        columns: dict[str, np.ndarray] = {}
        for kind in MAP_KINDS:
            columns[f"ratio_{kind}"] = self.ratio(kind)
            columns[f"similar_{kind}"] = np.isin(np.arange(blocks), self.similar_blocks(kind).indices)
            columns[f"adjacent_similarity_{kind}"] = _pad_to(self.adjacent_similarity(kind), blocks)
            columns[f"cross_head_{kind}"] = self.cross_head_mean(kind)
        columns["entropy"] = self.entropy().mean(axis=1)
        columns["attention_distance"] = self.attention_distance().mean(axis=1)
        columns["token_similarity"] = self.token_similarity()
        columns["rank_residual"] = self.rank_residual()
        columns["cka_next"] = _pad_to(np.diagonal(self.cka(), offset=1), blocks)
        return pd.DataFrame(columns, index=pd.RangeIndex(blocks, name="block_0based"))

    def __repr__(self) -> str:
        similar, missing = self.similar_blocks(), self.not_in_result()
        verdict = {"not_in_result": missing} if missing else {"collapse_start_0based": self.collapse_start()}
        return short_repr(
            "AnalysisResult",
            {
                "model": self.model.get("description"),
                "blocks": self.geometry.num_blocks,
                "images": self.num_images,
                "maps": self._kind(None),
                "similar_blocks": similar.count,
                **verdict,
            },
        )

    def _repr_html_(self) -> str:
        return analysis_html(self)

    def _band_verdicts(self, counts: np.ndarray, starts: np.ndarray) -> dict[str, Any]:
        """The verdict inside the band of the grid next to the settings (k -/+ 1, tau -/+ 0.1,
        rho -/+ 0.05): the range of similar-block counts and of collapse starts (None: no run)."""
        settings = self.settings
        near_tau = [abs(tau - settings.tau) <= 0.1 + 1e-9 for tau in settings.grid_taus]
        near_rho = [abs(rho - settings.rho) <= 0.05 + 1e-9 for rho in settings.grid_rhos]
        band = np.ix_(range(counts.shape[0]), np.flatnonzero(near_tau), np.flatnonzero(near_rho))
        band_starts = sorted({int(start) for start in starts[band].flat})
        return {
            "band_similar_blocks": [int(counts[band].min()), int(counts[band].max())],
            "band_collapse_starts": [None if start < 0 else start for start in band_starts],
        }

    def _map_summary(self, maps: str) -> dict[str, Any]:
        """The entries of one map kind; without the regimes and the grid (``not_in_result``) those that
        need them are left out, so that nothing reads as "no collapse" that was never measured."""
        similar = self.similar_blocks(maps)
        first_third, last_third = _thirds(self.adjacent_similarity(maps))
        cross_head = self.cross_head_mean(maps)
        # Without the regimes the collapse start is known only where it is None (``collapse_start``).
        verdict: dict[str, Any] = {"collapse_start": None} if self._last_block_dissimilar(maps) else {}
        if REGIMES_AND_GRID not in self.not_in_result():
            robustness = self.robustness(maps)
            verdict = {
                "near_uniform_block_indices": self.near_uniform_blocks(maps),
                "collapsed_block_indices": self.collapsed_blocks(maps),
                "collapse_start": self.collapse_start(maps),
                **self._band_verdicts(robustness["similar_blocks"], robustness["collapse_start"]),
            }
        return {
            "similar_blocks": similar.count,
            "similar_block_indices": similar.indices,
            **verdict,
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
        A result saved before a metric existed has ``not_in_result`` (``not_in_result()``) and lacks
        the entries that need it: ``near_uniform_block_indices``, ``collapsed_block_indices``,
        the ``band_...`` entries and ``collapse_start`` (unless the last block is not similar: then
        it is None whatever the regimes) without the regimes and grid.
        """
        summary: dict[str, Any] = {
            "num_images": self.num_images,
            "num_blocks": self.geometry.num_blocks,
            "maps": self._kind(None),
        }
        if missing := self.not_in_result():
            summary["not_in_result"] = missing
        per_kind = {kind: self._map_summary(kind) for kind in MAP_KINDS}
        for kind, values in per_kind.items():
            summary.update({f"{name}_{kind}": value for name, value in values.items()})
        summary.update(per_kind[self._kind(None)])
        for name in ("entropy", "attention_distance"):
            per_block = self.arrays[name].mean(axis=1)
            summary[f"{name}_first_block"] = finite_or_none(per_block[0])
            summary[f"{name}_last_block"] = finite_or_none(per_block[-1])
            summary[f"{name}_trend"] = _trend(per_block)
        # Entropy as a share of its maximum ln T, so that models with different token counts compare.
        relative_entropy = self.arrays["entropy"].mean(axis=1) / math.log(self.geometry.num_tokens)
        summary["entropy_relative_median"] = finite_or_none(np.median(relative_entropy))
        for level in ENTROPY_LEVELS:
            summary[f"blocks_entropy_at_most_{level:g}"] = int(np.sum(relative_entropy <= level))
        summary["token_similarity_last_block"] = finite_or_none(self.token_similarity()[-1])
        summary["rank_residual_last_block"] = finite_or_none(self.rank_residual()[-1])
        adjacent_cka = np.diagonal(self.cka(), offset=1)
        summary["cka_adjacent_mean"] = _nanmean_or_none(adjacent_cka)
        mixings = list(self.head_mixing().values())
        for distance in ("distance_from_identity", "distance_from_permutation"):
            values = [getattr(mixing, distance) for mixing in mixings]
            summary[f"theta_{distance}_mean"] = finite_or_none(float(np.mean(values))) if values else None
        for k in TOP_K:
            summary[f"accuracy_top{k}"] = self.accuracy.top(k)
        summary["accuracy_images"] = self.accuracy.images
        summary["accuracy_labels"] = self.accuracy.labels
        return summary

    def to_document(self) -> dict[str, Any]:
        """The JSON document ``save`` writes (without the arrays)."""
        return {
            "format": ANALYSIS_FORMAT,
            # A result loaded from format 2 without the metrics of format 3 is written as what it is.
            "version": 2 if self.not_in_result() else FORMAT_VERSION,
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
        """A result from ``to_document``'s output and its arrays (format 1 is upgraded; formats 1 and 2
        may lack the metrics of ``LATER_METRICS``, which the result then reports as ``not_in_result``)."""
        version = document.get("version")
        if version == 1:
            document, arrays = _upgrade_version_1(document, arrays)
        later = (
            set()
            if version == FORMAT_VERSION
            else {name for metric in LATER_METRICS for name in metric_named(metric).arrays}
        )
        missing = sorted(required_arrays() - later - arrays.keys())
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

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write ``folder/result.json`` and ``folder/arrays.npz``, whole or not at all; returns
        the folder. Like the command line's ``--out``, a folder holding files deepvit-diag did
        not write is refused (``DiagError``) unless ``force`` (those files are kept).

        Example:
            >>> res.save("runs/vit")  # doctest: +SKIP
        """
        return write_checked(folder, is_result_file, self.write_files, force=force)

    def write_files(self, folder: str | Path) -> Path:
        """Write ``result.json`` and ``arrays.npz`` into ``folder`` as they are, without
        ``save``'s checks: what a caller that stages its own output (the command line, the
        app's downloads) uses. Returns the folder."""
        return write_folder(folder, self.to_document(), self.arrays, RESULT_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> AnalysisResult:
        """The analysis ``save`` wrote into ``folder`` (``DiagError`` for anything else).

        Example:
            >>> AnalysisResult.load("runs/vit").ratio()  # doctest: +SKIP
        """
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


def summary_before_regimes(summary: dict[str, Any]) -> dict[str, Any]:
    """A ``summary()`` that a sweep or monitor file kept, as this version reads it. Summaries written before
    the attention regimes have ``collapse_start`` but no ``collapsed_block_indices``: their collapse start
    was the run of similar blocks whatever their regime, near-uniform ones included, so it is left out where
    it names a block, and the summary says ``not_in_result`` like a result of that time. Others are
    returned as they are."""
    if "collapse_start" not in summary or "collapsed_block_indices" in summary:
        return summary
    # None stays: no run of similar blocks reached the last block, so no collapsed one does.
    kept = {key: value for key, value in summary.items() if not key.startswith("collapse_start") or value is None}
    return {**kept, "not_in_result": [REGIMES_AND_GRID]}


def _best_rows(matrix: np.ndarray) -> list[int | None]:
    """For every row, the column of its largest finite entry (None if none is finite)."""
    return [int(np.nanargmax(row)) if np.isfinite(row).any() else None for row in matrix]


def _pad_to(values: np.ndarray, length: int) -> np.ndarray:
    """``values`` extended with NaN to ``length`` entries (a per-pair curve as a per-block column)."""
    return np.concatenate([values.astype(np.float64), np.full(length - len(values), np.nan)])


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
        """For every block of A, the 0-based block of B whose output is most similar (max
        CKA), None where CKA is undefined (fewer than 4 images); a list of L_A entries.

        Example:
            >>> cmp.best_matching_blocks()  # doctest: +SKIP
            [0, 1, 2, 2]
        """
        return _best_rows(self.cka_ab)

    def differences(self) -> dict[str, float]:
        """``b - a`` for every numeric summary entry both results define."""
        summary_a, summary_b = self.a.summary(), self.b.summary()
        return {
            name: summary_b[name] - value
            for name, value in summary_a.items()
            if _is_number(value) and _is_number(summary_b.get(name))
        }

    def labelled(self) -> dict[str, AnalysisResult]:
        """``{label: result}`` of A and B, labelled by their descriptions (with " (A)" and
        " (B)" when the two are described alike)."""
        label_a, label_b = model_label(self.a, "A"), model_label(self.b, "B")
        if label_a == label_b:
            label_a, label_b = f"{label_a} (A)", f"{label_b} (B)"
        return {label_a: self.a, label_b: self.b}

    def plot(self, name: str = "cka", **options: Any) -> go.Figure:
        """A Plotly figure of the comparison: ``"cka"`` (linear CKA between every block of A
        and every block of B) or any figure of ``AnalysisResult.plot`` that draws several
        models (``"ratio"``, ``"similarity"`` with a B - A panel, ``"entropy"``, ...), with both.

        Example:
            >>> cmp.plot("cka")  # doctest: +SKIP
        """
        return plot_comparison(self, name, options)

    def to_frame(self) -> pd.DataFrame:
        """Both analyses' ``to_frame()`` in long format: one row per model and block, with the
        columns ``model`` (its label), ``side`` (``"a"`` or ``"b"``) and ``block_0based``, then
        the per-block metrics. ``best_match_0based`` is, for A's blocks, the block of B with
        the highest CKA (``best_matching_blocks``), and for B's blocks the block of A.

        Example:
            >>> cmp.to_frame().pivot(index="block_0based", columns="model", values="ratio_pre")  # doctest: +SKIP
        """
        import pandas as pd

        best = {"a": self.best_matching_blocks(), "b": _best_rows(self.cka_ab.T)}
        frames = []
        for (label, result), side in zip(self.labelled().items(), ("a", "b")):
            frame = result.to_frame().reset_index()
            frame.insert(0, "side", side)
            frame.insert(0, "model", label)
            frame["best_match_0based"] = pd.array(best[side], dtype="Int64")
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def __repr__(self) -> str:
        label_a, label_b = self.labelled()
        return short_repr("ComparisonResult", {"a": label_a, "b": label_b, "images": self.a.num_images})

    def _repr_html_(self) -> str:
        return comparison_html(self)

    def summary(self) -> dict[str, Any]:
        """``{"a": ..., "b": ...}`` (each ``AnalysisResult.summary()``), ``differences``
        (B - A of every numeric entry), ``cka_ab_best_match`` (for each block of A, the
        0-based block of B with the highest CKA; None where undefined) and
        ``cka_ab_diagonal_mean`` (mean CKA of block i of A with block i of B; None for
        models of different depth).

        Example:
            >>> cmp.summary()["differences"]["similar_blocks"]  # doctest: +SKIP
        """
        same_depth = self.cka_ab.shape[0] == self.cka_ab.shape[1]
        diagonal = np.diagonal(self.cka_ab) if same_depth else np.array([])
        return {
            "a": self.a.summary(),
            "b": self.b.summary(),
            "differences": self.differences(),
            "cka_ab_best_match": self.best_matching_blocks(),
            "cka_ab_diagonal_mean": finite_or_none(diagonal.mean()) if len(diagonal) else None,
        }

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """One ``result.json`` (both analyses) and one ``arrays.npz`` (``a/...``, ``b/...``,
        ``cka_ab``), by the rules of ``AnalysisResult.save`` (``force`` included)."""
        return write_checked(folder, is_result_file, self.write_files, force=force)

    def write_files(self, folder: str | Path) -> Path:
        """``save``'s files written into ``folder`` without its checks (``AnalysisResult.write_files``)."""
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
        arrays["cka_ab"] = self.cka_ab
        return write_folder(folder, document, arrays, RESULT_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> ComparisonResult:
        """The comparison ``save`` wrote into ``folder`` (``DiagError`` for anything else).

        Example:
            >>> ComparisonResult.load("runs/vit-vs-deepvit").cka_ab.shape  # doctest: +SKIP
        """
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
