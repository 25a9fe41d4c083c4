"""Headline numbers and plain-sentence findings, for the terminal, the reports and the app.

Every number comes from ``AnalysisResult.summary()`` / ``ComparisonResult.summary()``, or
from the summaries a ``SweepResult`` keeps of each checkpoint (block indices there are
0-based; everything shown here numbers blocks from 1, as the paper does). Nothing is
measured here: this module only words and formats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .readers import TALKING_HEADS
from .settings import ENTROPY_LEVELS

if TYPE_CHECKING:
    from .results import AnalysisResult, ComparisonResult
    from .sweeps import SweepResult

KIND_WORDS = {"pre": "pre-Θ", "post": "post-Θ"}
# Why pre-Θ and post-Θ numbers are not compared directly, said wherever both appear.
KIND_SCALES = (
    "pre-Θ maps are the softmax maps (non-negative, rows sum to 1), so their cosine similarities lie in [0, 1]; "
    "post-Θ maps are what multiplies V after Θ and the Norm (BatchNorm outputs, centred and signed), so theirs "
    "lie in [-1, 1] and are not on the same scale: compare counts within one kind, not across kinds"
)

# What the outputs say in place of an entry a result lacks because it was saved before deepvit-diag
# measured it (``AnalysisResult.not_in_result``).
NOT_IN_RESULT = "not in this result; re-run analyze to get it"
# The same of a checkpoint that a sweep or a monitor measured then (``SweepResult.without_verdict``).
NOT_IN_SWEEP = "not in this sweep; re-run the sweep (or the monitor) to get it"

# The paper's Fig. 3(c) finds heads within a ViT block dissimilar: cross-head similarity below 30%.
PAPER_CROSS_HEAD = 0.3
PAPER_CROSS_HEAD_NOTE = f"the paper finds below {PAPER_CROSS_HEAD:.2f} for ViT"


def _number(value: float | None, digits: int = 3, sign: str = "") -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0, so tiny negatives do not print as "-0.000".
    return "n/a" if value is None else f"{round(value, digits) + 0.0:{sign}.{digits}f}"


def block_list(indices: Sequence[int], num_blocks: int | None = None) -> str:
    """0-based indices as 1-based block numbers with runs joined: [0, 2, 3, 4] -> '1, 3-5';
    every one of ``num_blocks`` blocks -> 'all 32'."""
    if num_blocks is not None and num_blocks > 1 and sorted(set(indices)) == list(range(num_blocks)):
        return f"all {num_blocks}"
    numbers = sorted(index + 1 for index in indices)
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def _trend(summary: dict[str, Any], name: str, unit: str) -> str:
    first, last, slope = summary[f"{name}_first_block"], summary[f"{name}_last_block"], summary[f"{name}_trend"]
    return f"{_number(first, 2)} → {_number(last, 2)} {unit} (fit {_number(slope, 3, '+')}/block)"


def collapse_start_cell(summary: dict[str, Any], missing: str = NOT_IN_RESULT) -> str:
    """Where collapse starts (numbered from 1), "none", or ``missing`` when the summary lacks it."""
    if "collapse_start" not in summary:
        return missing
    return "none" if summary["collapse_start"] is None else str(summary["collapse_start"] + 1)


def _similar(summary: dict[str, Any]) -> str:
    text = f"{summary['similar_blocks']} of {summary['num_blocks']}"
    return f"{text}: {block_list(summary['similar_block_indices'])}" if summary["similar_blocks"] else text


def _entropy_levels(summary: dict[str, Any]) -> str:
    counts = " · ".join(str(summary[f"blocks_entropy_at_most_{level:g}"]) for level in ENTROPY_LEVELS)
    return f"{counts} of {summary['num_blocks']}"


def percent(value: float | None) -> str:
    """A share in [0, 1] as a percentage with one decimal; "n/a" for None."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def accuracy_cell(summary: dict[str, Any]) -> str:
    """Top-1 / top-5 accuracy and the images counted, or why there is none."""
    if summary["accuracy_top1"] is None:
        return f"n/a: {summary['accuracy_labels']}"
    return (
        f"{percent(summary['accuracy_top1'])} / {percent(summary['accuracy_top5'])} "
        f"({summary['accuracy_images']} labelled images)"
    )


def _near_uniform(summary: dict[str, Any], missing: str = NOT_IN_RESULT) -> str:
    if "near_uniform_block_indices" not in summary:
        return missing
    indices = summary["near_uniform_block_indices"]
    return f"{len(indices)} of {summary['num_blocks']}" + (f": {block_list(indices)}" if indices else "")


def _per_kind(name: str, cell: Any, meaning: str, kind: str | None) -> tuple[str, Any, str]:
    """A headline row of one map kind (``kind``; None: the default kind, no suffix)."""
    if kind is None:
        return name, cell, meaning
    return (
        f"{name}, {KIND_WORDS[kind]}",
        lambda s: cell({**s, **_kind_summary(s, kind)}),
        f"{meaning}; of the {KIND_WORDS[kind]} maps",
    )


def _kind_summary(summary: dict[str, Any], kind: str) -> dict[str, Any]:
    suffix = f"_{kind}"
    return {key[: -len(suffix)]: value for key, value in summary.items() if key.endswith(suffix)}


def _headline_rows(rho: float, kinds: tuple[str | None, ...] = (None,)) -> list[tuple[str, Any, str]]:
    """(row label, cell of one summary, what the row means) of the headline table; the verdict rows
    once per map kind of ``kinds`` (None: the settings' kind, no suffix)."""
    levels = " and ".join(f"{level:.0%}" for level in ENTROPY_LEVELS)
    verdict = [
        (
            f"similar blocks (ratio > {rho:g})",
            _similar,
            "blocks whose similarity ratio (the share of their attention vectors whose mean cosine similarity "
            f"with the same vectors in the k blocks on each side exceeds tau; paper Fig. 3) is above rho = {rho:g}",
        ),
        (
            "near-uniform blocks (not collapse)",
            _near_uniform,
            "blocks whose attention is spread almost evenly over the tokens: maps that alike are similar to each "
            "other whatever the depth, so their similarity says nothing about collapse",
        ),
        (
            "collapse starts at block",
            collapse_start_cell,
            "the first block of the run of similar, selective blocks that lasts to the end of the network",
        ),
    ]
    return [
        ("images", lambda s: str(s["num_images"]), "images analysed"),
        *(_per_kind(name, cell, meaning, kind) for name, cell, meaning in verdict for kind in kinds),
        *(
            (
                f"adjacent similarity, {part} third",
                lambda s, part=part: _number(s[f"adjacent_similarity_{part}_third"]),
                f"cross-layer similarity of each block's attention maps with the next block's (paper Eqn 2), mean "
                f"over the {part} third of the blocks (1 = identical maps)",
            )
            for part in ("first", "last")
        ),
        (
            "cross-head similarity",
            lambda s: _number(s["cross_head_similarity"]),
            "mean cosine similarity between the attention maps of two heads of the same block (1 = heads alike)",
        ),
        (
            "entropy, first → last block",
            lambda s: _trend(s, "entropy", "nats"),
            "attention entropy of the first and the last block; in brackets the slope of a straight line fitted "
            "to all blocks, which may differ in sign from last minus first",
        ),
        (
            "focused blocks (entropy ≤ " + " · ".join(f"{level:.0%}" for level in ENTROPY_LEVELS) + " of uniform)",
            _entropy_levels,
            f"blocks whose attention entropy is at most {levels} of that of uniform attention (ln T for T "
            "tokens): how many blocks attend to few tokens",
        ),
        (
            "attention distance, first → last",
            lambda s: _trend(s, "attention_distance", "px"),
            "mean image distance between a query patch and the patches it attends to, first and last block; in "
            "brackets the slope of a straight line fitted to all blocks, which may differ in sign from last minus "
            "first",
        ),
        ("top-1 / top-5 accuracy", accuracy_cell, "top-1 and top-5 accuracy on the labelled images"),
    ]


def summary_rows(results: Mapping[str, AnalysisResult]) -> list[tuple[str, list[str]]]:
    """The headline table: (row label, one cell per model), in the order of ``results``.

    When a model mixes heads, the verdict rows come for both map kinds (pre-Θ and post-Θ),
    read from the same analysis."""
    summaries = [result.summary() for result in results.values()]
    rho = next(iter(results.values())).settings.rho
    return [
        (label, [cell(summary) for summary in summaries]) for label, cell, _ in _headline_rows(rho, _kinds(results))
    ]


def summary_row_meanings(results: Mapping[str, AnalysisResult]) -> dict[str, str]:
    """What each row of ``summary_rows`` means, by its label: a report's tooltips and footnotes."""
    rho = next(iter(results.values())).settings.rho
    return {label: meaning for label, _, meaning in _headline_rows(rho, _kinds(results))}


def _kinds(results: Mapping[str, AnalysisResult]) -> tuple[str | None, ...]:
    """Both map kinds when a model mixes heads, else the one kind (no suffix)."""
    return ("pre", "post") if any(result.geometry.mixing_blocks for result in results.values()) else (None,)


def summary_title(results: Mapping[str, AnalysisResult]) -> str:
    first = next(iter(results.values()))
    if not any(result.geometry.mixing_blocks for result in results.values()):
        return "Attention-collapse summary (blocks numbered from 1)"
    maps = first.summary()["maps"]
    return (
        f"Attention-collapse summary ({maps}-Θ maps in head-mixing blocks unless a row names its kind; "
        "blocks numbered from 1)"
    )


def summary_table(results: Mapping[str, AnalysisResult]) -> Table:
    table = Table(title=summary_title(results), title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for label in results:
        table.add_column(Text(label), overflow="fold")
    for label, cells in summary_rows(results):
        table.add_row(label, *(Text(cell) for cell in cells))
    return table


# ----------------------------------------------------------------------------- findings


def _collapse_sentence(label: str, s: dict[str, Any], rho: float, maps: str) -> str:
    total = s["num_blocks"]
    similar = s["similar_block_indices"]
    if not similar:
        return f"{label}: no block has a similarity ratio above rho = {rho:g} ({maps}), so no block counts as similar."
    if "collapse_start" not in s:
        return (
            f"{label}: {len(similar)} of {total} blocks are similar (blocks {block_list(similar)}, {maps}); whether "
            f"they are collapse (selective maps) or near-uniform attention is {NOT_IN_RESULT}."
        )
    if "collapsed_block_indices" not in s:  # a result saved before the regimes, whose last block is not similar
        return (
            f"{label}: {len(similar)} of {total} blocks are similar (blocks {block_list(similar)}, {maps}), but not "
            f"the last, so there is no collapsed run at the end; whether they are selective is {NOT_IN_RESULT}."
        )
    collapsed = s["collapsed_block_indices"]
    if s["collapse_start"] is not None:
        start = s["collapse_start"] + 1
        run = f"block {start}" if start == total else f"every block from {start} to {total}"
        return (
            f"{label}: {len(similar)} of {total} blocks are similar (ratio above {rho:g}, {maps}); "
            f"attention collapses from block {start} on: {run} attends selectively and like its neighbours."
        )
    if not collapsed:
        return (
            f"{label}: {len(similar)} of {total} blocks are similar (blocks {block_list(similar)}, {maps}), "
            "but every one of them is near-uniform, so none is collapse."
        )
    return (
        f"{label}: {len(similar)} of {total} blocks are similar (blocks {block_list(similar)}, {maps}); "
        f"the selective ones among them (blocks {block_list(collapsed)}) do not reach the last block, "
        "so there is no collapsed run at the end."
    )


def _uniform_sentences(label: str, result: AnalysisResult) -> list[str]:
    """The near-uniform blocks of the summarised kind, and of the softmax maps too when a
    model mixes heads (its pre-Θ maps are often near-uniform where the post-Θ ones are not)."""
    s = result.summary()
    kinds = [s["maps"]] + (["pre"] if result.geometry.mixing_blocks and s["maps"] != "pre" else [])
    sentences = [_uniform_sentence(label, {**s, **_kind_summary(s, kind)}, f"{kind}-Θ maps") for kind in kinds]
    return [sentence for sentence in sentences if sentence]


def _uniform_sentence(label: str, s: dict[str, Any], maps: str) -> str | None:
    uniform = s.get("near_uniform_block_indices")
    if not uniform:
        return None
    where = "every block" if len(uniform) == s["num_blocks"] else f"blocks {block_list(uniform)}"
    return (
        f"{label}: attention is near-uniform in {where} ({maps}): their similarity says nothing about "
        "collapse, and they are never counted as collapsed."
    )


def _robustness_sentence(label: str, s: dict[str, Any], settings: Any) -> str | None:
    if "band_collapse_starts" not in s:
        return None
    starts = s["band_collapse_starts"]
    low, high = s["band_similar_blocks"]
    if len(starts) < 2:
        return None
    words = " or ".join("none" if start is None else f"block {start + 1}" for start in starts)
    return (
        f"{label}: the verdict depends on the thresholds: with k {settings.k - 1 or 1}-{settings.k + 1}, "
        f"tau {settings.tau - 0.1:g}-{settings.tau + 0.1:g} and rho {settings.rho - 0.05:g}-"
        f"{min(settings.rho + 0.05, 1):g}, {low} to {high} blocks are similar and the collapse start is {words}."
    )


def _not_measured_sentence(label: str, s: dict[str, Any]) -> str | None:
    """What a result saved before deepvit-diag measured some metrics lacks."""
    if not s.get("not_in_result"):
        return None
    measured = ", and the ".join(s["not_in_result"])
    return f"{label}: saved before deepvit-diag measured the {measured}, so they are {NOT_IN_RESULT}."


def model_findings(label: str, result: AnalysisResult) -> list[str]:
    """Plain sentences about one model."""
    s = result.summary()
    maps = f"{s['maps']}-Θ maps"
    findings = [_collapse_sentence(label, s, result.settings.rho, maps), *_uniform_sentences(label, result)]
    findings += [sentence] if (sentence := _not_measured_sentence(label, s)) else []
    fragile = _robustness_sentence(label, s, result.settings)
    findings += [fragile] if fragile else []
    first, last = s["adjacent_similarity_first_third"], s["adjacent_similarity_last_third"]
    if first is not None and last is not None:
        findings.append(
            f"{label}: adjacent blocks' attention maps have mean similarity {_number(first, 2)} "
            f"in the first third of the network and {_number(last, 2)} in the last third."
        )
    cross_head = s["cross_head_similarity"]
    if cross_head is not None:
        kind = "dissimilar" if cross_head < PAPER_CROSS_HEAD else "alike"
        note = PAPER_CROSS_HEAD_NOTE if _softmax_maps(result) else "post-Θ maps, which Θ mixes across heads"
        findings.append(
            f"{label}: heads within a block are {kind} (mean cross-head similarity {_number(cross_head, 2)}; {note})."
        )
    if result.geometry.mixing_blocks:
        findings.append(_reattention_finding(label, s, result.geometry.head_mixing))
    if s["accuracy_top1"] is not None:
        findings.append(f"{label}: top-1 accuracy {_accuracy_words(s)}.")
    return findings


def _accuracy_words(s: dict[str, Any]) -> str:
    top5 = f", top-5 {percent(s['accuracy_top5'])}" if s["accuracy_top5"] is not None else ""
    return f"{percent(s['accuracy_top1'])}{top5} on {s['accuracy_images']} labelled images"


def _softmax_maps(result: AnalysisResult) -> bool:
    """Whether the summarised maps are softmax maps in every block, which the paper's ViT figures measure:
    the pre-Θ maps, or any maps of a model without Re-attention (not DeepViT's post-Θ maps)."""
    return result.summary()["maps"] == "pre" or not result.geometry.mixing_blocks


def _reattention_finding(label: str, s: dict[str, Any], mixing: str) -> str:
    uniform_pre = s.get("near_uniform_block_indices_pre")
    uniform = (
        f"whether they are near-uniform is {NOT_IN_RESULT}"
        if uniform_pre is None
        else f"{len(uniform_pre)} near-uniform"
    )
    pre = f"{s['similar_blocks_pre']} similar blocks ({uniform})"
    if mixing == TALKING_HEADS:
        return (
            f"{label}: talking heads (CaiT) mix the maps across heads: {pre} in the softmax maps, "
            f"{s['similar_blocks_post']} after the mixing matrix W; W is on average "
            f"{_number(s['theta_distance_from_identity_mean'], 2)} from identity (0 = no mixing). "
            f"{KIND_SCALES[0].upper()}{KIND_SCALES[1:]}."
        )
    return (
        f"{label}: Re-attention changes the maps: {pre} before Θ (softmax maps), "
        f"{s['similar_blocks_post']} after Θ; Θ is on average {_number(s['theta_distance_from_identity_mean'], 2)} "
        f"from identity (0 = no mixing). {KIND_SCALES[0].upper()}{KIND_SCALES[1:]}."
    )


def _count_comparison(label_a: str, label_b: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    count = {
        label_a: f"{a['similar_blocks']} of {a['num_blocks']}",
        label_b: f"{b['similar_blocks']} of {b['num_blocks']}",
    }
    if a["similar_blocks"] == b["similar_blocks"]:
        return (
            f"{label_a} and {label_b} have the same number of similar blocks ({count[label_a]} and {count[label_b]})."
        )
    fewer, more = (label_b, label_a) if b["similar_blocks"] < a["similar_blocks"] else (label_a, label_b)
    return f"{fewer} has fewer similar blocks than {more} ({count[fewer]} against {count[more]})."


def _starts(label_a: str, label_b: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where collapse starts in each model, as one sentence that never begins with a label
    (a label keeps its own case)."""
    if "collapse_start" not in a or "collapse_start" not in b:
        lacking = " and ".join(label for label, s in ((label_a, a), (label_b, b)) if "collapse_start" not in s)
        return f"Collapsed run (selective similar blocks up to the last) of {lacking}: {NOT_IN_RESULT}."
    starts = {label: s["collapse_start"] for label, s in ((label_a, a), (label_b, b))}
    if all(start is None for start in starts.values()):
        return f"Neither {label_a} nor {label_b} has a collapsed run."
    parts = [
        f"from block {start + 1} in {label}" if start is not None else f"none in {label}"
        for label, start in starts.items()
    ]
    return f"Collapsed run (selective similar blocks up to the last): {parts[0]}; {parts[1]}."


def comparison_findings(label_a: str, label_b: str, comparison: ComparisonResult) -> list[str]:
    """One plain sentence per finding of a comparison, then the per-model sentences that
    the comparison does not already say (Re-attention)."""
    summary = comparison.summary()
    a, b = summary["a"], summary["b"]
    findings = [
        _count_comparison(label_a, label_b, a, b),
        _starts(label_a, label_b, a, b),
    ]
    for label, result, s in ((label_a, comparison.a, a), (label_b, comparison.b, b)):
        findings += _uniform_sentences(label, result)
        findings += [sentence] if (sentence := _not_measured_sentence(label, s)) else []
        fragile = _robustness_sentence(label, s, result.settings)
        findings += [fragile] if fragile else []
    if a["adjacent_similarity_last_third"] is not None and b["adjacent_similarity_last_third"] is not None:
        findings.append(
            f"In the last third of the network, adjacent blocks' attention maps have mean similarity "
            f"{_number(a['adjacent_similarity_last_third'], 2)} in {label_a} and "
            f"{_number(b['adjacent_similarity_last_third'], 2)} in {label_b}."
        )
    if a["cross_head_similarity"] is not None and b["cross_head_similarity"] is not None:
        post = [
            label for label, result in ((label_a, comparison.a), (label_b, comparison.b)) if not _softmax_maps(result)
        ]
        note = f"post-Θ maps in {' and '.join(post)}, which Θ mixes across heads" if post else PAPER_CROSS_HEAD_NOTE
        findings.append(
            f"Mean cross-head similarity is {_number(a['cross_head_similarity'], 2)} in {label_a} and "
            f"{_number(b['cross_head_similarity'], 2)} in {label_b} ({note})."
        )
    if summary["cka_ab_diagonal_mean"] is not None:
        findings.append(
            f"Block outputs at equal depth have mean linear CKA {_number(summary['cka_ab_diagonal_mean'], 2)} between "
            f"{label_a} and {label_b} (1 = same representation up to rotation and scale)."
        )
    for label, result, s in ((label_a, comparison.a, a), (label_b, comparison.b, b)):
        if result.geometry.mixing_blocks:
            findings.append(_reattention_finding(label, s, result.geometry.head_mixing))
    if a["accuracy_top1"] is not None and b["accuracy_top1"] is not None:
        findings.append(f"Top-1 accuracy: {label_a} {_accuracy_words(a)}; {label_b} {_accuracy_words(b)}.")
    return findings


# ----------------------------------------------------------------------------- terminal


def print_summary(
    console: Console, results: Mapping[str, AnalysisResult], findings: Sequence[str], out: str | None = None
) -> None:
    """Provenance lines, the table and the findings, as the CLI prints them."""
    # Text, not markup strings: labels, file names and descriptions may contain "[...]".
    for label, result in results.items():
        console.print(Text.assemble((label, "bold"), "\n  ", result.model["description"]), soft_wrap=True)
    _print_images(console, next(iter(results.values())).images)
    rows = summary_rows(results)
    records = [(label, [(row, cells[index]) for row, cells in rows]) for index, label in enumerate(results)]
    _print_fitted(console, summary_table(results), records)
    _print_findings(console, findings, out)


def _print_fitted(console: Console, table: Table, records: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
    """``table`` when it fits the console's width unfolded, else the same cells as lines (a
    narrow terminal, or 80 columns when piped): each record's name, then ``field: value``."""
    if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(table)
        return
    # Wrapped by Rich at the spaces, not by the terminal inside a word.
    console.print(Text(str(table.title), style="italic"))
    for name, cells in records:
        console.print(Text(name, style="bold"))
        for field, value in cells:
            console.print(Text.assemble("  ", (field, "bold"), f": {value}"))


def _print_images(console: Console, images: dict[str, Any]) -> None:
    skipped = f", {images['skipped']} unreadable file(s) skipped" if images.get("skipped") else ""
    console.print(Text.assemble(("images", "bold"), f": {images['description']}{skipped}"), soft_wrap=True)


def _print_findings(console: Console, findings: Sequence[str], out: str | None) -> None:
    for sentence in findings:
        console.print(Text(f"- {sentence}"), soft_wrap=True)
    if out is not None:
        console.print(Text(f"report written to {out}"), soft_wrap=True)


# ----------------------------------------------------------------------------- sweeps

# How sentences name a point of a sweep's x axis: (one, several).
_X_WORDS = {
    "depth": ("depth", "depths"),
    "epoch": ("epoch", "epochs"),
    "step": ("step", "steps"),
    "order": ("checkpoint", "checkpoints"),
}


def sweep_rows(sweep: SweepResult) -> tuple[list[str], list[list[str]]]:
    """The sweep's table: the column titles and one row per checkpoint, in the order given."""
    timed = sweep.x_axis in ("epoch", "step")
    header = [
        "checkpoint",
        "group",
        *([_X_WORDS[sweep.x_axis][0]] if timed else []),
        "similar blocks",
        "near-uniform",
        "collapse from block",
        "adjacent similarity, last third",
        "top-1 / top-5",
    ]
    rows = []
    for entry in sweep.entries:
        s = entry.summary
        rows.append(
            [
                entry.label,
                entry.group,
                *([str(entry.step)] if timed else []),
                _similar(s),
                _near_uniform(s, NOT_IN_SWEEP),
                collapse_start_cell(s, NOT_IN_SWEEP),
                _number(s["adjacent_similarity_last_third"]),
                f"{percent(s['accuracy_top1'])} / {percent(s['accuracy_top5'])}",
            ]
        )
    return header, rows


def sweep_title(sweep: SweepResult) -> str:
    kind = f"Training series by {sweep.x_title}" if sweep.is_series else "Depth sweep"
    images = sweep.entries[0].summary["num_images"]
    return (
        f"{kind} on {images} images (similar blocks: ratio > {sweep.settings.rho:g}; "
        f"{sweep.settings.maps}-Θ maps in Re-attention blocks; blocks numbered from 1)"
    )


def sweep_table(sweep: SweepResult) -> Table:
    header, rows = sweep_rows(sweep)
    # A compact box: a sweep's table has many columns.
    table = Table(title=sweep_title(sweep), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(Text(header[0]), overflow="fold", style="bold")
    for title in header[1:]:
        # Numbers are never cut; a header wraps at its spaces only when the console is narrow.
        table.add_column(Text(title), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _listed(values: Sequence[str]) -> str:
    """``["a", "b", "c"]`` as ``"a, b and c"``."""
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def sweep_findings(sweep: SweepResult) -> list[str]:
    """Plain sentences about each group of a sweep: similar blocks along x, where collapse
    appears (in a training series: the first checkpoint with a collapsed run), accuracy."""
    one, several = _X_WORDS[sweep.x_axis]
    findings = []
    for group, entries in sweep.groups().items():
        positions = [str(sweep.x(entry)) for entry in entries]
        where = f"at {one if len(entries) == 1 else several} {_listed(positions)}"
        counts = [str(entry.summary["similar_blocks"]) for entry in entries]
        findings.append(f"{group}: {_listed(counts)} similar blocks {where}.")
        uniform = [entry for entry in entries if entry.summary.get("near_uniform_block_indices")]
        if uniform:
            named = _listed(
                [f"{entry.label} ({block_list(entry.summary['near_uniform_block_indices'])})" for entry in uniform]
            )
            findings.append(
                f"{group}: attention is near-uniform in blocks of {named}: their similarity says nothing about "
                "collapse, and they are never counted as collapsed."
            )
        appears, lacking = sweep.collapse_appears(group), sweep.without_verdict(group)
        if appears is None and lacking:
            findings.append(
                f"{group}: whether and where collapse appears is {NOT_IN_SWEEP}: "
                f"{_listed([entry.label for entry in lacking])} "
                f"{'was' if len(lacking) == 1 else 'were'} measured before deepvit-diag told near-uniform "
                "attention from collapse."
            )
        elif appears is None:
            findings.append(
                f"{group}: no checkpoint has a collapsed run (selective similar blocks) at the end of the network."
            )
        else:
            start, blocks = appears.summary["collapse_start"] + 1, appears.num_blocks
            run = f"{appears.label}: every block from {start} to {blocks} attends selectively and is similar"
            earlier = entries.index(appears)
            after = "; no earlier checkpoint has one" if earlier else ", the first checkpoint"
            findings.append(
                f"{group}: collapse appears at {one} {sweep.x(appears)} ({run}){after if sweep.is_series else ''}."
            )
        accuracies = [entry.summary["accuracy_top1"] for entry in entries]
        if any(accuracy is not None for accuracy in accuracies):
            findings.append(f"{group}: top-1 accuracy {_listed([percent(a) for a in accuracies])} {where}.")
    return findings


def print_sweep(console: Console, sweep: SweepResult, findings: Sequence[str], out: str | None = None) -> None:
    """The images, the sweep's table and its findings, as the CLI prints them."""
    _print_images(console, sweep.images)
    header, rows = sweep_rows(sweep)
    records = [(row[0], list(zip(header[1:], row[1:]))) for row in rows]
    _print_fitted(console, sweep_table(sweep), records)
    _print_findings(console, findings, out)
