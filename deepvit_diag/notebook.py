"""What a notebook shows of a result: its figures by name (``plot``), its summary table and
findings as HTML (``_repr_html_``), and a one-line ``repr``.

The result classes call these functions from their methods, so that ``res.plot("ratio")``,
``cmp.plot("cka")`` and ``sweep.plot("ratio")`` draw the catalogue's figures and Jupyter
renders a result as a table. Everything user-given that reaches HTML is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import catalogue
from .errors import DiagError
from .escaping import html_text
from .figures.drawing import draw, sweep_figure
from .figures.style import model_label
from .summary import comparison_findings, model_findings, summary_rows, sweep_findings, sweep_rows

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .results import AnalysisResult, ComparisonResult
    from .sweeps import SweepResult

# Short names of the catalogue's figures for ``plot(name)``; a figure's key works too.
SHORT_NAMES = {
    "similarity": "layer_similarity",
    "ratio": "similarity_ratio",
    "cross_head": "cross_head_curves",
    "cross_head_matrices": "cross_head_matrices",
    "entropy": "entropy_curves",
    "attention_distance": "attention_distance_curves",
    "token_similarity": "token_similarity_curves",
    "rank_residual": "rank_residual_curves",
    "cka": "cka_within",
    "theta": "theta_heatmaps",
    "theta_distances": "theta_distances",
    "norm_gains": "norm_gains",
    "cls": "cls_attention",
}


def _analysis_figures() -> dict[str, catalogue.Figure]:
    specs = {spec.key: spec for metric in catalogue.METRICS for spec in metric.figures}
    return {**specs, **{short: specs[key] for short, key in SHORT_NAMES.items()}}


def _sweep_figures() -> dict[str, catalogue.Figure]:
    specs = {spec.key: spec for spec in catalogue.SWEEP_FIGURES}
    return {**specs, **{key.removeprefix("sweep_").removesuffix("_curves"): spec for key, spec in specs.items()}}


def _choose(name: str, figures: Mapping[str, catalogue.Figure], scopes: Sequence[str]) -> catalogue.Figure:
    spec = figures.get(name)
    if spec is None or spec.scope not in scopes:
        names = sorted(short for short, candidate in figures.items() if candidate.scope in scopes)
        raise DiagError(f"no figure named {name!r} here; choose one of {', '.join(names)}")
    return spec


def _only(drawn: list, name: str, why: str) -> go.Figure:
    if not drawn:
        raise DiagError(f"no figure {name!r}: {why}")
    return drawn[0].figure


def plot_analysis(result: AnalysisResult, name: str, label: str | None, example: int, options: dict) -> go.Figure:
    """Figure ``name`` of one analysis (a key of ``SHORT_NAMES`` or of the catalogue)."""
    spec = _choose(name, _analysis_figures(), ("models", "model", "example"))
    drawn = draw(spec, {label or model_label(result): result}, examples=[example], **options)
    return _only(drawn, name, "this model has no head-mixing blocks")


def plot_comparison(comparison: ComparisonResult, name: str, options: dict) -> go.Figure:
    """Figure ``name`` of a comparison: ``cka`` across the two models, or any figure that
    draws several models (both side by side)."""
    figures = {**_analysis_figures(), "cka": catalogue.figure_named("cka_across")}
    spec = _choose(name, figures, ("models", "comparison"))
    drawn = draw(spec, comparison.labelled(), comparison, **options)
    return _only(drawn, name, "neither model has head-mixing blocks")


def plot_sweep(sweep: SweepResult, name: str, options: dict) -> go.Figure:
    """Figure ``name`` of a sweep (``similar_blocks``, ``collapse_start``, ``accuracy``,
    ``ratio``, ``adjacent``, ``entropy``, or a catalogue key)."""
    return sweep_figure(_choose(name, _sweep_figures(), ("sweep",)), sweep, **options)


def figure_names(kind: str) -> list[str]:
    """The names ``plot`` takes for an ``"analysis"``, ``"comparison"`` or ``"sweep"``."""
    if kind == "sweep":
        return sorted(_sweep_figures())
    scopes = ("models", "model", "example") if kind == "analysis" else ("models", "comparison")
    names = [name for name, spec in _analysis_figures().items() if spec.scope in scopes]
    return sorted({*names, *(["cka"] if kind == "comparison" else [])})


# ----------------------------------------------------------------------------- HTML


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html_text(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _findings(findings: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{html_text(finding)}</li>" for finding in findings) + "</ul>"


def _page(title: str, table: str, findings: Sequence[str]) -> str:
    return f"<div><strong>{html_text(title)}</strong>{table}{_findings(findings)}</div>"


def analysis_html(result: AnalysisResult) -> str:
    """The summary table and findings of one analysis, as HTML."""
    label = model_label(result)
    rows = summary_rows({label: result})
    table = _table(["", label], [[name, *cells] for name, cells in rows])
    return _page(f"AnalysisResult: {result.num_images} images", table, model_findings(label, result))


def comparison_html(comparison: ComparisonResult) -> str:
    """The summary table of both models and the findings of the comparison, as HTML."""
    results = comparison.labelled()
    label_a, label_b = results
    table = _table(["", label_a, label_b], [[name, *cells] for name, cells in summary_rows(results)])
    findings = [
        *model_findings(label_a, comparison.a),
        *model_findings(label_b, comparison.b),
        *comparison_findings(label_a, label_b, comparison),
    ]
    return _page(f"ComparisonResult: {comparison.a.num_images} images", table, findings)


def sweep_html(sweep: SweepResult) -> str:
    """The sweep's table (one row per checkpoint) and findings, as HTML."""
    header, rows = sweep_rows(sweep)
    return _page(f"SweepResult: {len(sweep.entries)} checkpoints", _table(header, rows), sweep_findings(sweep))


def short_repr(kind: str, values: Mapping[str, Any]) -> str:
    """``kind(name=value, ...)`` on one line, e.g. ``AnalysisResult(model='vit_tiny', blocks=12)``."""
    return f"{kind}(" + ", ".join(f"{name}={value!r}" for name, value in values.items()) + ")"
