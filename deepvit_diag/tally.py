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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import DiagError
from .introspection import Geometry
from .metrics import MIN_UNBIASED_EXAMPLES, Accuracy, cka_from_hsic
from .results import AnalysisResult
from .settings import Settings

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


@dataclass
class ModelParts:
    """What a model's results need besides the sums: who it is, its geometry, the arrays
    read from its weights (Theta) and where its labels came from (or why there are none)."""

    model: dict[str, Any]
    geometry: Geometry
    weight_arrays: dict[str, np.ndarray]
    labels: str


def build_results(
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
    """How processes or shards computed together (each ``{"final_batch_size", "rows_per_chunk",
    "processes", "devices"}``): the smallest batch size any ended with, each model's largest
    chunk of maps (when every part records them: shards written before they were), all
    processes, all devices."""
    combined = {
        "final_batch_size": min(part["final_batch_size"] for part in parts),
        "processes": sum(part["processes"] for part in parts),
        "devices": [device for part in parts for device in part["devices"]],
    }
    if all("rows_per_chunk" in part for part in parts):
        per_model = zip(*(part["rows_per_chunk"] for part in parts))
        combined["rows_per_chunk"] = [max((c for c in chunks if c is not None), default=None) for chunks in per_model]
    return combined
