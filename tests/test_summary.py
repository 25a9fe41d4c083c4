"""The verdict a reader takes away (``deepvit_diag.summary``) on real models: near-uniform
attention is never called collapse, and a model built to collapse is reported from the right block."""

from __future__ import annotations

import timm
import torch
from conftest import TINY_KWARGS, sharp_timm_model
from test_cli import run

from deepvit_diag import CollapseMonitor, analyze, sweep
from deepvit_diag.models import build_model
from deepvit_diag.results import trailing_run
from deepvit_diag.settings import MAP_KINDS
from deepvit_diag.summary import model_findings, summary_rows, sweep_findings
from deepvit_diag.sweeps import SweepEntry, SweepResult

IMAGES = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
TIMM_KWARGS = dict(depth=4, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=5)


SHARPER = 4.0


def _says_collapse(sentences: list[str]) -> bool:
    return any("collapses from" in sentence or "collapse appears" in sentence for sentence in sentences)


def _collapsing_vit(start: int, depth: int = 6) -> torch.nn.Module:
    """A sharp (selective) tiny ViT whose blocks from ``start`` (0-based) on repeat block
    ``start``'s attention: they share its norm and query-key weights and every block from
    ``start`` on adds nothing to the tokens, so all of them see the same input and compute
    the same selective maps."""
    model = sharp_timm_model("vit_tiny_patch16_224", **{**TIMM_KWARGS, "depth": depth})
    source = model.blocks[start]
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(SHARPER)  # larger logits: sharper maps that differ between blocks
        for block in model.blocks[start:]:
            block.norm1.load_state_dict(source.norm1.state_dict())
            block.attn.qkv.load_state_dict(source.attn.qkv.state_dict())
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


def test_a_random_init_vit_is_near_uniform_never_collapse():
    torch.manual_seed(0)
    result = analyze(timm.create_model("vit_tiny_patch16_224", **TIMM_KWARGS).eval(), IMAGES, progress=False)
    summary = result.summary()
    assert summary["similar_blocks"] == 4  # trivially alike ...
    assert summary["near_uniform_block_indices"] == [0, 1, 2, 3]  # ... because they barely select
    assert summary["collapse_start"] is None and summary["collapsed_block_indices"] == []
    sentences = model_findings("random", result)
    assert not _says_collapse(sentences)
    assert any("attention is near-uniform in every block" in sentence for sentence in sentences)
    assert dict(summary_rows({"random": result}))["collapse starts at block"] == ["none"]


def test_a_near_uniform_deepvit_is_near_uniform_in_both_kinds_never_collapse():
    torch.manual_seed(0)
    model = build_model({"family": "deepvit", "kwargs": TINY_KWARGS}).eval()
    result = analyze(model, IMAGES, progress=False)
    summary = result.summary()
    assert summary["near_uniform_block_indices_pre"] == [0, 1, 2]
    assert summary["collapse_start_pre"] is None and summary["collapse_start_post"] is None
    assert not _says_collapse(model_findings("deepvit", result))
    rows = dict(summary_rows({"deepvit": result}))
    assert rows["near-uniform blocks (not collapse), pre-Θ"] == ["3 of 3: 1-3"]


def test_a_model_built_to_collapse_is_reported_from_the_right_block():
    result = analyze(_collapsing_vit(start=3), IMAGES, k=1, progress=False)
    summary = result.summary()
    assert summary["near_uniform_block_indices"] == []  # selective maps throughout
    assert summary["collapse_start"] == 3
    assert summary["collapsed_block_indices"][-3:] == [3, 4, 5]
    assert "attention collapses from block 4 on: every block from 4 to 6" in model_findings("M", result)[0]


def test_sweep_and_monitor_findings_never_call_near_uniform_blocks_collapse():
    torch.manual_seed(0)
    random_init = analyze(timm.create_model("vit_tiny_patch16_224", **TIMM_KWARGS).eval(), IMAGES, progress=False)
    collapsing = analyze(_collapsing_vit(start=3), IMAGES, k=1, progress=False)
    entries = [SweepEntry.of(random_init, "epoch1", step=1), SweepEntry.of(collapsing, "epoch2", step=2)]
    series = SweepResult(entries, "epoch", collapsing.settings, collapsing.images)
    sentences = sweep_findings(series)
    assert "ViT: collapse appears at epoch 2" in " ".join(sentences)  # not at epoch 1, where all is uniform
    assert any("near-uniform in blocks of epoch1 (1-4)" in sentence for sentence in sentences)
    uniform_only = SweepResult(entries[:1], "epoch", random_init.settings, random_init.images)
    assert not _says_collapse(sweep_findings(uniform_only))


def test_the_robustness_grid_equals_separate_analyses_at_each_tau_and_rho():
    model = _collapsing_vit(start=3)
    result = analyze(model, IMAGES, k=1, progress=False)
    grid = result.robustness()
    settings = result.settings
    assert grid["similar_blocks"].shape == (2, 5, 4)  # k 1-2; tau 0.3-0.7; rho 0.8-0.95 (a ratio never exceeds 1)
    for i, k in enumerate(settings.grid_ks):
        for j, tau in enumerate(settings.grid_taus):
            separate = analyze(model, IMAGES, k=k, tau=tau, progress=False)
            for r, rho in enumerate(settings.grid_rhos):
                assert grid["similar_blocks"][i, j, r] == separate.similar_blocks(rho=rho).count
                start = trailing_run(separate.collapsed_blocks(rho=rho), 6)
                assert grid["collapse_start"][i, j, r] == (-1 if start is None else start)


def _near_uniform_models() -> dict[str, torch.nn.Module]:
    """A random-init timm ViT (entropy about ln T everywhere) and a random-init DeepViT (near-uniform softmax maps)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **TIMM_KWARGS).eval()
    torch.manual_seed(0)
    return {"ViT": vit, "DeepViT": build_model({"family": "deepvit", "kwargs": TINY_KWARGS}).eval()}


def test_near_uniform_models_are_never_collapse_in_a_sweep_or_a_monitor_file(tmp_path):
    """Through the real drivers: ``sweep`` over both models (a depth sweep), and a ``CollapseMonitor``
    writing each model's measurements to a file that ``sweep --monitor`` reads back."""
    models = _near_uniform_models()
    depth_sweep = sweep(list(models.values()), IMAGES, progress=False, notice=lambda line: None)
    assert all(entry.summary["collapse_start_pre"] is None for entry in depth_sweep.entries)
    assert not _says_collapse(sweep_findings(depth_sweep))
    assert depth_sweep.summary()["collapse_appears"] == {"ViT": None, "DeepViT": None}
    for name, model in models.items():
        path = tmp_path / f"{name}.jsonl"
        monitor = CollapseMonitor(model, IMAGES, path=path)
        for step in (0, 1):
            monitor.measure(step)
        series = SweepResult.from_monitor(path)
        assert not _says_collapse(sweep_findings(series)), name
        assert all(entry.summary[f"collapse_start_{kind}"] is None for entry in series.entries for kind in MAP_KINDS)
        status, stdout, stderr = run(["sweep", "--monitor", str(path), "--out", str(tmp_path / name)])
        assert status == 0, stderr
        assert "collapse appears" not in stdout and "no checkpoint has a collapsed run" in " ".join(stdout.split())
    uniform_vit = SweepResult.from_monitor(tmp_path / "ViT.jsonl")
    assert any("near-uniform in blocks of training run (1-4)" in s for s in sweep_findings(uniform_vit))
