"""The ablation's table, findings and planned cost, and the `deepvit-diag ablate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from test_ablation import DEPTH, labelled, tiny_deepvit

from deepvit_diag.ablation import STUDIES, ablate, planned_cost
from deepvit_diag.ablation_result import AblationResult
from deepvit_diag.ablation_summary import ablation_findings, ablation_table, cost_lines
from deepvit_diag.checkpoints import save_native
from deepvit_diag.cli import main

OPTIONS = dict(device="cpu", progress=False)


@pytest.fixture(scope="module")
def result() -> AblationResult:
    return ablate(tiny_deepvit(), labelled(), batch_size=6, **OPTIONS)


def test_findings_name_the_numbers_of_the_result(result):
    findings = ablation_findings("tiny", result)
    text = "\n".join(findings)
    summary = result.summary()
    assert f"Spearman rho = {summary['ratio_vs_block_kl_spearman']:+.2f}" in text
    assert f"most for block {summary['block_costliest'] + 1} " in text
    assert "Switching Re-attention off (Θ = I, no Norm) in all 3 Re-attention blocks" in text
    assert sum(line.startswith("Ordered by") for line in findings) == 3


def test_the_table_has_a_row_per_block(result):
    console = Console(width=200, record=True)
    console.print(ablation_table(result))
    rows = [line for line in console.export_text().splitlines() if line.strip().startswith("│")]
    assert len(rows) == DEPTH


def test_planned_cost_counts_the_blocks_each_ablation_runs():
    cost = planned_cost(tiny_deepvit(), ["block", "head"])
    # Removing block p runs blocks p+1..L-1; a head of block p runs blocks p..L-1 (4 heads per block).
    removals = sum(DEPTH - p - 1 for p in range(DEPTH))
    heads = 4 * sum(DEPTH - p for p in range(DEPTH))
    assert cost["variants"] == {"block": DEPTH, "head": 4 * DEPTH, "similar": 1}
    assert cost["block_evaluations"] == removals + heads + DEPTH - 1
    assert cost["forward_equivalents"] == pytest.approx(cost["block_evaluations"] / DEPTH)
    everything = planned_cost(tiny_deepvit(), STUDIES)
    assert everything["variants"]["pruning"] == 3 * DEPTH and everything["passes"] == 3
    assert "On 10 images" in cost_lines("tiny", cost, 10)[1]


def test_cli_ablate_writes_the_result_and_dry_run_runs_nothing(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    save_native(tiny_deepvit(), weights)
    images = tmp_path / "images"
    for label in range(2):
        (images / str(label)).mkdir(parents=True)
        for index in range(3):
            array = (np.random.default_rng(label * 3 + index).random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(array).save(images / str(label) / f"{index}.png")
    common = ["ablate", "--ckpt", str(weights), "--images", str(images), "--device", "cpu"]
    assert main([*common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ablated forward passes" in out and "On 6 images" in out
    assert not (tmp_path / "out").exists()
    assert main([*common, "--studies", "block", "pruning", "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    loaded = AblationResult.load(tmp_path / "out")
    assert summary == json.loads(json.dumps(loaded.summary()))
    assert loaded.num_images == 6 and loaded.has("block") and not loaded.has("head")
    with pytest.raises(SystemExit) as usage:
        main([*common, "--studies", "blocks"])
    assert usage.value.code == 2


def test_ablation_report_is_self_contained_with_every_figure(result):
    import re

    from deepvit_diag.figures.drawing import draw_ablation
    from deepvit_diag.report import build_ablation_report

    page = build_ablation_report(result, "tiny", command="deepvit-diag ablate ...")
    drawn = draw_ablation(result)
    assert [item.element_id for item in drawn] == ["fig-ablation-effect", "fig-head-importance", "fig-pruning-curves"]
    for item in drawn:
        assert f'id="{item.element_id}"' in page and item.caption.replace("'", "&#x27;") in page
        assert item.figure.layout.title.text and all(axis.title.text for axis in item.figure.select_xaxes())
    assert len(re.findall(r"<script\b", page)) == len(drawn) + 1  # plotly.js once, then one per figure
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    for sentence in ablation_findings("tiny", result):
        assert sentence.replace("'", "&#x27;") in page
    assert page.startswith("<!DOCTYPE html>") and "<title>deepvit-diag: " in page[:4096]


def test_figures_draw_what_the_result_holds(result):
    from deepvit_diag.figures.ablation import ablation_effect, head_importance, pruning_curves

    effect = ablation_effect(result)
    kl = {trace.name: trace.y for trace in effect.data}
    np.testing.assert_array_equal(kl["KL: block removed"], result.values("block", "kl"))
    np.testing.assert_array_equal(kl["similarity ratio"], result.arrays["ratio"])
    assert list(effect.data[0].x) == list(range(1, DEPTH + 1))  # blocks from 1
    heads = head_importance(result)
    np.testing.assert_array_equal(heads.data[0].z, result.values("head", "kl"))
    np.testing.assert_allclose(heads.data[1].z, result.head_redundancy())
    pruning = pruning_curves(result)
    first = pruning.data[0]  # measured ordering, accuracy panel: k = 0 is the intact model
    assert first.y[0] == pytest.approx(result.accuracy.top(1))
    np.testing.assert_allclose(first.y[1:], result.arrays["pruning_measured_accuracy"][:, 0])


def test_head_redundancy_is_the_mean_similarity_to_the_other_heads(result):
    cross_head = result.arrays["cross_head"].astype(np.float64)
    num_blocks, num_heads = cross_head.shape[:2]
    expected = np.array(
        [
            [np.mean([cross_head[l, h, g] for g in range(num_heads) if g != h]) for h in range(num_heads)]
            for l in range(num_blocks)
        ]
    )
    np.testing.assert_allclose(result.head_redundancy(), expected, rtol=1e-6)
