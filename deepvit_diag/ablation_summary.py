"""What the CLI shows of an ablation: a table per block, findings that relate similarity to
cost, and the cost of a planned run (``--dry-run``). Blocks are numbered from 1 here, as in
every printed table; results keep 0-based indices. Nothing is printed in this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from .ablation_result import KEEPS_PREDICTIONS, AblationResult
from .summary import block_list

ORDERING_WORDS = {
    "measured": "the measured cost of removing each block alone",
    "similarity": "similarity ratio",
    "influence": "Block Influence",
}
FAMILY_WORDS = {
    "block": "block removals",
    "attention": "attention-branch removals",
    "transplant": "map transplants",
    "head": "head ablations",
    "reattention": "Re-attention removals",
    "reattention_all": "Re-attention removed everywhere",
    "pruning": "pruning steps",
    "similar": "similar blocks removed together",
}


def _points(change: float | None) -> str:
    return "n/a" if change is None else f"{100 * change:+.1f} points"


def _cost(effect: dict[str, Any]) -> str:
    """'costs -2.1 points top-1 (KL 0.031, 97.5% of top-1 predictions kept)'."""
    parts = [f"KL {effect['kl']:.3g}", f"{effect['agreement']:.1%} of top-1 predictions kept"]
    if "top1_change" in effect:
        return f"{_points(effect['top1_change'])} top-1 ({', '.join(parts)})"
    return ", ".join(parts)


def ablation_rows(result: AblationResult) -> tuple[list[str], list[list[str]]]:
    """The per-block table (header, rows): the collapse measures next to what removing parts
    of the block costs (KL of the predictive distribution from the intact model's)."""
    names = {"block": "block removed", "attention": "attention removed", "transplant": "prev. maps"}
    names["reattention"] = "no Re-attn."
    present = [family for family in names if result.has(family)]
    header = ["block", "sim. ratio", "Block Infl.", *(f"{names[family]}: KL" for family in present)]
    labelled = result.accuracy.available and result.has("block")
    if labelled:
        header.append("block removed: top-1 change (points)")
    if result.has("head"):
        header.append("costliest head: KL")
    rows = []
    for block in range(result.geometry.num_blocks):
        row = [str(block + 1), f"{result.arrays['ratio'][block]:.3f}", f"{result.arrays['block_influence'][block]:.4f}"]
        for family in present:
            value = result.values(family, "kl")[block]
            row.append("-" if np.isnan(value) else f"{value:.3g}")
        if labelled:
            row.append(f"{100 * float(result.values('block', 'accuracy_change')[block]):+.1f}")
        if result.has("head"):
            kl = result.values("head", "kl")[block]
            row.append(f"{np.nanmax(kl):.3g} (h{int(np.nanargmax(kl)) + 1})")
        rows.append(row)
    return header, rows


def ablation_title(result: AblationResult) -> str:
    return f"Ablations on {result.num_images} images (KL of the predictive distribution from the intact model's)"


def ablation_table(result: AblationResult) -> Table:
    """``ablation_rows`` as a rich table for the terminal."""
    header, rows = ablation_rows(result)
    table = Table(title=ablation_title(result))
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def ablation_findings(label: str, result: AblationResult) -> list[str]:
    """Sentences that relate the collapse measures to what removing blocks actually costs."""
    s = result.summary()
    findings = []
    rho = result.settings.rho
    if s["similar_blocks"] and "similar_removed" in s:
        count = len(s["similar_blocks"])
        findings.append(
            f"{label}: the {count} similar blocks (similarity ratio > {rho:g}: {block_list(s['similar_blocks'])}) "
            f"removed together cost {_cost(s['similar_removed'])}."
        )
    elif not s["similar_blocks"]:
        findings.append(f"{label}: no block has a similarity ratio above {rho:g}, so none is similar.")
    if "block_removal" in s:
        cheapest, costliest = s["block_cheapest"], s["block_costliest"]
        findings.append(
            f"Removing one block costs least for block {cheapest + 1} ({_cost(s['block_removal'][cheapest])}) "
            f"and most for block {costliest + 1} ({_cost(s['block_removal'][costliest])})."
        )
        ratio, influence = s["ratio_vs_block_kl_spearman"], s["influence_vs_block_kl_spearman"]
        if ratio is not None or influence is not None:
            words = []
            if ratio is not None:
                words.append(
                    f"similarity predicts removal cost with Spearman rho = {ratio:+.2f} "
                    "(negative: similar blocks cost less)"
                )
            if influence is not None:
                words.append(
                    f"Block Influence with rho = {influence:+.2f} "
                    "(positive: blocks that change their tokens less cost less)"
                )
            findings.append("Across blocks, " + "; ".join(words) + ".")
    for ordering, found in s["pruning"].items():
        if found["k"]:
            findings.append(
                f"Ordered by {ORDERING_WORDS[ordering]}, {found['k']} of {s['num_blocks']} blocks can go together "
                f"({block_list(found['blocks'])}) while at least {KEEPS_PREDICTIONS:.0%} of top-1 predictions stay: "
                f"{_cost(found)}."
            )
        else:
            findings.append(
                f"Ordered by {ORDERING_WORDS[ordering]}, not even the first block can go without changing more than "
                f"{1 - KEEPS_PREDICTIONS:.0%} of top-1 predictions."
            )
    if "reattention_all_removed" in s:
        mixing = int(np.isfinite(result.values("reattention", "kl")).sum())
        findings.append(
            f"Switching Re-attention off (Θ = I, no Norm) in all {mixing} Re-attention blocks costs "
            f"{_cost(s['reattention_all_removed'])}; alone, block {s['reattention_most_reliant_block'] + 1} "
            "relies on it most."
        )
    if "transplant_mean_kl" in s:
        kl = result.values("transplant", "kl")
        cheapest = int(np.nanargmin(kl))
        findings.append(
            f"Giving a block the previous block's maps costs KL {s['transplant_mean_kl']:.3g} on average; least in "
            f"block {cheapest + 1} (KL {kl[cheapest]:.3g}), where the maps are most interchangeable."
        )
    if "head_most_important" in s:
        head = s["head_most_important"]
        findings.append(
            f"The most important head ({result.heads}-ablation) is head {head['head'] + 1} of block "
            f"{head['block'] + 1}: {_cost(head)}."
        )
    return findings


def cost_lines(label: str, cost: dict[str, Any], num_images: int | None) -> list[str]:
    """``--dry-run``: the forward passes an ablation will run, before any is run."""
    depth_share = cost["forward_equivalents"]
    variants = cost["variants"]
    per_image = sum(variants.values())
    listed = ", ".join(f"{count} {FAMILY_WORDS[name]}" for name, count in variants.items() if count)
    lines = [
        f"{label}: per image at most {per_image} ablated forward passes ({listed}), which run as many blocks as "
        f"{depth_share:.0f} full forward passes (each ablation starts at the block it changes), plus "
        f"{cost['passes']} intact passes, one with the attention maps."
    ]
    if num_images is not None:
        total = num_images * (depth_share + cost["passes"])
        lines.append(f"On {num_images} images: about {total:,.0f} full forward passes in all.")
    return lines
