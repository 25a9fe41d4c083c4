"""The result of ``ablate``: what each ablation costs, next to the collapse measures, saved as files.

Array names of an ``AblationResult`` (L blocks, H heads, K reported top-k; every value a
mean over the images; NaN where an ablation does not apply):

==============================  ===========  ===================================================
``ratio``                       (L,)         similarity ratio (maps as ``settings.maps``)
``cross_head``                  (L, H, H)    cross-head similarity
``block_influence``             (L,)         1 - cos(block input, block output)
``<family>_kl``                 shape        KL(intact || ablated) of the predictive distribution
``<family>_agreement``          shape        share of images whose top-1 class is unchanged
``<family>_cosine``             shape        cosine of intact and ablated final features
``<family>_accuracy``           shape + (K,) top-k accuracy of the ablated model (with labels)
``pruning_<ordering>_order``    (L,)         blocks from most to least redundant
==============================  ===========  ===================================================

Families (``ablation`` module docstring): ``block``, ``attention``, ``transplant`` (L,);
``head`` (L, H); ``reattention`` (L,), ``reattention_all`` (1,); ``similar`` (1,);
``pruning_measured``, ``pruning_similarity``, ``pruning_influence`` (L,), entry k-1 for the
k most redundant blocks removed. Block indices are 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formats import ARRAYS_FILE, jsonable, package_versions, read_folder, rebuild, write_folder, written_by_us
from .introspection import Geometry
from .metrics import Accuracy, spearman
from .results import RESULT_FILE, finite_or_none
from .settings import Settings

ABLATION_FORMAT = "deepvit-diag ablation"
ORDERINGS = ("measured", "similarity", "influence")
ABLATION_VERSION = 1
MEASURES = ("kl", "agreement", "cosine")
# A pruned model "keeps" the intact model's predictions when at least this share of top-1 classes is unchanged.
KEEPS_PREDICTIONS = 0.99


@dataclass
class AblationResult:
    """What removing blocks, attention, heads or Re-attention costs a model (module docstring).

    Attributes:
        model: who the model is (``description``, ``provenance``, ``arch``, ...).
        geometry: its token layout.
        settings: the analysis settings (k, tau, rho, maps, ...).
        images: ``description``, ``count``, ``skipped``.
        num_images: images measured.
        heads: how heads were ablated: ``"mean"`` or ``"zero"``.
        studies: the studies run (``ablation.STUDIES``).
        arrays: see the module docstring.
        accuracy: the intact model's top-k accuracy, or why there is none.
        similar_blocks: blocks whose similarity ratio exceeds rho (0-based).
        computation: processes, devices, passes over the images (and, merged from shards,
            ``shards`` and the ``weights_sha256`` of the model).
        pending: families a further stage adds: ``("pruning_measured",)`` in the merge of the
            first stage of ``--shard`` runs (``ablation_shards``); empty when complete.
    """

    model: dict[str, Any]
    geometry: Geometry
    settings: Settings
    images: dict[str, Any]
    num_images: int
    heads: str
    studies: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    accuracy: Accuracy
    similar_blocks: list[int] = field(default_factory=list)
    computation: dict[str, Any] = field(default_factory=dict)
    pending: tuple[str, ...] = ()

    def has(self, family: str) -> bool:
        """Whether the study ``family`` (e.g. ``"block"``, ``"head"``, ``"reattention"``) was run."""
        return f"{family}_kl" in self.arrays

    def values(self, family: str, measure: str) -> np.ndarray:
        """``<family>_<measure>``; for ``accuracy_change`` the top-1 accuracy minus the intact model's."""
        if measure == "accuracy_change":
            return self.arrays[f"{family}_accuracy"][..., 0] - self.accuracy.top(1)
        return self.arrays[f"{family}_{measure}"]

    def head_redundancy(self) -> np.ndarray:
        """(L, H): each head's mean cross-head similarity to the other heads of its block
        (``cross_head`` without its diagonal); NaN with a single head."""
        cross_head = self.arrays["cross_head"].astype(np.float64)
        num_heads = cross_head.shape[-1]
        if num_heads < 2:
            return np.full(cross_head.shape[:2], np.nan)
        others = cross_head.sum(axis=-1) - np.diagonal(cross_head, axis1=-2, axis2=-1)
        return others / (num_heads - 1)

    def effect(self, family: str, index: int | tuple[int, ...] = 0) -> dict[str, float | None]:
        """One ablation's numbers: ``kl``, ``agreement``, ``cosine`` and, with labels, ``top1_change``."""
        numbers = {measure: finite_or_none(self.values(family, measure)[index]) for measure in MEASURES}
        if self.accuracy.available:
            numbers["top1_change"] = finite_or_none(self.values(family, "accuracy_change")[index])
        return numbers

    def prunable(self, ordering: str) -> dict[str, Any]:
        """The most blocks ``ordering`` removes while the model keeps its predictions
        (top-1 agreement >= ``KEEPS_PREDICTIONS``): ``k``, ``blocks`` and their effect (k = 0: none)."""
        agreement = self.values(f"pruning_{ordering}", "agreement")
        keeps = np.nonzero(agreement >= KEEPS_PREDICTIONS)[0]
        # The curve need not fall monotonically; count only the unbroken run from k = 1.
        k = 0
        while k < len(keeps) and keeps[k] == k:
            k += 1
        order = self.arrays[f"pruning_{ordering}_order"]
        found = {"k": k, "blocks": sorted(int(b) for b in order[:k])}
        if k:
            found.update(self.effect(f"pruning_{ordering}", k - 1))
        return found

    def summary(self) -> dict[str, Any]:
        """The scalars the CLI prints and findings read (block indices 0-based)."""
        s: dict[str, Any] = {
            "num_images": self.num_images,
            "num_blocks": self.geometry.num_blocks,
            "heads": self.heads,
            "top1": self.accuracy.top(1),
            "top5": self.accuracy.top(5),
            "similar_blocks": list(self.similar_blocks),
        }
        if self.has("block"):
            kl = self.values("block", "kl")
            s["block_cheapest"] = int(np.nanargmin(kl))
            s["block_costliest"] = int(np.nanargmax(kl))
            s["ratio_vs_block_kl_spearman"] = finite_or_none(spearman(self.arrays["ratio"], kl))
            s["influence_vs_block_kl_spearman"] = finite_or_none(spearman(self.arrays["block_influence"], kl))
            s["block_removal"] = [self.effect("block", p) for p in range(len(kl))]
        if self.has("similar"):
            s["similar_removed"] = self.effect("similar")
        if self.has("reattention_all"):
            s["reattention_all_removed"] = self.effect("reattention_all")
            kl = self.values("reattention", "kl")
            s["reattention_most_reliant_block"] = int(np.nanargmax(kl))
        if self.has("transplant"):
            s["transplant_mean_kl"] = finite_or_none(np.nanmean(self.values("transplant", "kl")))
        if self.has("head"):
            kl = self.values("head", "kl")
            block, head = np.unravel_index(int(np.nanargmax(kl)), kl.shape)
            s["head_most_important"] = {"block": int(block), "head": int(head), **self.effect("head", (block, head))}
        s["pruning"] = {o: self.prunable(o) for o in ORDERINGS if self.has(f"pruning_{o}")}
        return s

    # ----------------------------------------------------------------------------- files

    def to_document(self) -> dict[str, Any]:
        """The ``result.json`` document: model, settings, accuracy, similar blocks and the summary."""
        return jsonable(
            {
                "format": ABLATION_FORMAT,
                "version": ABLATION_VERSION,
                "model": self.model,
                "geometry": self.geometry.to_dict(),
                "settings": self.settings.to_dict(),
                "images": self.images,
                "num_images": self.num_images,
                "heads": self.heads,
                "studies": list(self.studies),
                "accuracy": self.accuracy.to_dict(),
                "similar_blocks": self.similar_blocks,
                "computation": self.computation,
                "pending": list(self.pending),
                "summary": self.summary(),
                "versions": package_versions(),
            }
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/result.json`` and ``folder/arrays.npz``."""
        return write_folder(folder, self.to_document(), self.arrays, RESULT_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> AblationResult:
        """Read an ablation saved by ``save`` or ``deepvit-diag ablate --out``."""
        document, arrays = read_folder(folder, ABLATION_FORMAT, RESULT_FILE)
        return rebuild(folder, lambda: cls.from_document(document, arrays))

    @classmethod
    def from_document(cls, document: dict[str, Any], arrays: dict[str, np.ndarray]) -> AblationResult:
        """The result ``to_document`` and ``arrays`` describe (KeyError, TypeError or ValueError if malformed)."""
        return cls(
            model=document["model"],
            geometry=Geometry.from_dict(document["geometry"]),
            settings=Settings.from_dict(document["settings"]),
            images=document["images"],
            num_images=int(document["num_images"]),
            heads=str(document["heads"]),
            studies=tuple(document["studies"]),
            arrays=arrays,
            accuracy=Accuracy.from_dict(document["accuracy"]),
            similar_blocks=[int(b) for b in document["similar_blocks"]],
            computation=document["computation"],
            pending=tuple(str(name) for name in document.get("pending", ())),
        )


def is_ablation_file(path: Path) -> bool:
    """Whether ``path`` is a result.json or arrays.npz ``AblationResult.save`` wrote (what ``--out`` may replace)."""
    return written_by_us(path, {RESULT_FILE: (ABLATION_FORMAT,)}, (ARRAYS_FILE,))
