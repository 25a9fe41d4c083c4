"""What a notebook shows of results: plot(name) over the catalogue's figures, figure functions
taking one result or a mapping, to_frame() against the arrays, reprs, and save()'s refusal of
folders holding other files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import deepvit_diag as dd
from deepvit_diag import figures
from deepvit_diag.models import build_model
from deepvit_diag.notebook import figure_names
from deepvit_diag.sweeps import SweepEntry, SweepResult

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)


def _model(family: str, seed: int):
    torch.manual_seed(seed)
    return build_model({"family": family, "kwargs": TINY}).eval()


@pytest.fixture(scope="module")
def comparison() -> dd.ComparisonResult:
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return dd.compare(_model("deepvit", 0), _model("vit", 1), images, num_examples=1)


@pytest.fixture(scope="module")
def result(comparison) -> dd.AnalysisResult:
    return comparison.a


@pytest.mark.parametrize("name", figure_names("analysis"))
def test_every_analysis_figure_plots_by_name(result, name):
    assert isinstance(result.plot(name), go.Figure)


def test_plot_draws_the_result_it_is_called_on(result):
    figure = result.plot("ratio", maps="pre", label="mine")
    trace, rho = figure.data  # the curve, then the rho line's legend entry
    assert trace.name == "mine" and rho.name.startswith("rho = ")
    np.testing.assert_allclose(np.asarray(trace.y, dtype=float), result.ratio("pre"))


def test_comparison_plots_cka_across_and_both_models(comparison):
    cka = comparison.plot("cka")
    np.testing.assert_allclose(np.asarray(cka.data[0].z, dtype=float), comparison.cka_ab, equal_nan=True)
    assert len(comparison.plot("ratio").data) == 3  # A, B and the rho line's legend entry
    for name in figure_names("comparison"):
        assert isinstance(comparison.plot(name), go.Figure)


def test_unknown_and_missing_figures_say_what_exists(comparison):
    with pytest.raises(dd.DiagError, match="no figure named 'nope' here; choose one of .*ratio"):
        comparison.a.plot("nope")
    with pytest.raises(dd.DiagError, match="no figure 'theta': this model has no head-mixing blocks"):
        comparison.b.plot("theta")  # a plain ViT


def test_figure_functions_take_one_result_or_a_mapping(comparison):
    one = figures.similarity_ratio(comparison.a)
    mapped = figures.similarity_ratio({"A": comparison.a})
    np.testing.assert_array_equal(one.data[0].y, mapped.data[0].y)
    assert one.data[0].name == comparison.a.model["description"]
    labelled = figures.cka_across(comparison)  # labels optional
    assert comparison.a.model["description"] in labelled.data[0].hovertemplate


def test_comparison_labels_stay_apart_for_alike_descriptions(result):
    same = dd.ComparisonResult(result, result, np.eye(3))
    assert list(same.labelled()) == [f"{result.model['description']} (A)", f"{result.model['description']} (B)"]


def test_to_frame_is_one_row_per_block_equal_to_the_arrays(result):
    frame = result.to_frame()
    blocks = result.geometry.num_blocks
    assert frame.shape[0] == blocks and frame.index.name == "block_0based"
    assert list(frame.index) == list(range(blocks))
    for kind in ("pre", "post"):
        np.testing.assert_array_equal(frame[f"ratio_{kind}"], result.ratio(kind))
        np.testing.assert_array_equal(frame[f"cross_head_{kind}"], result.cross_head_mean(kind))
        adjacent = [result.similarity(kind)[b, b + 1] for b in range(blocks - 1)]
        np.testing.assert_allclose(frame[f"adjacent_similarity_{kind}"][:-1], adjacent)
        assert np.isnan(frame[f"adjacent_similarity_{kind}"].iloc[-1])
        assert list(frame.index[frame[f"similar_{kind}"]]) == result.similar_blocks(kind).indices
    np.testing.assert_allclose(frame["entropy"], [row.mean() for row in result.entropy()], rtol=1e-6)
    np.testing.assert_allclose(frame["attention_distance"], result.attention_distance().mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(frame["token_similarity"], result.token_similarity())
    np.testing.assert_array_equal(frame["rank_residual"], result.rank_residual())
    np.testing.assert_allclose(frame["cka_next"][:-1], [result.cka()[b, b + 1] for b in range(blocks - 1)])


def test_comparison_frame_is_long(comparison):
    frame = comparison.to_frame()
    assert len(frame) == comparison.a.geometry.num_blocks + comparison.b.geometry.num_blocks
    assert list(frame.columns[:3]) == ["model", "side", "block_0based"]
    side_b = frame[frame["side"] == "b"]
    np.testing.assert_array_equal(side_b["ratio_pre"], comparison.b.ratio("pre"))
    best = [int(np.argmax(column)) for column in comparison.cka_ab.T]
    assert list(side_b["best_match_0based"]) == best
    assert list(frame[frame["side"] == "a"]["best_match_0based"]) == comparison.best_matching_blocks()


def test_sweep_frame_is_one_row_per_checkpoint_and_block(comparison):
    entries = [SweepEntry.of(comparison.a, "a", step=1), SweepEntry.of(comparison.b, "b", step=2)]
    sweep = SweepResult(entries, "step", comparison.a.settings, comparison.a.images)
    frame = sweep.to_frame()
    assert frame.shape == (6, 8)
    rows = frame[frame["label"] == "b"]
    np.testing.assert_allclose(rows["ratio"], comparison.b.ratio())
    np.testing.assert_allclose(rows["entropy"], comparison.b.entropy().mean(axis=1), rtol=1e-6)
    assert list(rows["x"]) == [2, 2, 2]
    for name in ("similar_blocks", "ratio", "entropy", "accuracy"):
        assert isinstance(sweep.plot(name), go.Figure)
    assert repr(sweep) == "SweepResult(checkpoints=2, x_axis='step')"
    assert "<table>" in sweep._repr_html_()


def test_reprs_are_short_and_html_escapes(result, comparison):
    text = repr(result)
    assert text.startswith("AnalysisResult(model=") and "\n" not in text and len(text) < 250
    assert len(repr(comparison)) < 250
    hostile = dd.AnalysisResult(
        {**result.model, "description": "<script>alert(1)</script>"},
        result.geometry,
        result.settings,
        result.images,
        result.num_images,
        result.arrays,
        result.computation,
        result.accuracy,
    )
    page = hostile._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "similar blocks" in page and "<li>" in page  # the summary table and the findings
    assert "<table>" in comparison._repr_html_()


def test_save_refuses_a_folder_with_other_files(result, tmp_path):
    result.save(tmp_path / "run")
    result.save(tmp_path / "run")  # its own files are replaced
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(dd.DiagError, match=r"holds files deepvit-diag did not write \(notes.txt\).*force=True"):
        result.save(tmp_path / "run")
    result.save(tmp_path / "run", force=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert dd.AnalysisResult.load(tmp_path / "run") == result


def test_frames_are_pandas(result):
    assert isinstance(result.to_frame(), pd.DataFrame)
