"""The Streamlit app driven headlessly with ``streamlit.testing.v1.AppTest``.

The app reads its default checkpoints and images from environment variables
(``app/config.py``), so these tests open it on tiny 2-block checkpoints; one slow test
opens it on the bundled 32-block demo pair as a user would.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

import app.compute
from app.compute import AnalysisRequest, export_files, run_analysis
from app.sources import ImageChoice, ModelChoice
from deepvit_diag import CollapseMonitor, catalogue, load_model, sweep
from deepvit_diag.checkpoints import bundled_path
from deepvit_diag.checkpoints.native import ARCH_KEY, FORMAT_KEY, FORMAT_VERSION, save_native
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures import drawing
from deepvit_diag.models import build_model
from deepvit_diag.results import ComparisonResult
from deepvit_diag.settings import Settings

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
TIMEOUT = 180  # seconds per script run; the first run imports torch and timm on a busy machine
VIEWS = [
    "Overview",
    "Layer similarity",
    "Similarity ratio",
    "Heads",
    "Theta",
    "More metrics",
    "Ablation",
    "Export",
    "Sweep",
]
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)


def _png(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_app_files(root: Path) -> Path:
    """Tiny ViT and DeepViT checkpoints, five images, and a checkpoint whose weights do not
    fit its arch, under ``root`` (also used by test_app_browser.py)."""
    for family in ("vit", "deepvit"):
        torch.manual_seed(0)
        save_native(build_model({"family": family, "kwargs": TINY}), root / f"{family}.safetensors")
    images = root / "images"
    images.mkdir()
    for index in range(5):
        (images / f"{index}.png").write_bytes(_png(index))
    # Depth-2 tensors under metadata that announces 3 blocks.
    tensors = {
        name: tensor.contiguous()
        for name, tensor in build_model({"family": "vit", "kwargs": TINY}).state_dict().items()
    }
    three_blocks = {"family": "vit", "kwargs": {**TINY, "depth": 3}}
    save_file(
        tensors,
        str(root / "mismatched.safetensors"),
        metadata={FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(three_blocks)},
    )
    return root


def app_environment(files: Path) -> dict[str, str]:
    """Environment variables that open the app on the tiny files."""
    return {
        "DEEPVIT_DIAG_APP_CKPT_A": str(files / "vit.safetensors"),
        "DEEPVIT_DIAG_APP_CKPT_B": str(files / "deepvit.safetensors"),
        "DEEPVIT_DIAG_APP_IMAGES": str(files / "images"),
        "DEEPVIT_DIAG_APP_NUM_IMAGES": "5",
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_app_files(tmp_path_factory.mktemp("app_files"))


@pytest.fixture
def tiny_app(files, monkeypatch):
    """The app's defaults pointed at the tiny checkpoints and images, with empty caches."""
    for name, value in app_environment(files).items():
        monkeypatch.setenv(name, value)
    _clear_caches()
    yield
    _clear_caches()


def _clear_caches() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def _open() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


def _show(at: AppTest, view: str) -> AppTest:
    at.session_state["view"] = view
    return at.run()


def _assert_fine(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


# ----------------------------------------------------------------------------- every view


def test_every_view_draws_the_tiny_pair(tiny_app):
    at = _open()
    _assert_fine(at)
    assert [tab.label for tab in at.tabs] == VIEWS
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Collapse starts at block"] in {"none", "1", "2"}
    assert any("vit.safetensors (A)" in markdown.value for markdown in at.markdown)
    expected_charts = {"Layer similarity": 4, "Similarity ratio": 4, "Heads": 5, "Theta": 3, "More metrics": 7}
    for view, count in expected_charts.items():
        at = _show(at, view)
        _assert_fine(at)
        assert _charts(at) == count, view
    at = _show(at, "Export")
    _assert_fine(at)
    assert [button.label for button in at.get("download_button")] == [
        f"Download {name}" for name in ("result.json", "arrays.npz", "report.html", "deepvit-diag-report.zip")
    ]


def test_every_catalogue_figure_is_drawn_with_the_reports_caption(tiny_app):
    at = _open()
    analysis = at.session_state["shown_analysis"]
    shown = set()
    for view in VIEWS:
        at = _show(at, view)
        shown |= {caption.value for caption in at.caption}
    for metric in catalogue.METRICS:
        for spec in metric.figures:
            drawn = drawing.draw(spec, analysis.results, analysis.comparison)
            report_captions = {markdown_text(item.caption) for item in drawn}  # shown as text
            assert report_captions & shown, f"{spec.key} is not in the app with the report's caption"


def test_analysis_reports_progress_and_exports_what_the_library_saves(tiny_app, files, tmp_path, monkeypatch):
    monkeypatch.setattr("deepvit_diag.settings.default_num_workers", lambda device: 3)  # as on a GPU machine
    request = AnalysisRequest(
        ModelChoice(str(files / "vit.safetensors"), "vit", "1"),
        ModelChoice(str(files / "deepvit.safetensors"), "deepvit", "1"),
        ImageChoice(str(files / "images")),
        Settings(num_images=4, k=1),
    )
    progress = []
    analysis = run_analysis(request, lambda done, total: progress.append((done, total)))
    assert progress[-1] == (4, 4)
    assert analysis.comparison.a.settings.num_workers == 0  # never forks loader workers from Streamlit's threads
    assert run_analysis(request, lambda *_: pytest.fail("a stored analysis is not recomputed")) is analysis
    exported = export_files(analysis.key, _analysis=analysis)
    for name in ("result.json", "arrays.npz"):
        (tmp_path / name).write_bytes(exported[name])
    assert ComparisonResult.load(tmp_path) == analysis.comparison
    assert exported["report.html"].startswith(b"<!DOCTYPE html>") and b"vit (A)" in exported["report.html"]


def test_switching_views_never_recomputes(tiny_app, monkeypatch):
    calls = {"compare": 0, "extract": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(app.compute, "compare", counted("compare", app.compute.compare))
    monkeypatch.setattr(app.compute, "extract_attention", counted("extract", app.compute.extract_attention))
    at = _open()
    for view in [*VIEWS, "Heads", "Overview", "Heads"]:
        _assert_fine(_show(at, view))
    assert calls == {"compare": 1, "extract": 2}  # one analysis; one forward per model for the Heads view


def test_new_parameters_run_only_on_run(tiny_app, monkeypatch):
    at = _open()
    at.number_input(key="k").set_value(1)
    at.run()
    assert any("press **Run analysis**" in info.value for info in at.info)
    at.button(key="run").click().run()
    _assert_fine(at)
    assert not any("press **Run analysis**" in info.value for info in at.info)
    at = _show(at, "Similarity ratio")
    assert any("k = 1" in caption.value for caption in at.caption)


def test_heads_view_follows_the_query_token(tiny_app):
    at = _show(_open(), "Heads")
    at.radio(key="heads_query").set_value("a patch").run()
    at.number_input(key="heads_row").set_value(4)
    at.number_input(key="heads_column").set_value(1)
    at.run()
    _assert_fine(at)
    titles = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert sum("patch (4, 1)" in spec for spec in titles) == 3  # A pre; B pre and post (Re-attention block)


def test_uploaded_checkpoint_and_images_are_analysed(tiny_app, files):
    at = _open()
    at.selectbox(key="b_source").set_value("upload").run()
    at.file_uploader(key="b_upload").upload("my deepvit.safetensors", (files / "deepvit.safetensors").read_bytes())
    at.selectbox(key="images_source").set_value("upload").run()
    at.file_uploader(key="images_upload").set_value([(f"{i}.png", _png(i), "image/png") for i in range(4)])
    at.button(key="run").click().run()
    _assert_fine(at)
    assert any(markdown_text("my_deepvit.safetensors (B)") in markdown.value for markdown in at.markdown)
    assert any("4 uploaded image(s)" in caption.value for caption in at.caption)


# ----------------------------------------------------------------------------- the Sweep view


def _sweep_captions(result) -> set[str]:
    return {markdown_text(drawn.caption) for drawn in drawing.draw_sweep(result)}  # shown as text


def test_sweep_view_runs_checkpoints_on_the_sidebars_images(tiny_app, files, monkeypatch):
    calls = []
    monkeypatch.setattr(app.compute, "sweep", lambda *args, **kwargs: calls.append(1) or sweep(*args, **kwargs))
    at = _show(_open(), "Sweep")
    _assert_fine(at)
    assert any("Run sweep" in info.value for info in at.info)
    at.text_area(key="sweep_paths").set_value(f"{files / 'vit.safetensors'}\n{files / 'deepvit.safetensors'}")
    at.button(key="sweep_run").click().run()
    _assert_fine(at)
    assert _charts(at) == len(catalogue.SWEEP_FIGURES)
    run = at.session_state["sweeps"].get(at.session_state["sweep_request"].key)  # server paths: this session's
    assert [entry.label for entry in run.sweep.entries] == ["vit.safetensors", "deepvit.safetensors"]
    assert run.sweep.entries[0].summary["num_images"] == 5  # the sidebar's images and number
    assert _sweep_captions(run.sweep) <= {caption.value for caption in at.caption}
    assert any(markdown.value.startswith("- ViT:") for markdown in at.markdown)
    assert [button.label for button in at.get("download_button")] == [
        f"Download {name}" for name in ("sweep.html", "sweep.json", "arrays.npz", "deepvit-diag-sweep.zip")
    ]
    at.toggle(key="sweep_relative").set_value(True).run()
    _assert_fine(at)
    assert calls == [1]  # redrawn from the store, not swept again
    at.text_area(key="sweep_paths").set_value(str(files / "nowhere.safetensors"))
    at.button(key="sweep_run").click().run()
    assert any("no such file or folder on the server" in error.value for error in at.error)


def test_sweep_view_opens_a_saved_sweep_and_an_uploaded_monitor_file(tiny_app, files, tmp_path):
    saved = sweep([files / "vit.safetensors", files / "deepvit.safetensors"], files / "images", progress=False)
    saved.save(tmp_path / "saved")
    at = _show(_open(), "Sweep")
    at.radio(key="sweep_source").set_value("path").run()
    at.text_input(key="sweep_path").set_value(str(tmp_path / "saved")).run()
    _assert_fine(at)
    assert _charts(at) == len(catalogue.SWEEP_FIGURES)
    assert _sweep_captions(saved) <= {caption.value for caption in at.caption}
    at.text_input(key="sweep_path").set_value(str(tmp_path)).run()
    assert any("is not a saved sweep" in error.value for error in at.error)

    model = load_model(str(files / "vit.safetensors"))
    monitor = CollapseMonitor(model, str(files / "images"), path=tmp_path / "run.jsonl")
    for step in (0, 5):
        monitor.measure(step)
    at.radio(key="sweep_source").set_value("upload").run()
    at.file_uploader(key="sweep_upload").set_value(
        [("run.jsonl", (tmp_path / "run.jsonl").read_bytes(), "application/octet-stream")]
    )
    at.run()
    _assert_fine(at)
    assert _charts(at) == len(catalogue.SWEEP_FIGURES)
    assert any("at steps 0 and 5" in markdown.value for markdown in at.markdown)
    at.file_uploader(key="sweep_upload").set_value(
        [(name, (tmp_path / "saved" / name).read_bytes(), "application/octet-stream") for name in ("sweep.json",)]
    )
    at.run()
    assert any("upload the sweep.json and arrays.npz" in error.value for error in at.error)


# ----------------------------------------------------------------------------- bad input


def _upload_checkpoint(at: AppTest, name: str, content: bytes) -> AppTest:
    at.selectbox(key="a_source").set_value("upload").run()
    at.file_uploader(key="a_upload").upload(name, content)
    return at.button(key="run").click().run()


def _assert_error_and_still_working(at: AppTest, words: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    messages = [error.value for error in at.error]
    assert any(words in message for message in messages), messages
    assert [tab.label for tab in at.tabs] == VIEWS  # the previous analysis is still shown


def test_corrupt_checkpoint_upload_is_an_error(tiny_app):
    at = _upload_checkpoint(_open(), "broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    _assert_error_and_still_working(at, "not a readable safetensors file")


@pytest.mark.parametrize("name", ["notes.txt", "notes.pth"])
def test_text_file_as_checkpoint_is_an_error(tiny_app, name):
    at = _upload_checkpoint(_open(), name, b"these are my notes, not weights\n" * 10)
    _assert_error_and_still_working(at, "not a checkpoint file" if name.endswith(".txt") else "not a readable PyTorch")


def test_oversized_upload_is_an_error(tiny_app, monkeypatch, files):
    monkeypatch.setenv("DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB", "0.01")
    at = _upload_checkpoint(_open(), "vit.safetensors", (files / "vit.safetensors").read_bytes())
    _assert_error_and_still_working(at, "more than the 0.01 MB limit")


def test_undecodable_image_is_an_error(tiny_app):
    at = _open()
    at.selectbox(key="images_source").set_value("upload").run()
    at.file_uploader(key="images_upload").set_value(
        [("cat.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"), ("ok.png", _png(1), "image/png")]
    )
    at.button(key="run").click().run()
    assert not at.exception
    assert any("cat.png cannot be decoded as an image" in error.value for error in at.error)
    assert any("1 uploaded image(s): ok.png" in caption.value for caption in at.caption)  # the good one is analysed


def test_mismatched_checkpoint_on_the_server_is_an_error(tiny_app, files):
    at = _open()
    at.text_input(key="a_path").set_value(str(files / "mismatched.safetensors"))
    at.button(key="run").click().run()
    _assert_error_and_still_working(at, "does not fit the architecture")


def test_missing_server_path_is_an_error(tiny_app, files):
    at = _open()
    at.text_input(key="a_path").set_value(str(files / "nowhere.pth"))
    at.button(key="run").click().run()
    _assert_error_and_still_working(at, "no such file or folder on the server")


def test_unexpected_failure_is_an_error_not_a_crash(tiny_app, monkeypatch):
    at = _open()

    def broken_loader(*args, **kwargs):
        raise RuntimeError("weights from the future")

    monkeypatch.setattr(app.compute, "load_model", broken_loader)
    at.number_input(key="k").set_value(3)  # a new request, so the checkpoints are loaded again
    st.cache_resource.clear()
    at.button(key="run").click().run()
    _assert_error_and_still_working(at, "Unexpected RuntimeError: weights from the future")


def test_checkpoints_whose_cards_name_different_image_sets_need_chosen_images(files, monkeypatch, tmp_path):
    for model, image_set in (("vit", "digits-test"), ("deepvit", "digits-clutter-test")):
        save_native(
            load_model(str(files / f"{model}.safetensors")),
            tmp_path / f"{model}.safetensors",
            card={"image_set": image_set},
        )
    for name, value in app_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEEPVIT_DIAG_APP_IMAGES", "")  # the set the model cards name
    _clear_caches()
    at = _open()
    assert not at.exception
    assert any("different image sets (digits-clutter-test, digits-test)" in error.value for error in at.error)
    _clear_caches()


def test_missing_demo_weights_say_so(monkeypatch, tmp_path):
    for side in ("A", "B"):
        monkeypatch.delenv(f"DEEPVIT_DIAG_APP_CKPT_{side}", raising=False)
    monkeypatch.setattr("deepvit_diag.checkpoints.store.BUNDLED_DIR", tmp_path)
    _clear_caches()
    at = _open()
    assert not at.exception
    assert any("no weights for preset 'vit32'" in error.value for error in at.error)
    assert any("demo weights" in info.value and "not installed" in info.value for info in at.info)
    _clear_caches()


# ----------------------------------------------------------------------------- the demo pair


@pytest.mark.slow
def test_opens_on_the_demo_pair(monkeypatch):
    if not (bundled_path("vit32").is_file() and bundled_path("deepvit32").is_file()):
        pytest.skip("the bundled demo weights are not installed")
    for name in ("CKPT_A", "CKPT_B", "IMAGES", "NUM_IMAGES"):
        monkeypatch.delenv(f"DEEPVIT_DIAG_APP_{name}", raising=False)
    _clear_caches()
    at = _open()
    _assert_fine(at)
    assert any("digits-clutter-test" in caption.value for caption in at.caption)
    assert {metric.label for metric in at.metric} >= {"Collapse starts at block", "Cross-head similarity"}
    # The CLI's defaults (every image of the set the cards name), hence the README's numbers.
    assert any("(360 analysed" in caption.value for caption in at.caption)
    similar = [metric for metric in at.metric if metric.label == "Similar blocks"]
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    # The README's numbers for vit32 (A): 2 of its 32 blocks, 1 and 4, are similar; top-1 95.8%.
    assert similar[0].value == "2 of 32" and similar[0].help.endswith(": 1, 4"), similar[0]
    assert "2 of its blocks (1 and 4) are similar" in readme and "vit32 ViT 2 of 32: 1, 4" in readme
    findings = " ".join(markdown.value for markdown in at.markdown)
    assert "top-1 accuracy 95.8%" in findings and "top-1 accuracy 95.8%" in readme
    for view in VIEWS[1:]:
        _assert_fine(_show(at, view))
        assert view in ("Export", "Sweep", "Ablation") or _charts(at) > 0, view
    _clear_caches()


# ----------------------------------------------------------------------------- ablation


def test_ablation_view_runs_model_b_and_opens_a_saved_ablation(tiny_app, files, tmp_path):
    from deepvit_diag import ablate
    from deepvit_diag.ablation_summary import ablation_findings

    at = _show(_open(), "Ablation")
    _assert_fine(at)
    assert any("Run ablation" in info.value for info in at.info)
    assert any("ablated forward passes" in caption.value for caption in at.caption)  # the cost, up front
    at.radio(key="ablation_side").set_value("b")
    at.number_input(key="ablation_images").set_value(3)
    at.multiselect(key="ablation_studies").set_value(["block", "pruning"])
    at.button(key="ablation_run").click().run()
    _assert_fine(at)
    run = app.compute.ablation_store().get(at.session_state["ablation_request"].key)
    assert run.result.num_images == 3 and run.result.has("block") and not run.result.has("head")
    assert _charts(at) == 2  # cost next to similarity, pruning curves
    shown = {markdown.value for markdown in at.markdown}
    assert {f"- {sentence}" for sentence in ablation_findings("deepvit.safetensors (B)", run.result)} <= shown

    saved = ablate(load_model(files / "vit.safetensors"), files / "images", studies=["block"], progress=False)
    saved.save(tmp_path / "saved")
    at.radio(key="ablation_source").set_value("path").run()
    at.text_input(key="ablation_path").set_value(str(tmp_path / "saved")).run()
    _assert_fine(at)
    assert _charts(at) == 1
    at.text_input(key="ablation_path").set_value(str(tmp_path)).run()
    assert any("is not a saved ablation" in error.value for error in at.error)
