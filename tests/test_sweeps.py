"""Sweeps: per-checkpoint numbers equal separate analyses, the x axis (depth, epoch, order),
saving and loading, findings, figures, sweep.html in Chromium, and ``deepvit-diag sweep``
with ``train --save-every``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from layout_checks import assert_readable
from test_cli import assert_clean_error, run
from test_report import CHROMIUM, SCREENSHOTS, WIDTHS, assert_one_of_the_two_scales, render_at_widths

from deepvit_diag import catalogue
from deepvit_diag.analysis import analyze
from deepvit_diag.checkpoints import load_model
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.errors import DiagError
from deepvit_diag.figures import sweep as sweep_figures
from deepvit_diag.figures.drawing import draw_sweep
from deepvit_diag.report import build_sweep_report, sweep_report_figures, write_sweep_report
from deepvit_diag.summary import NOT_IN_SWEEP, sweep_findings, sweep_rows
from deepvit_diag.sweep_runner import checkpoint_labels, sweep
from deepvit_diag.sweeps import SweepEntry, SweepResult, choose_x_axis

TINY = dict(embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)
DEPTHS = (2, 4, 6)
QUIET = dict(progress=False, device="cpu", cka_chunk=4, num_examples=1)


def tiny(family: str, depth: int) -> torch.nn.Module:
    torch.manual_seed(depth)
    return timm.create_model(family, depth=depth, **TINY).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    """ViT and DeepViT files of 2, 4 and 6 blocks (the paper's sweep in miniature)."""
    folder = tmp_path_factory.mktemp("sweep")
    paths = []
    for family in ("vit16", "deepvit16"):
        for depth in DEPTHS:
            paths.append(save_native(tiny(family, depth), folder / f"{family[:-2]}{depth}.safetensors"))
    return paths


@pytest.fixture(scope="module")
def labelled_images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=generator), torch.randint(0, 10, (6,), generator=generator)


@pytest.fixture(scope="module")
def depth_sweep(checkpoints, labelled_images) -> SweepResult:
    return sweep(checkpoints, labelled_images, batch_size=4, **QUIET)


def test_per_checkpoint_numbers_equal_separate_analyses(checkpoints, labelled_images, depth_sweep):
    assert [entry.label for entry in depth_sweep.entries] == [path.name for path in checkpoints]
    for path, entry in zip(checkpoints, depth_sweep.entries):
        alone = analyze(load_model(path), labelled_images, batch_size=4, **QUIET)
        assert entry.summary == alone.summary()
        np.testing.assert_array_equal(entry.curves["ratio"], alone.ratio())
        np.testing.assert_array_equal(entry.curves["adjacent_similarity"], alone.adjacent_similarity())
        np.testing.assert_array_equal(entry.curves["entropy"], alone.entropy().mean(axis=1))
        assert entry.model == alone.model and entry.summary["accuracy_top1"] is not None
    assert depth_sweep.settings == alone.settings and depth_sweep.images == alone.images


def test_a_depth_sweep_has_one_line_per_family(depth_sweep):
    assert depth_sweep.x_axis == "depth" and not depth_sweep.is_series
    groups = depth_sweep.groups()
    assert list(groups) == ["ViT", "DeepViT"]
    assert [depth_sweep.x(entry) for entry in groups["DeepViT"]] == list(DEPTHS)
    similar = sweep_figures.sweep_similar_blocks(depth_sweep)
    assert [trace.name for trace in similar.data] == ["ViT", "DeepViT"]
    assert list(similar.data[1].y) == [entry.summary["similar_blocks"] for entry in groups["DeepViT"]]
    assert similar.layout.xaxis.title.text == "depth (blocks)"
    ratio = sweep_figures.sweep_ratio_curves(depth_sweep)
    # One line per checkpoint, then the rho line's legend entry.
    assert len(ratio.data) == 7 and list(ratio.data[2].x) == list(range(1, 7)) and ratio.data[6].name.startswith("rho")
    relative = sweep_figures.sweep_ratio_curves(depth_sweep, relative_depth=True)
    np.testing.assert_allclose(relative.data[2].x, np.arange(1, 7) / 6)
    adjacent = sweep_figures.sweep_adjacent_curves(depth_sweep)
    assert list(adjacent.data[0].x) == [2]  # a 2-block model: block 2 against block 1
    header, rows = sweep_rows(depth_sweep)
    assert header[0] == "checkpoint" and len(rows) == 6 and rows[3][1] == "DeepViT"
    sentences = sweep_findings(depth_sweep)
    assert sentences[0].startswith("ViT: ") and sentences[0].endswith("similar blocks at depths 2, 4 and 6.")
    assert any(sentence.startswith("DeepViT: top-1 accuracy") for sentence in sentences)


def test_each_checkpoint_is_announced_through_notice_or_logging(checkpoints, labelled_images, capsys, caplog):
    """sweep() never prints: the line for each checkpoint goes to ``notice``, else to logging."""
    heard = []
    sweep(checkpoints[:2], labelled_images, labels=["a", "b"], notice=heard.append, batch_size=4, **QUIET)
    assert heard == ["checkpoint 1 of 2: a", "checkpoint 2 of 2: b"]
    with caplog.at_level("INFO", logger="deepvit_diag.sweep_runner"):
        sweep(checkpoints[:1], labelled_images, labels=["a"], batch_size=4, **{**QUIET, "progress": True})
    assert [record.getMessage() for record in caplog.records] == ["checkpoint 1 of 1: a"]
    assert "checkpoint" not in capsys.readouterr().err


def test_groups_and_labels_can_be_given(checkpoints, labelled_images):
    result = sweep(checkpoints[:2], labelled_images, labels=["a", "b"], groups=["mine", "mine"], batch_size=4, **QUIET)
    assert [entry.label for entry in result.entries] == ["a", "b"] and list(result.groups()) == ["mine"]
    with pytest.raises(DiagError, match="needs as many groups"):
        sweep(checkpoints[:2], labelled_images, groups=["one"], **QUIET)
    with pytest.raises(DiagError, match="not an iterator"):
        sweep(checkpoints[:2], iter([labelled_images]), **QUIET)
    with pytest.raises(DiagError, match="at least one checkpoint"):
        sweep([], labelled_images, **QUIET)
    with pytest.raises(DiagError, match="a class map applies to the image folders"):
        sweep(checkpoints[:1], labelled_images, class_map={"cat": 0}, **QUIET)


def test_sweep_saves_and_loads(depth_sweep, tmp_path):
    depth_sweep.save(tmp_path / "sweep")
    loaded = SweepResult.load(tmp_path / "sweep")
    assert loaded.x_axis == depth_sweep.x_axis and loaded.settings == depth_sweep.settings
    assert loaded.images == depth_sweep.images
    for entry, again in zip(depth_sweep.entries, loaded.entries):
        assert (again.label, again.group, again.step) == (entry.label, entry.group, entry.step)
        assert again.summary == entry.summary and again.model == entry.model
        for name, curve in entry.curves.items():
            np.testing.assert_array_equal(again.curves[name], curve)
    document = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert document["format"] == "deepvit-diag sweep" and document["summary"]["x_axis"] == "depth"
    assert document["summary"]["collapse_appears"].keys() == {"ViT", "DeepViT"}
    with pytest.raises(DiagError, match="needs sweep.json and arrays.npz"):
        SweepResult.load(tmp_path)


def _entry(label: str, step: int | None, collapse_start: int | None, depth: int = 4) -> SweepEntry:
    summary = {
        "num_blocks": depth,
        "num_images": 8,
        "similar_blocks": 0 if collapse_start is None else depth - collapse_start,
        "similar_block_indices": [] if collapse_start is None else list(range(collapse_start, depth)),
        "collapse_start": collapse_start,
        "adjacent_similarity_last_third": 0.5,
        "accuracy_top1": None,
        "accuracy_top5": None,
        "accuracy_labels": "the images carry no labels",
    }
    curves = {"ratio": np.zeros(depth), "adjacent_similarity": np.zeros(depth - 1), "entropy": np.ones(depth)}
    return SweepEntry(label, "ViT", step, summary, curves)


def test_a_training_series_says_when_collapse_appears(depth_sweep):
    entries = [_entry("e30", 30, 2), _entry("e10", 10, None), _entry("e20", 20, 3)]
    assert choose_x_axis(entries) == "epoch"
    series = SweepResult(entries, "epoch", depth_sweep.settings, {"description": "d", "count": 8, "skipped": 0})
    assert [series.x(entry) for entry in series.groups()["ViT"]] == [10, 20, 30]
    assert series.collapse_appears("ViT").label == "e20"
    assert "ViT: collapse appears at epoch 20 (e20: every block from 4 to 4 attends selectively and is similar)" in (
        " ".join(sweep_findings(series))
    )
    similar = sweep_figures.sweep_similar_blocks(series)
    assert similar.layout.xaxis.title.text == "epoch"
    assert [shape.x0 for shape in similar.layout.shapes] == [20]  # the dotted line where collapse appears
    # Named in the legend, not by text on the plot.
    assert similar.data[-1].name == "ViT: collapse appears (epoch 20)" and not similar.layout.annotations
    assert sweep_rows(series)[0][2] == "epoch"
    accuracy = sweep_figures.sweep_accuracy(series)
    assert "no accuracy: the images carry no labels" in accuracy.layout.annotations[0].text


def test_the_x_axis_is_depth_epoch_or_order():
    same_depth = [_entry("a", None, None), _entry("b", None, None)]
    assert choose_x_axis(same_depth) == "order"
    assert choose_x_axis([_entry("a", 1, None), _entry("b", None, None)]) == "order"
    assert choose_x_axis([_entry("a", 1, None), _entry("b", 2, None, depth=6)]) == "depth"
    assert choose_x_axis([_entry("a", 1, None), _entry("b", 2, None, depth=6)], "epoch") == "epoch"
    with pytest.raises(DiagError, match="b do not"):
        choose_x_axis(same_depth[:1] + [_entry("b", None, None)], "epoch")
    with pytest.raises(DiagError, match="must be one of"):
        choose_x_axis(same_depth, "time")


def test_checkpoint_labels_are_file_names_unless_two_are_the_same(tmp_path):
    for run_name in ("run1", "run2"):
        (tmp_path / run_name).mkdir()
        (tmp_path / run_name / "best.pth").write_bytes(b"x")
    paths = [tmp_path / "run1" / "best.pth", tmp_path / "run2" / "best.pth"]
    assert checkpoint_labels(paths) == [str(path) for path in paths]
    assert checkpoint_labels([paths[0], "vit32", tiny("vit16", 2)]) == ["best.pth", "vit32", "model 3"]


def test_sweep_page_is_self_contained(depth_sweep):
    page = build_sweep_report(depth_sweep, command="deepvit-diag sweep ...")
    ids = [item.div_id for item in sweep_report_figures(depth_sweep)]
    assert ids == [spec.element_id for spec in catalogue.SWEEP_FIGURES]
    for div_id in ids:
        assert f'id="{div_id}"' in page
    assert page.count("<script") == len(ids) + 1 and "src=" not in page.split("</head>")[1]
    assert "Depth sweep on 6 images" in page and "deepvit-diag sweep ..." in page
    for item in sweep_report_figures(depth_sweep):
        assert item.figure.layout.title.text and "{" not in item.caption


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_sweep_page_renders_in_headless_chromium(depth_sweep, tmp_path):
    """sweep.html at a laptop's and a desktop's width (see test_report.py's test of report.html);
    screenshots in SCREENSHOTS/sweep/."""
    path = write_sweep_report(tmp_path / "sweep.html", depth_sweep, relative_depth=True)
    screenshots = {width: SCREENSHOTS / "sweep" / f"sweep_{width}.png" for width in WIDTHS}
    seen = render_at_widths(path, screenshots, len(catalogue.SWEEP_FIGURES))
    assert seen.rendered == len(catalogue.SWEEP_FIGURES)
    assert seen.problems == []
    assert all(layout.texts > 50 for layout in seen.layouts.values())
    assert_readable({f"at {width} px": layout for width, layout in seen.layouts.items()})


# ----------------------------------------------------------------------------- the command line


def test_sweep_command_writes_its_files_and_prints_a_table(checkpoints, tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", "--ckpt", *map(str, checkpoints[:3]), "--images", "digits-test", "--num-images", "5"]
    status, stdout, stderr = run([*argv, "--device", "cpu", "--out", str(out)])
    assert status == 0, stderr
    assert {path.name for path in out.iterdir()} == {"sweep.json", "arrays.npz", "sweep.html", ".deepvit-diag.json"}
    assert "Depth sweep on 5 images" in stdout and "vit6.safetensors" in stdout
    assert "ViT: " in stdout and "similar blocks at depths 2, 4 and 6." in stdout
    # The tiny models name no classes: the digits are taken as class indices.
    assert SweepResult.load(out).entries[0].summary["accuracy_top1"] is not None
    status, stdout, stderr = run([*argv, "--device", "cpu", "--out", str(out), "--json", "--x", "order"])
    summary = json.loads(stdout)
    assert summary["x_axis"] == "order" and [entry["x"] for entry in summary["entries"]] == [1, 2, 3]


def test_sweep_command_bad_input_is_one_line(checkpoints, tmp_path):
    status, _, err = run(["sweep", "--ckpt", str(checkpoints[0]), "--group", "a", "b", "--out", str(tmp_path)])
    assert_clean_error(status, err, 1, "needs as many groups")
    status, _, err = run(["sweep", "--ckpt", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")])
    assert_clean_error(status, err, 1, "missing.pth")
    status, _, err = run(["sweep", "--out", str(tmp_path)])
    assert status == 2 and "one of the arguments --ckpt --monitor is required" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    status, _, err = run(["sweep", "--ckpt", str(checkpoints[0]), "--out", str(tmp_path / "mine")])
    assert_clean_error(status, err, 1, "holds files deepvit-diag did not write (notes.txt)")


def test_train_save_every_then_sweep_has_an_epoch_axis(tmp_path):
    out = tmp_path / "runs" / "tiny.safetensors"
    train = ["train", "vit16", "--depth", "2", "--embed-dim", "16", "--num-heads", "2", "--img-size", "8"]
    status, stdout, stderr = run(
        [*train, "--patch-size", "4", "--epochs", "2", "--batch-size", "512", "--save-every", "1", "--quiet"]
        + ["--out", str(out)]
    )
    assert status == 0, stderr
    snapshots = sorted(out.parent.glob("tiny-epoch*.safetensors"))
    assert [path.name for path in snapshots] == ["tiny-epoch1.safetensors", "tiny-epoch2.safetensors"]
    assert "saved 2 snapshots" in stdout
    assert [load_model(path).provenance["epoch"] for path in (*snapshots, out)] == [1, 2, 2]
    # Given in reverse order: the epoch axis puts them in training order.
    argv = ["sweep", "--ckpt", *map(str, reversed(snapshots)), "--num-images", "8", "--device", "cpu"]
    status, stdout, stderr = run([*argv, "--out", str(tmp_path / "series")])
    assert status == 0, stderr
    result = SweepResult.load(tmp_path / "series")
    assert result.x_axis == "epoch" and [result.x(entry) for entry in result.groups()["ViT"]] == [1, 2]
    assert "Training series by epoch" in stdout and "digits-test" in stdout  # the model cards' image set
    assert result.entries[0].summary["accuracy_labels"].endswith("by the class names of its model card")
    page = (tmp_path / "series" / "sweep.html").read_text()
    assert "Training series by epoch" in page
    assert sweep_figures.sweep_similar_blocks(result).layout.xaxis.title.text == "epoch"


def test_save_every_refuses_a_foreign_snapshot_file_before_training(tmp_path):
    (tmp_path / "tiny-epoch2.safetensors").write_text("my notes, not weights")
    argv = ["train", "vit16", "--depth", "1", "--embed-dim", "16", "--num-heads", "2", "--img-size", "8"]
    status, _, stderr = run(
        [*argv, "--patch-size", "4", "--epochs", "2", "--save-every", "1", "--out", str(tmp_path / "tiny.safetensors")]
    )
    assert_clean_error(status, stderr, 1, "tiny-epoch2.safetensors exists and was not written by deepvit-diag")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny-epoch2.safetensors"]  # nothing else written


# Written by the sweep and monitor writers of commit 707a867 (how: the folder's README.md).
OLD_SWEEP = Path(__file__).parent / "data" / "sweep_before_regimes"


@pytest.mark.parametrize("read", [SweepResult.load, lambda folder: SweepResult.from_monitor(folder / "monitor.jsonl")])
def test_a_sweep_measured_before_the_regimes_never_reports_its_old_collapse(read):
    """Its random-init ViTs were near-uniform and the old version said collapse appears at epoch 1;
    read now, the summaries keep their counts but no collapse start, and every output says so."""
    old = read(OLD_SWEEP)
    assert [entry.summary["similar_blocks"] for entry in old.entries] == [3, 3]
    assert not any("collapse_start" in entry.summary for entry in old.entries)
    assert [entry.summary["not_in_result"] for entry in old.entries] == [[catalogue.REGIMES_AND_GRID]] * 2
    assert old.without_verdict() == old.entries and old.collapse_appears("ViT") is None
    assert old.summary()["collapse_appears"] == {}  # not None: "no collapse" is not known either
    findings = sweep_findings(old)
    assert not any("collapse appears at" in sentence or "no checkpoint has" in sentence for sentence in findings)
    assert f"ViT: whether and where collapse appears is {NOT_IN_SWEEP}: epoch1 and epoch2 were measured" in (
        " ".join(findings)
    )
    header, rows = sweep_rows(old)
    assert {rows[0][header.index(column)] for column in ("near-uniform", "collapse from block")} == {NOT_IN_SWEEP}
    collapse = old.plot("collapse_start")
    assert NOT_IN_SWEEP in collapse.layout.annotations[0].text and not collapse.data
    assert "Collapse start of epoch1, epoch2" in build_sweep_report(old)
    assert not old.plot("similar_blocks").layout.shapes  # no dotted line where collapse would appear


def test_a_sweep_with_old_and_new_checkpoints_finds_collapse_only_where_it_was_measured(depth_sweep):
    images = {"description": "d", "count": 8, "skipped": 0}
    old = SweepResult.load(OLD_SWEEP).entries[0]  # epoch 1, no verdict
    for first, expected in ((_entry("e0", 0, 2), "e0"), (_entry("e5", 5, None), None)):
        series = SweepResult([old, first], "epoch", depth_sweep.settings, images)
        appears = series.collapse_appears("ViT")
        # Collapse at epoch 0 comes before the unknown epoch 1; after it, the first is unknown.
        assert (appears and appears.label) == expected
        assert series.summary()["collapse_appears"] == ({"ViT": "e0"} if expected else {})


def test_sweep_command_on_an_old_monitor_file_says_what_it_lacks(tmp_path):
    argv = ["sweep", "--monitor", str(OLD_SWEEP / "monitor.jsonl"), "--out", str(tmp_path / "out")]
    status, stdout, stderr = run(argv)
    assert status == 0, stderr
    assert f"ViT: whether and where collapse appears is {NOT_IN_SWEEP}" in " ".join(stdout.split())
    assert "collapse appears at" not in stdout
    status, stdout, stderr = run([*argv, "--json"])
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["collapse_appears"] == {} and "collapse_start" not in summary["entries"][0]
    assert NOT_IN_SWEEP in (tmp_path / "out" / "sweep.html").read_text()


def test_sweep_in_python_refuses_models_whose_cards_name_different_image_sets(labelled_images, monkeypatch):
    """The API's refusal, before any analysis: ``sweep`` without images over models whose cards name two sets."""
    models = [tiny("vit16", 2), tiny("vit16", 4)]
    for model, image_set in zip(models, ("digits-test", "digits-clutter-test")):
        model.provenance = {"description": image_set, "card": {"image_set": image_set}}
    with monkeypatch.context() as patched:
        patched.setattr("deepvit_diag.sweep_runner.analyze", lambda *a, **k: pytest.fail("analysed"))
        with pytest.raises(DiagError, match=r"different image sets \(digits-clutter-test, digits-test\)"):
            sweep(models, **QUIET)
    assert len(sweep(models, labelled_images, **QUIET).entries) == 2  # chosen images are used for both


def test_every_sweep_figure_uses_the_one_sequential_or_the_one_diverging_scale(depth_sweep):
    """The catalogue's sweep figures by the rules of the analysis figures (``test_report``): lines in
    colours of their groups, and any heatmap on one of the two scales."""
    for drawn in draw_sweep(depth_sweep):
        assert_one_of_the_two_scales(drawn.figure, drawn.element_id)
