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
from ..summary import NOT_IN_RESULT, NOT_IN_SWEEP
from .style import finish, no_data_note

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
    get the labels as Plotly text (``escaping.plotly_label``), the captions as they are.
    Results saved before ``spec``'s metric existed are left out, and the caption says so; without
    any other the figure is only that note."""
    metric = catalogue.metric_of(spec)
    needed = set(metric.arrays) if metric is not None else set()
    lacking = [label for label, result in results.items() if not needed <= result.arrays.keys()]
    if lacking:
        return _without(spec, metric, results, lacking, examples=examples, **options)
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


def _without(
    spec: catalogue.Figure, metric: catalogue.Metric, results: Results, lacking: list[str], **options: object
) -> list[DrawnFigure]:
    """``draw`` of the results not in ``lacking``, whose captions say what the others lack; a note alone
    when every result lacks the metric."""
    title = f"{metric.name[0].upper()}{metric.name[1:]}"
    kept = {label: result for label, result in results.items() if label not in lacking}
    if not kept:
        return [DrawnFigure(spec.element_id, f"{title}: {NOT_IN_RESULT}", _note(title, NOT_IN_RESULT))]
    drawn = draw(spec, kept, None, **options)
    note = f" ({', '.join(lacking)}: {metric.name} {NOT_IN_RESULT})"
    return [dataclasses.replace(figure, caption=figure.caption + note) for figure in drawn]


def _note(title: str, text: str) -> go.Figure:
    """A figure that only says ``text``: what stands in for one the results cannot give."""
    fig = go.Figure()
    no_data_note(fig, plotly_label(text))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return finish(fig, title, 200)


# Sweep figures that draw every checkpoint's collapse start, which checkpoints measured before
# the attention regimes lack (``SweepResult.without_verdict``).
_DRAW_COLLAPSE_START = ("sweep_collapse_start",)


def sweep_figure(spec: catalogue.Figure, sweep: SweepResult, **options: object) -> go.Figure:
    """``spec``'s figure of ``sweep``, or a note where it needs collapse starts some checkpoints lack."""
    lacking = sweep.without_verdict()
    if spec.key in _DRAW_COLLAPSE_START and lacking:
        labels = ", ".join(entry.label for entry in lacking)
        return _note("Where the collapsed run starts", f"Collapse start of {labels}: {NOT_IN_SWEEP}")
    return spec.function(sweep, **options)


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
        figure = sweep_figure(spec, sweep, **({"relative_depth": relative_depth} if takes_depth else {}))
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
