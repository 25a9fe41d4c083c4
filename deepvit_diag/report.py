"""``report.html``: one self-contained page per analysis or comparison, and ``sweep.html``
per sweep.

The page opens offline: plotly.js is inlined once in a single ``<script>``, every figure
is a ``<div>`` plus a short inline script, and nothing is loaded from anywhere else (no
``src=``/``href=`` to other files or hosts). Numbers and sentences come from
``deepvit_diag.summary``, figures from ``deepvit_diag.figures``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from . import catalogue
from .ablation_result import AblationResult
from .ablation_summary import ablation_findings, ablation_rows, ablation_title
from .escaping import html_text
from .figures import drawing
from .formats import package_versions
from .readers import MIXING_BLOCKS
from .results import AnalysisResult, ComparisonResult
from .settings import Settings
from .summary import (
    block_list,
    comparison_findings,
    model_findings,
    summary_row_meanings,
    summary_rows,
    summary_title,
    sweep_findings,
    sweep_rows,
    sweep_title,
)
from .sweeps import SweepResult

# The start of every report's <title>: how ``is_report_file`` tells a report.html this module wrote.
TITLE_PREFIX = "deepvit-diag: "
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

STYLE = """
body {
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2733; background: #f4f6f8;
}
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #d5dbe1; padding-bottom: 4px; }
p.lead { color: #4a5561; margin-top: 0; }
section.card, figure {
  background: #fff; border: 1px solid #dde3e9; border-radius: 8px; padding: 14px 18px; margin: 14px 0;
}
figure { overflow-x: auto; }
figcaption { color: #4a5561; font-size: 14px; margin-top: 6px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border-bottom: 1px solid #e3e8ee; padding: 6px 12px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
td.num { font-variant-numeric: tabular-nums; }
ul.findings li { margin: 6px 0; line-height: 1.45; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; font-size: 14px; }
dt { font-weight: 600; color: #38424c; }
dd { margin: 0; }
code { background: #eef1f4; padding: 1px 4px; border-radius: 3px; }
"""


@dataclass
class ReportFigure:
    """A figure with its stable HTML id, section heading and one-paragraph explanation."""

    div_id: str
    section: str
    caption: str
    figure: go.Figure


def _labelled(result: AnalysisResult | ComparisonResult, labels: Sequence[str]) -> dict[str, AnalysisResult]:
    if isinstance(result, ComparisonResult):
        return {labels[0]: result.a, labels[1]: result.b}
    return {labels[0]: result}


def report_figures(result: AnalysisResult | ComparisonResult, labels: Sequence[str]) -> list[ReportFigure]:
    """Every figure of the report, in page order: each figure of the catalogue, drawn for
    these results with its caption (also what a test expects to render)."""
    results = _labelled(result, labels)
    comparison = result if isinstance(result, ComparisonResult) else None
    return [
        ReportFigure(drawn.element_id, spec.section, drawn.caption, drawn.figure)
        for section in catalogue.SECTIONS
        for spec in catalogue.figures_in(section)
        for drawn in drawing.draw(spec, results, comparison)
    ]


# ----------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html_text(value)


def _definition_list(entries: Mapping[str, Any]) -> str:
    return (
        "<dl>"
        + "".join(
            f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in entries.items() if value not in (None, "")
        )
        + "</dl>"
    )


def _headline_table(results: Mapping[str, AnalysisResult]) -> str:
    """The headline rows, each label with its meaning as a tooltip and as a numbered note below."""
    meanings = summary_row_meanings(results)
    rows = summary_rows(results)
    head = "<tr>" + "".join(f"<th>{_e(title)}</th>" for title in ["", *results]) + "</tr>"
    body = "".join(
        f'<tr><th title="{_e(meanings[label])}">{_e(label)}<sup>{number}</sup></th>'
        + "".join(f'<td class="num">{_e(cell)}</td>' for cell in cells)
        + "</tr>"
        for number, (label, cells) in enumerate(rows, start=1)
    )
    notes = "".join(f"<li>{_e(meanings[label])}</li>" for label, _ in rows)
    return f'<table>{head}{body}</table><ol class="notes">{notes}</ol>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose first column names its rows."""
    head = "<tr>" + "".join(f"<th>{_e(title)}</th>" for title in header) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(row[0])}</th>" + "".join(f'<td class="num">{_e(cell)}</td>' for cell in row[1:]) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _model_card(label: str, result: AnalysisResult) -> str:
    model, geometry = result.model, result.geometry
    provenance = model.get("provenance") or {}
    card = provenance.get("card") or {}
    reattention = geometry.mixing_blocks
    grid_h, grid_w = geometry.grid_size
    patch_h, patch_w = geometry.patch_size
    image_h, image_w = geometry.image_size
    entries = {
        "description": model["description"],
        "source": provenance.get("source"),
        "architecture": (model.get("arch") or {}).get("family")
        if isinstance(model.get("arch"), dict)
        else model.get("arch"),
        "class": model.get("class"),
        "parameters": f"{model['num_parameters']:,}" if model.get("num_parameters") is not None else None,
        "blocks / heads": f"{geometry.num_blocks} blocks, {geometry.num_heads} heads",
        "tokens": f"{geometry.num_tokens} ({geometry.num_prefix_tokens} prefix + {grid_h} x {grid_w} patches "
        f"of {patch_h} x {patch_w} px, image {image_h} x {image_w} px)",
        **(
            {MIXING_BLOCKS[geometry.head_mixing]: block_list(reattention, geometry.num_blocks)}
            if reattention
            else {"head mixing": "none (plain attention in every block)"}
        ),
        "labels (accuracy)": result.accuracy.labels,
    }
    card_table = (
        "<h4>model card</h4>" + _table(["field", "value"], [[key, _card_value(card[key])] for key in sorted(card)])
        if card
        else ""
    )
    return f'<section class="card"><h3>{_e(label)}</h3>{_definition_list(entries)}{card_table}</section>'


def _card_value(value: Any) -> str:
    """A model card's value as text: numbers and words as they are, lists and objects as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _settings_entries(result: AnalysisResult) -> dict[str, Any]:
    """The settings under their labels (``Settings`` field metadata), then how they ran."""
    entries = _labelled_settings(result.settings)
    entries["batch size used (after out-of-memory retries)"] = result.computation.get("final_batch_size")
    return entries


def _labelled_settings(settings: Settings) -> dict[str, Any]:
    return {spec.metadata["label"]: getattr(settings, spec.name) for spec in fields(Settings)}


def _images_card(images: Mapping[str, Any]) -> str:
    entries = {
        "images": images["description"],
        "images analysed": images["count"],
        "unreadable files skipped": images.get("skipped", 0),
    }
    return f'<section class="card">{_definition_list(entries)}</section>'


def _versions_card(command: str | None) -> str:
    entries = {"command": command, **{f"{name} version": version for name, version in package_versions().items()}}
    return f'<section class="card">{_definition_list(entries)}</section>'


def _findings_card(findings: Sequence[str]) -> str:
    return (
        '<section class="card"><ul class="findings">'
        + "".join(f"<li>{_e(s)}</li>" for s in findings)
        + "</ul></section>"
    )


def _page(title: str, heading: str, lead: str, parts: Sequence[str]) -> str:
    """The whole page: head with plotly.js inlined once, the heading, the lead, ``parts``."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{TITLE_PREFIX}{_e(title)}</title>",
            f"<style>{STYLE}</style>",
            # Inlined once, before any figure script runs: the file must open without network.
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head><body><main>",
            f"<h1>{_e(heading)}</h1>",
            f'<p class="lead">{_e(lead)}, {_e(dt.datetime.now().strftime("%Y-%m-%d %H:%M"))}. '
            "Method: Zhou et al. 2021, DeepViT. Blocks and heads are numbered from 1, as in the paper.</p>",
            *parts,
            "</main></body></html>",
        ]
    )


def _figure_html(item: ReportFigure) -> str:
    div = item.figure.to_html(full_html=False, include_plotlyjs=False, div_id=item.div_id, config=PLOTLY_CONFIG)
    return f"<figure>{div}<figcaption>{_e(item.caption)}</figcaption></figure>"


def build_report(result: AnalysisResult | ComparisonResult, labels: Sequence[str], command: str | None = None) -> str:
    """The whole page as a string. ``labels`` name the model(s) (one for an analysis, two
    for a comparison); ``command`` is the command line that produced it, if any."""
    results = _labelled(result, labels)
    first = next(iter(results.values()))
    if isinstance(result, ComparisonResult):
        title = f"{labels[0]} vs {labels[1]}"
        findings = comparison_findings(labels[0], labels[1], result)
    else:
        title = labels[0]
        findings = model_findings(labels[0], result)
    parts = [
        "<h2>Headline numbers</h2>",
        f'<section class="card"><p>{_e(summary_title(results))}</p>{_headline_table(results)}</section>',
        "<h2>Findings</h2>",
        _findings_card(findings),
        "<h2>Models</h2>",
        *(_model_card(label, analysis) for label, analysis in results.items()),
        "<h2>Images and parameters</h2>",
        _images_card(first.images),
        f'<section class="card">{_definition_list(_settings_entries(first))}</section>',
        _versions_card(command),
    ]
    section = None
    for item in report_figures(result, labels):
        if item.section != section:
            section = item.section
            parts.append(f"<h2>{_e(section)}</h2>")
        parts.append(_figure_html(item))
    return _page(title, f"Attention collapse: {title}", "deepvit-diag report", parts)


def is_report_file(path: Path) -> bool:
    """Whether ``path`` is a report.html or sweep.html that this module wrote (what ``--out`` may replace)."""
    if path.name not in ("report.html", "sweep.html"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f"<title>{TITLE_PREFIX}".encode() in head


def write_report(
    path: str | Path, result: AnalysisResult | ComparisonResult, labels: Sequence[str], command: str | None = None
) -> Path:
    path = Path(path)
    path.write_text(build_report(result, labels, command), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- sweep.html


def sweep_report_figures(sweep: SweepResult, relative_depth: bool = False) -> list[ReportFigure]:
    """Every figure of sweep.html, in page order (``drawing.draw_sweep``)."""
    return [
        ReportFigure(drawn.element_id, "Sweep", drawn.caption, drawn.figure)
        for drawn in drawing.draw_sweep(sweep, relative_depth=relative_depth)
    ]


def build_sweep_report(sweep: SweepResult, command: str | None = None, relative_depth: bool = False) -> str:
    """sweep.html as a string: the table of checkpoints, the findings, every sweep figure,
    the images and settings. ``relative_depth`` draws the per-block curves over block /
    number of blocks."""
    header, rows = sweep_rows(sweep)
    kind = "training series" if sweep.is_series else "depth sweep"
    parts = [
        "<h2>Checkpoints</h2>",
        f'<section class="card"><p>{_e(sweep_title(sweep))}</p>{_table(header, rows)}</section>',
        "<h2>Findings</h2>",
        _findings_card(sweep_findings(sweep)),
        "<h2>Figures</h2>",
        *(_figure_html(item) for item in sweep_report_figures(sweep, relative_depth)),
        "<h2>Images and parameters</h2>",
        _images_card(sweep.images),
        f'<section class="card">{_definition_list(_labelled_settings(sweep.settings))}</section>',
        _versions_card(command),
    ]
    title = f"{kind} of {len(sweep.entries)} checkpoints"
    return _page(title, f"Attention collapse across a {title}", "deepvit-diag sweep report", parts)


def write_sweep_report(
    path: str | Path, sweep: SweepResult, command: str | None = None, relative_depth: bool = False
) -> Path:
    path = Path(path)
    path.write_text(build_sweep_report(sweep, command, relative_depth), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- an ablation's report.html


def build_ablation_report(result: AblationResult, label: str, command: str | None = None) -> str:
    """report.html of ``deepvit-diag ablate``: the per-block table, the findings, the figures
    (``figures.drawing.draw_ablation``), the images and settings."""
    header, rows = ablation_rows(result)
    parts = [
        "<h2>Per block</h2>",
        f'<section class="card"><p>{_e(ablation_title(result))}</p>{_table(header, rows)}</section>',
        "<h2>Findings</h2>",
        _findings_card(ablation_findings(label, result)),
        "<h2>Figures</h2>",
        *(
            _figure_html(ReportFigure(drawn.element_id, catalogue.ABLATION_SECTION, drawn.caption, drawn.figure))
            for drawn in drawing.draw_ablation(result)
        ),
        "<h2>Images and parameters</h2>",
        _images_card(result.images),
        f'<section class="card">{_definition_list(_labelled_settings(result.settings))}</section>',
        _versions_card(command),
    ]
    return _page(
        f"ablation of {label}",
        f"From similar to redundant: ablations of {label}",
        "deepvit-diag ablation report",
        parts,
    )


def write_ablation_report(path: str | Path, result: AblationResult, label: str, command: str | None = None) -> Path:
    path = Path(path)
    path.write_text(build_ablation_report(result, label, command), encoding="utf-8")
    return path
