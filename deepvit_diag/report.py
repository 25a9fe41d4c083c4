"""``report.html``: one self-contained page per analysis or comparison.

The page opens offline: plotly.js is inlined once in a single ``<script>``, every figure
is a ``<div>`` plus a short inline script, and nothing is loaded from anywhere else (no
``src=``/``href=`` to other files or hosts). Numbers and sentences come from
``deepvit_diag.summary``, figures from ``deepvit_diag.figures``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from . import figures
from .results import AnalysisResult, ComparisonResult, package_versions
from .summary import comparison_findings, model_findings, summary_rows, summary_title

PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2733; background: #f4f6f8; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #d5dbe1; padding-bottom: 4px; }
p.lead { color: #4a5561; margin-top: 0; }
section.card, figure { background: #fff; border: 1px solid #dde3e9; border-radius: 8px; padding: 14px 18px; margin: 14px 0; }
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


PARAMETER_NAMES = {
    "k": "k: neighbour blocks in the similarity ratio",
    "tau": "tau: cosine threshold of the similarity ratio",
    "rho": "rho: ratio above which a block is similar",
    "axis": "attention vectors (columns = paper Eqn 2)",
    "maps": "maps the headline numbers use",
    "dtype": "compute dtype",
    "batch_size": "batch size requested",
    "final_batch_size": "batch size used (after out-of-memory retries)",
    "device": "device",
    "cka_chunk": "images per CKA minibatch",
    "num_examples": "example images kept",
    "num_workers": "image-decoding worker processes",
}


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


def _same_depth(results: Mapping[str, AnalysisResult]) -> bool:
    """Two models whose similarity matrices can be subtracted (the B - A panel)."""
    return len(results) == 2 and len({result.model["num_blocks"] for result in results.values()}) == 1


def report_figures(result: AnalysisResult | ComparisonResult, labels: Sequence[str]) -> list[ReportFigure]:
    """Every figure of the report, in page order (also what a test expects to render)."""
    results = _labelled(result, labels)
    rho = next(iter(results.values())).params["rho"]
    items = [
        ReportFigure(
            "fig-layer-similarity",
            "Cross-layer similarity",
            (
                "Cosine similarity between the attention maps of block p and block q (paper Eqn 2), averaged over images, "
                "heads and tokens. A bright square block in the lower right means the deep blocks attend alike: attention collapse."
                + (
                    " The last panel is B minus A: blue where B's blocks are less alike than A's."
                    if _same_depth(results)
                    else ""
                )
            ),
            figures.layer_similarity(results),
        ),
        ReportFigure(
            "fig-similarity-ratio",
            "Similarity ratio",
            (
                f"Share of attention vectors of each block that are similar to the neighbouring blocks' (paper Fig. 3a). "
                f"Blocks above the dashed line rho = {rho:g} count as similar (filled markers)."
            ),
            figures.similarity_ratio(results),
        ),
        ReportFigure(
            "fig-cross-head",
            "Heads",
            (
                "Mean similarity between the attention maps of different heads of the same block (paper Fig. 3c). "
                "Low values mean the heads look at different things."
            ),
            figures.cross_head_curves(results),
        ),
        ReportFigure(
            "fig-cross-head-last",
            "Heads",
            ("Head-by-head similarity in the last block of each model, on one colour scale."),
            figures.cross_head_matrices(results),
        ),
    ]
    for index, (label, analysis) in enumerate(results.items()):
        theta = figures.theta_heatmaps(analysis, label)
        if theta is not None:
            items.append(
                ReportFigure(
                    f"fig-theta-{index}",
                    "Re-attention matrices Θ",
                    (
                        f"{label}: the learned head-mixing matrix of each Re-attention block. The identity (a red diagonal) "
                        "would mean no mixing; hover a cell for the block's distance from identity and from a permutation."
                    ),
                    theta,
                )
            )
    items += [
        ReportFigure(
            "fig-entropy",
            "Attention statistics per block",
            (
                "Entropy of each head's softmax attention, averaged over queries and images; dots are single heads. "
                "The dotted line is uniform attention."
            ),
            figures.entropy_curves(results),
        ),
        ReportFigure(
            "fig-attention-distance",
            "Attention statistics per block",
            (
                "Mean distance in pixels between a query patch and the patches it attends to (ViT paper Fig. 7); dots are single heads."
            ),
            figures.attention_distance_curves(results),
        ),
        ReportFigure(
            "fig-token-similarity",
            "Attention statistics per block",
            (
                "Mean cosine similarity between the patch tokens a block outputs (Gong et al. 2021): near 1 means over-smoothed tokens."
            ),
            figures.token_similarity_curves(results),
        ),
        ReportFigure(
            "fig-rank-residual",
            "Attention statistics per block",
            (
                "Relative distance of each block's output from a rank-one matrix (Dong et al. 2021): near 0 means rank collapse."
            ),
            figures.rank_residual_curves(results),
        ),
        ReportFigure(
            "fig-cka-within",
            "Representation similarity (CKA)",
            (
                "Linear CKA between the outputs of two blocks of the same model (Kornblith et al. 2019): 1 means the same representation."
            ),
            figures.cka_within(results),
        ),
    ]
    if isinstance(result, ComparisonResult):
        items.append(
            ReportFigure(
                "fig-cka-across",
                "Representation similarity (CKA)",
                (f"Linear CKA between block i of {labels[0]} (rows) and block j of {labels[1]} (columns)."),
                figures.cka_across(result, labels[0], labels[1]),
            )
        )
    for index, (label, analysis) in enumerate(results.items()):
        for example in range(len(analysis.arrays["example_images"])):
            items.append(
                ReportFigure(
                    f"fig-cls-{index}-{example}",
                    "Attention of the CLS token",
                    (
                        f"{label}, example image {example + 1}: how much the CLS token attends to each patch, per head, in the first, "
                        "middle and last block."
                        + (
                            " Re-attention blocks show the softmax maps (pre-Θ) and the maps after Θ (post-Θ)."
                            if analysis.model["reattention_blocks"]
                            else ""
                        )
                    ),
                    figures.cls_attention(analysis, example, label=label),
                )
            )
    return items


# ----------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    return html.escape(str(value))


def _definition_list(entries: Mapping[str, Any]) -> str:
    return (
        "<dl>"
        + "".join(
            f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in entries.items() if value not in (None, "")
        )
        + "</dl>"
    )


def _headline_table(results: Mapping[str, AnalysisResult]) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{_e(label)}</th>" for label in results) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(label)}</th>" + "".join(f'<td class="num">{_e(cell)}</td>' for cell in cells) + "</tr>"
        for label, cells in summary_rows(results)
    )
    return f"<table>{head}{body}</table>"


def _model_card(label: str, result: AnalysisResult) -> str:
    model = result.model
    provenance = model.get("provenance") or {}
    card = provenance.get("card") or {}
    reattention = model["reattention_blocks"]
    entries = {
        "description": model["description"],
        "source": provenance.get("source"),
        "architecture": (model.get("arch") or {}).get("family")
        if isinstance(model.get("arch"), dict)
        else model.get("arch"),
        "class": model.get("class"),
        "parameters": f"{model['num_parameters']:,}" if model.get("num_parameters") is not None else None,
        "blocks / heads": f"{model['num_blocks']} blocks, {model['num_heads']} heads",
        "tokens": f"{model['num_tokens']} ({model['num_prefix_tokens']} prefix + {model['grid_size'][0]} x {model['grid_size'][1]} patches "
        f"of {model['patch_size'][0]} x {model['patch_size'][1]} px, image {model['image_size'][0]} x {model['image_size'][1]} px)",
        "Re-attention blocks": ", ".join(str(block + 1) for block in reattention) if reattention else "none",
        "model card": json.dumps(card, sort_keys=True) if card else None,
    }
    return f'<section class="card"><h3>{_e(label)}</h3>{_definition_list(entries)}</section>'


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
    items = report_figures(result, labels)
    images = first.images

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>deepvit-diag: {_e(title)}</title>",
        f"<style>{STYLE}</style>",
        # Inlined once, before any figure script runs: the file must open without network.
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body><main>",
        f"<h1>Attention collapse: {_e(title)}</h1>",
        f'<p class="lead">deepvit-diag report, {_e(dt.datetime.now().strftime("%Y-%m-%d %H:%M"))}. '
        "Method: Zhou et al. 2021, DeepViT. Blocks and heads are numbered from 1, as in the paper.</p>",
        "<h2>Headline numbers</h2>",
        f'<section class="card"><p>{_e(summary_title(results))}</p>{_headline_table(results)}</section>',
        "<h2>Findings</h2>",
        '<section class="card"><ul class="findings">'
        + "".join(f"<li>{_e(s)}</li>" for s in findings)
        + "</ul></section>",
        "<h2>Models</h2>",
        *(_model_card(label, analysis) for label, analysis in results.items()),
        "<h2>Images and parameters</h2>",
        '<section class="card">'
        + _definition_list(
            {
                "images": images["description"],
                "images analysed": images["count"],
                "unreadable files skipped": images.get("skipped", 0),
            }
        )
        + "</section>",
        f'<section class="card">{_definition_list({PARAMETER_NAMES.get(key, key): value for key, value in first.params.items()})}</section>',
        '<section class="card">'
        + _definition_list(
            {"command": command, **{f"{name} version": version for name, version in package_versions().items()}}
        )
        + "</section>",
    ]
    section = None
    for item in items:
        if item.section != section:
            section = item.section
            parts.append(f"<h2>{_e(section)}</h2>")
        parts.append(_figure_html(item))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(
    path: str | Path, result: AnalysisResult | ComparisonResult, labels: Sequence[str], command: str | None = None
) -> Path:
    path = Path(path)
    path.write_text(build_report(result, labels, command), encoding="utf-8")
    return path
