"""Results saved before a metric existed: loaded with what they hold, and every consumer says
what they lack instead of failing or reading a missing verdict as "no collapse"."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepvit_diag.analysis import analyze
from deepvit_diag.catalogue import REGIMES_AND_GRID, figure_named, metric_named, metric_of
from deepvit_diag.errors import DiagError
from deepvit_diag.figures import drawing
from deepvit_diag.report import build_report
from deepvit_diag.results import (
    FORMAT_VERSION,
    LATER_METRICS,
    AnalysisResult,
    ComparisonResult,
    summary_before_regimes,
)
from deepvit_diag.summary import (
    NOT_IN_RESULT,
    collapse_start_cell,
    comparison_findings,
    model_findings,
    summary_rows,
)

# Written by the format-2 writer of commit 707a867 (how: the folder's README.md).
OLD_RESULT = Path(__file__).parent / "data" / "format2_before_regimes"
LATER_ARRAYS = {name for metric in LATER_METRICS for name in metric_named(metric).arrays}
VERDICT_KEYS = ("near_uniform_block_indices", "collapsed_block_indices", "collapse_start")
QUIET = dict(progress=False, cka_chunk=4)


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    """A tiny DeepViT analysed by this version, and the same result as format 2 wrote it."""
    torch.manual_seed(0)
    from deepvit_diag.models import build_model

    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)
    model = build_model({"family": "deepvit", "kwargs": kwargs}).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # Its softmax maps are near-uniform and every block similar: what an old result cannot tell from collapse.
    result = analyze(model, x, batch_size=4, maps="pre", **QUIET)
    assert result.similar_blocks().indices == [0, 1, 2] and result.collapse_start() is None
    folder = tmp_path_factory.mktemp("old") / "run"
    result.write_files(folder)
    strip_to_format_2(folder)
    return result, folder


def strip_to_format_2(folder: Path) -> None:
    """``folder``'s result as format 2 wrote it before the regimes, the grid and Block Influence."""
    path = folder / "result.json"
    document = json.loads(path.read_text())
    document["version"] = 2
    for name in LATER_ARRAYS:
        del document["array_shapes"][name]
    path.write_text(json.dumps(document))
    with np.load(folder / "arrays.npz") as npz:
        arrays = {name: npz[name] for name in npz.files if name not in LATER_ARRAYS}
    np.savez_compressed(folder / "arrays.npz", **arrays)


def test_format_3_is_what_this_version_writes(current):
    result, _ = current
    assert result.to_document()["version"] == FORMAT_VERSION == 3
    assert result.not_in_result() == [] and "not_in_result" not in result.summary()


def test_a_result_of_the_old_writer_loads_without_its_later_metrics():
    loaded = AnalysisResult.load(OLD_RESULT)
    assert loaded.not_in_result() == [REGIMES_AND_GRID, "Block Influence"]
    summary = loaded.summary()
    assert summary["not_in_result"] == loaded.not_in_result()
    # The old writer counted these similar blocks as collapse from block 1; they stay similar, but
    # whether they are collapse is not known, so no collapse entry is there to be read as one.
    assert summary["similar_blocks_pre"] == 3 and summary["similar_block_indices_pre"] == [0, 1, 2]
    for key in VERDICT_KEYS[:2]:
        assert not {key, f"{key}_pre", f"{key}_post"} & summary.keys(), key
    assert not any(key.startswith("band_") for key in summary)
    # No post-Θ block is similar, so none collapses whatever the regimes: that much is known.
    assert "collapse_start_pre" not in summary and summary["collapse_start_post"] is None
    assert loaded.collapse_start("post") is None
    for method in (
        loaded.uniformity,
        loaded.near_uniform_blocks,
        loaded.robustness,
        lambda: loaded.collapse_start("pre"),
    ):
        with pytest.raises(DiagError, match="re-run analyze to get it"):
            method()
    assert "not_in_result" in repr(loaded) and "collapse_start" not in repr(loaded)


def test_an_old_result_keeps_every_other_number(current):
    """Everything the stripped file holds loads as it was, and every summary entry that does not
    need the regimes or the grid is the full result's."""
    result, folder = current
    loaded = AnalysisResult.load(folder)
    assert loaded.arrays.keys() == result.arrays.keys() - LATER_ARRAYS
    for name, array in loaded.arrays.items():
        np.testing.assert_array_equal(array, result.arrays[name], err_msg=name)
    full, old = result.summary(), loaded.summary()
    shared = old.keys() - {"not_in_result"}
    assert {key: old[key] for key in shared} == {key: full[key] for key in shared}
    left_out = full.keys() - shared
    assert left_out and all(key.startswith(VERDICT_KEYS) or key.startswith("band_") for key in left_out)
    assert not {"near_uniform_block_indices", "collapsed_block_indices", "band_similar_blocks"} & shared


def test_an_old_result_saved_again_stays_format_2_and_loads(current, tmp_path):
    _, folder = current
    loaded = AnalysisResult.load(folder)
    loaded.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "result.json").read_text())["version"] == 2
    assert AnalysisResult.load(tmp_path / "again") == loaded


def test_a_format_3_result_without_the_regimes_is_refused(current, tmp_path):
    """Only files written before format 3 may lack its metrics; a format-3 file that does is damaged."""
    _, folder = current
    shutil.copytree(folder, tmp_path / "run")
    path = tmp_path / "run" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 3}))
    with pytest.raises(DiagError, match="lacks the arrays block_influence, ratio_grid_post"):
        AnalysisResult.load(tmp_path / "run")


def test_findings_and_headline_of_an_old_result_say_what_it_lacks():
    loaded = AnalysisResult.load(OLD_RESULT)
    assert "whether they are near-uniform is " + NOT_IN_RESULT in " ".join(model_findings("old", loaded))
    # The softmax maps, whose 3 similar blocks the old writer called collapse from block 1.
    loaded = dataclasses.replace(loaded, settings=dataclasses.replace(loaded.settings, maps="pre"))
    findings = model_findings("old", loaded)
    text = " ".join(findings)
    assert "collapses" not in text and "no collapsed run" not in text
    assert f"whether they are collapse (selective maps) or near-uniform attention is {NOT_IN_RESULT}" in text
    assert collapse_start_cell(loaded.summary()) == NOT_IN_RESULT  # the app's overview metric
    assert any("saved before deepvit-diag measured the attention regimes and robustness grid" in f for f in findings)
    rows = dict(summary_rows({"old": loaded}))
    for row in ("near-uniform blocks (not collapse), pre-Θ", "collapse starts at block, pre-Θ"):
        assert rows[row] == [NOT_IN_RESULT], row
    assert rows["collapse starts at block, post-Θ"] == ["none"]  # no post-Θ block is similar
    assert rows["similar blocks (ratio > 0.9), pre-Θ"] == ["3 of 3: 1-3"]


def test_a_comparison_with_an_old_side_says_which_side_lacks_the_verdict(current):
    result, folder = current
    comparison = ComparisonResult(AnalysisResult.load(folder), result, np.eye(3, dtype=np.float32))
    findings = comparison_findings("old", "new", comparison)
    assert f"Collapsed run (selective similar blocks up to the last) of old: {NOT_IN_RESULT}." in findings
    assert not any(sentence.startswith("new: saved before") for sentence in findings)


@pytest.mark.parametrize("key", ["attention_regimes", "robustness_grid", "block_influence_curves"])
def test_figures_of_a_metric_an_old_result_lacks_are_a_note_or_leave_it_out(current, key):
    result, folder = current
    old = AnalysisResult.load(folder)
    (alone,) = drawing.draw(figure_named(key), {"old": old})
    assert alone.caption.endswith(NOT_IN_RESULT) and NOT_IN_RESULT in alone.figure.layout.annotations[0].text
    (beside,) = drawing.draw(figure_named(key), {"old": old, "new": result})
    assert beside.caption.endswith(f" (old: {metric_of(figure_named(key)).name} {NOT_IN_RESULT})")
    drawn = {trace.name for trace in beside.figure.data} | {
        annotation.text for annotation in beside.figure.layout.annotations
    }
    assert not any(name and "old" in name for name in drawn), drawn


def test_the_report_of_an_old_result_is_written_and_says_what_it_lacks():
    html = build_report(AnalysisResult.load(OLD_RESULT), ["old"])
    assert html.count(NOT_IN_RESULT) >= 3  # table rows, findings, the figures of the regimes and grid


def test_a_comparison_saved_before_the_regimes_loads_with_both_sides_lacking_them(current, tmp_path):
    result, _ = current
    ComparisonResult(result, result, np.eye(3, dtype=np.float32)).write_files(tmp_path / "cmp")
    path = tmp_path / "cmp" / "result.json"
    document = json.loads(path.read_text())
    for side in ("a", "b"):
        document[side]["version"] = 2
        for name in LATER_ARRAYS:
            del document[side]["array_shapes"][name]
    path.write_text(json.dumps(document))
    with np.load(tmp_path / "cmp" / "arrays.npz") as npz:
        kept = {name: npz[name] for name in npz.files if name.split("/")[-1] not in LATER_ARRAYS}
    np.savez_compressed(tmp_path / "cmp" / "arrays.npz", **kept)
    loaded = ComparisonResult.load(tmp_path / "cmp")
    assert loaded.a.not_in_result() == loaded.b.not_in_result() == list(LATER_METRICS)
    findings = comparison_findings("A", "B", loaded)
    assert f"Collapsed run (selective similar blocks up to the last) of A and B: {NOT_IN_RESULT}." in findings
    assert "not_in_result" in loaded.summary()["a"]


def test_an_old_result_whose_last_block_is_not_similar_has_no_collapse_whatever_the_regimes():
    loaded = AnalysisResult.load(OLD_RESULT)
    loaded = dataclasses.replace(loaded, settings=dataclasses.replace(loaded.settings, maps="pre"))
    loaded.arrays["ratio_pre"] = np.array([0.95, 0.97, 0.2], dtype=np.float32)
    summary = loaded.summary()
    assert summary["collapse_start_pre"] is None and "collapsed_block_indices_pre" not in summary
    (sentence,) = [s for s in model_findings("old", loaded) if "blocks are similar" in s]
    assert sentence == (
        "old: 2 of 3 blocks are similar (blocks 1-2, pre-Θ maps), but not the last, so there is no collapsed run "
        f"at the end; whether they are selective is {NOT_IN_RESULT}."
    )


def test_summaries_kept_from_before_the_regimes_lose_only_a_collapse_start_that_names_a_block():
    old = {"similar_blocks": 2, "collapse_start": None, "collapse_start_pre": 1, "collapse_start_post": None}
    assert summary_before_regimes(old) == {
        "similar_blocks": 2,
        "collapse_start": None,
        "collapse_start_post": None,
        "not_in_result": [REGIMES_AND_GRID],
    }
    current = {**old, "collapsed_block_indices": []}
    assert summary_before_regimes(current) is current
