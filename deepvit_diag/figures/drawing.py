"""Catalogue figures drawn for results, with their captions and element ids: what
``report.html``, ``sweep.html`` and the app show."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from .. import catalogue
from ..escaping import plotly_label

if TYPE_CHECKING:
    from ..ablation_result import AblationResult
    from ..results import AnalysisResult, ComparisonResult
    from ..sweeps import SweepResult

    Results = Mapping[str, AnalysisResult]


@dataclass
class DrawnFigure:
    """A figure of the catalogue drawn for some results, with its caption and element id."""

    element_id: str
    caption: str
    figure: go.Figure


def draw(
    spec: catalogue.Figure,
    results: Results,
    comparison: ComparisonResult | None = None,
    *,
    examples: Sequence[int] | None = None,
    **options: object,
) -> list[DrawnFigure]:
    """The figures of catalogue entry ``spec`` for ``results`` (label -> result), with their
    captions filled in: one figure, one per model, one per model and example image
    (``examples``, 0-based; default all kept), or one for ``comparison`` (none without it),
    as ``spec.scope`` says. Figures a model cannot have (Theta of a plain ViT) are left out.
    ``options`` go to the figure function (e.g. ``block`` of ``cross_head_matrices``). The figures
    get the labels as Plotly text (``escaping.plotly_label``), the captions as they are."""
    function = spec.function
    shown = {label: plotly_label(label) for label in results}
    drawn_results = {shown[label]: result for label, result in results.items()}
    options = {**spec.arguments, **options}
    first = next(iter(results.values()))
    fields = {"rho": first.settings.rho, "k": first.settings.k, "tau": first.settings.tau}
    base_id = spec.element_id
    drawn = []  # (element id, figure, the results it draws, caption fields)
    if spec.scope == "models":
        drawn.append((base_id, function(drawn_results, **options), results, fields))
    elif spec.scope == "model":
        for index, (label, result) in enumerate(results.items()):
            figure = function(result, label=shown[label], **options)
            drawn.append((f"{base_id}-{index}", figure, {label: result}, {**fields, "label": label}))
    elif spec.scope == "example":
        for index, (label, result) in enumerate(results.items()):
            chosen = range(len(result.arrays["example_images"])) if examples is None else examples
            for example in chosen:
                figure = function(result, example, label=shown[label], **options)
                values = {**fields, "label": label, "example": example + 1}
                drawn.append((f"{base_id}-{index}-{example}", figure, {label: result}, values))
    elif comparison is not None:
        label_a, label_b = list(results)
        figure = function(comparison, shown[label_a], shown[label_b], **options)
        drawn.append((base_id, figure, results, {**fields, "label_a": label_a, "label_b": label_b}))
    return [
        DrawnFigure(element, spec.caption_for(drawn_for, values, options), fig)
        for element, fig, drawn_for, values in drawn
        if fig is not None
    ]


def draw_sweep(sweep: SweepResult, *, relative_depth: bool = False) -> list[DrawnFigure]:
    """Every figure of a sweep (``catalogue.SWEEP_FIGURES``), with its caption and element id,
    in page order; ``relative_depth`` goes to the figures that draw blocks on their x axis. Labels and
    groups are drawn as Plotly text (``escaping.plotly_label``)."""
    settings = sweep.settings
    sweep = dataclasses.replace(
        sweep,
        entries=[
            dataclasses.replace(entry, label=plotly_label(entry.label), group=plotly_label(entry.group))
            for entry in sweep.entries
        ],
    )
    fields = {"rho": settings.rho, "k": settings.k, "tau": settings.tau, "x": sweep.x_title}
    drawn = []
    for spec in catalogue.SWEEP_FIGURES:
        takes_depth = "relative_depth" in inspect.signature(spec.function).parameters
        figure = spec.function(sweep, **({"relative_depth": relative_depth} if takes_depth else {}))
        drawn.append(DrawnFigure(spec.element_id, spec.caption_for({}, fields), figure))
    return drawn


def draw_ablation(result: AblationResult) -> list[DrawnFigure]:
    """Every figure of an ablation (``catalogue.ABLATION_FIGURES``) its studies give, with its
    caption and element id, in page order."""
    drawn = []
    for spec in catalogue.ABLATION_FIGURES:
        figure = spec.function(result)
        if figure is not None:
            drawn.append(DrawnFigure(spec.element_id, spec.caption_for({}, {"rho": result.settings.rho}), figure))
    return drawn
