"""The app with saved results (``app/main.py``, ``app/sidebar.py``, ``app/sources.py``, the Export and
Sweep views): folders and zips that ``deepvit-diag analyze|compare|sweep`` wrote opened at once, hostile
zips refused, every output downloadable, and the saved result of the defaults shown on the first screen."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

# The fixtures that open the app on tiny checkpoints with empty caches.
from test_app import APP, TIMEOUT, VIEWS, _assert_fine, _charts, _show, files, tiny_app  # noqa: F401

import app.compute
from deepvit_diag import Settings, analyze, catalogue, compare, load_model, sweep
from deepvit_diag.escaping import markdown_text
from deepvit_diag.manifest import MARKER
from deepvit_diag.outputs import write_checked
from deepvit_diag.report import write_report
from deepvit_diag.results import ComparisonResult, is_result_file
from deepvit_diag.saved import load_saved, model_labels, pack_output
from deepvit_diag.summary import block_list
from deepvit_diag.sweeps import SweepResult

pytestmark = pytest.mark.usefixtures("tiny_app")


def _save_like_the_cli(result, folder: Path) -> Path:
    """``result`` written as ``deepvit-diag analyze|compare --out folder`` writes it."""

    def fill(staging: Path) -> None:
        result.write_files(staging)
        write_report(staging / "report.html", result, model_labels(result))

    return write_checked(folder, is_result_file, fill)


def _defaults() -> tuple[str, str, str]:
    return tuple(os.environ[f"DEEPVIT_DIAG_APP_{name}"] for name in ("CKPT_A", "CKPT_B", "IMAGES"))


def _saved_comparison(folder: Path, **settings) -> ComparisonResult:
    spec_a, spec_b, images = _defaults()
    result = compare(load_model(spec_a), load_model(spec_b), images, Settings(num_images=5, **settings))
    _save_like_the_cli(result, folder)
    return result


def _no_analysis(monkeypatch) -> list[int]:
    calls = []
    monkeypatch.setattr(app.compute, "compare", lambda *args, **kwargs: calls.append(1) or compare(*args, **kwargs))
    return calls


def _open_path(at: AppTest, folder: Path) -> AppTest:
    at.radio(key="saved_source").set_value("path").run()
    at.text_input(key="saved_path").set_value(str(folder))
    return at.button(key="saved_open").click().run()


def _open_zip(at: AppTest, name: str, content: bytes) -> AppTest:
    at.radio(key="saved_source").set_value("upload").run()
    at.file_uploader(key="saved_upload").upload(name, content)
    return at.button(key="saved_open").click().run()


def _similar_blocks(at: AppTest) -> list[str]:
    return [metric.value for metric in at.metric if metric.label == "Similar blocks"]


def _expected_similar(result: ComparisonResult) -> list[str]:
    return [f"{side.summary()['similar_blocks']} of {side.geometry.num_blocks}" for side in (result.a, result.b)]


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """What every ``st.download_button`` of the runs offers, by file name."""
    offered: dict[str, bytes] = {}
    original = st.download_button

    def recording(label, data, file_name=None, **kwargs):
        offered[file_name] = data
        return original(label, data, file_name=file_name, **kwargs)

    monkeypatch.setattr(st, "download_button", recording)
    return offered


# ----------------------------------------------------------------------------- opening saved folders


def test_a_saved_comparison_folder_opens_in_every_view_without_analysing(tmp_path, monkeypatch, downloads):
    saved = _saved_comparison(tmp_path / "out", k=1)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    calls = _no_analysis(monkeypatch)
    at = _open_path(at, tmp_path / "out")
    _assert_fine(at)
    assert any(
        "Showing the saved result `out` of " + markdown_text("vit.safetensors (A) and deepvit.safetensors (B)")
        in info.value
        for info in at.info
    )
    assert any(markdown_text("k = 1, tau = 0.5") in info.value for info in at.info)  # the settings it was made with
    assert _similar_blocks(at) == _expected_similar(saved)
    assert any(markdown_text("vit.safetensors (A)") in markdown.value for markdown in at.markdown)
    for view in VIEWS[1:]:
        at = _show(at, view)
        _assert_fine(at)
        if view in ("Layer similarity", "Similarity ratio", "Theta", "More metrics"):
            assert _charts(at) > 0, view
    at = _show(at, "Heads")
    assert _charts(at) > 0  # the cross-head figures come from the saved arrays
    assert any("neither the checkpoints nor the images" in info.value for info in at.info)  # one image's maps
    at = _show(at, "Ablation")
    assert any("neither the checkpoints nor the images" in info.value for info in at.info)
    at = _show(at, "Export")
    assert calls == []  # nothing was analysed: every number came from the folder
    assert [button.label for button in at.get("download_button")] == [
        f"Download {name}" for name in ("result.json", "arrays.npz", "report.html", "deepvit-diag-report.zip")
    ]
    archive = tmp_path / "download.zip"
    archive.write_bytes(downloads["deepvit-diag-report.zip"])
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "unzipped")
    assert load_saved(tmp_path / "unzipped" / "deepvit-diag-report") == saved
    assert (
        downloads["report.html"].startswith(b"<!DOCTYPE html>") and b"vit.safetensors (A)" in downloads["report.html"]
    )
    (tmp_path / "loose").mkdir()
    for name in ("result.json", "arrays.npz"):
        (tmp_path / "loose" / name).write_bytes(downloads[name])
    assert ComparisonResult.load(tmp_path / "loose") == saved

    at.button(key="run").click().run()  # back to the live analysis (of the first visit, from the store)
    _assert_fine(at)
    assert not any("Showing the saved result" in info.value for info in at.info)
    assert at.session_state["shown_analysis"].saved is None


def test_a_saved_analysis_of_one_model_opens_with_one_column(tmp_path, monkeypatch):
    spec_a, _, images = _defaults()
    saved = analyze(load_model(spec_a), images, num_images=5)
    _save_like_the_cli(saved, tmp_path / "one")
    at = _open_path(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tmp_path / "one")
    _assert_fine(at)
    assert _similar_blocks(at) == [f"{saved.summary()['similar_blocks']} of {saved.geometry.num_blocks}"]
    assert not any(subheader.value == "A against B" for subheader in at.subheader)
    for view in VIEWS[1:]:
        _assert_fine(_show(at, view))


def test_a_saved_sweep_opens_in_the_sweep_view_with_its_downloads(files, tmp_path, downloads):  # noqa: F811
    saved = sweep([files / "vit.safetensors", files / "deepvit.safetensors"], files / "images", progress=False)
    saved.save(tmp_path / "swept")
    at = _open_path(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), tmp_path / "swept")
    assert any("it is shown in the **Sweep** view" in info.value for info in at.info)
    at = _show(at, "Sweep")
    _assert_fine(at)
    assert at.radio(key="sweep_source").value == "opened"
    assert _charts(at) == len(catalogue.SWEEP_FIGURES)
    assert [button.label for button in at.get("download_button")] == [
        f"Download {name}" for name in ("sweep.html", "sweep.json", "arrays.npz", "deepvit-diag-sweep.zip")
    ]
    assert downloads["sweep.html"].startswith(b"<!DOCTYPE html>")
    (tmp_path / "loose").mkdir()
    for name in ("sweep.json", "arrays.npz"):
        (tmp_path / "loose" / name).write_bytes(downloads[name])
    assert SweepResult.load(tmp_path / "loose").summary() == saved.summary()
    # The zip it offers opens again, in the view's own upload.
    at.radio(key="sweep_source").set_value("upload").run()
    at.file_uploader(key="sweep_upload").set_value(
        [("deepvit-diag-sweep.zip", downloads["deepvit-diag-sweep.zip"], "application/zip")]
    )
    at.run()
    _assert_fine(at)
    assert _charts(at) == len(catalogue.SWEEP_FIGURES)


def test_an_uploaded_zip_of_a_result_opens(tmp_path):
    spec_a, spec_b, images = _defaults()
    saved = compare(load_model(spec_a), load_model(spec_b), images, Settings(num_images=4))
    packed = pack_output(saved.write_files, "deepvit-diag-report")
    at = _open_zip(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), "my result.zip", packed)
    _assert_fine(at)
    assert any(f"Showing the saved result `{markdown_text('my result.zip')}`" in info.value for info in at.info)
    assert any(markdown_text("4 images") in info.value for info in at.info)
    assert _similar_blocks(at) == _expected_similar(saved)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_hostile_zips_are_refused_in_one_line(tmp_path, monkeypatch):
    _saved_comparison(tmp_path / "out")
    good = {f"out/{path.name}": path.read_bytes() for path in (tmp_path / "out").iterdir() if path.is_file()}
    hostile = {
        "traversal.zip": (_zip({**good, "out/../../escaped.txt": b"x"}), "points outside the archive's folder"),
        "foreign.zip": (
            _zip({name: data for name, data in good.items() if not name.endswith(MARKER)}),
            "is not a deepvit-diag output",
        ),
        "notes.txt": (b"not a zip", "is not a .zip file"),
        "text.zip": (b"not a zip either", "it is not a zip archive"),
    }
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    for name, (content, words) in hostile.items():
        at = _open_zip(at, name, content)
        assert not at.exception
        assert [error.value for error in at.error if words in error.value], (name, [e.value for e in at.error])
        assert len(at.error) == 1 and "\n" not in at.error[0].value
        assert [tab.label for tab in at.tabs] == VIEWS  # the live analysis is still shown
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("escaped.txt").exists()
    monkeypatch.setenv("DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB", "0.01")
    at = _open_zip(AppTest.from_file(APP, default_timeout=TIMEOUT).run(), "big.zip", pack_output(_fill(good), "out"))
    assert len(at.error) == 1 and "more than the 0.01 MB limit" in at.error[0].value


def _fill(entries: dict[str, bytes]):
    def fill(folder: Path) -> None:
        for name, data in entries.items():
            if not name.endswith(MARKER):
                (folder / Path(name).name).write_bytes(data)

    return fill


def test_a_folder_outside_the_readable_roots_is_refused(tmp_path, monkeypatch):
    _saved_comparison(tmp_path / "out")
    monkeypatch.setenv("DEEPVIT_DIAG_APP_ROOTS", str(tmp_path / "elsewhere"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at = _open_path(at, tmp_path / "out")
    assert any("that path is not readable here" in error.value for error in at.error)


# ----------------------------------------------------------------------------- the first screen


def test_the_first_screen_opens_the_saved_result_of_the_defaults_at_once(tmp_path, monkeypatch):
    saved = _saved_comparison(tmp_path / "deepvit-diag-report")
    monkeypatch.setenv("DEEPVIT_DIAG_APP_SAVED", str(tmp_path / "deepvit-diag-report"))
    calls = _no_analysis(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _assert_fine(at)
    assert calls == []
    assert any("Opened at once: the saved result of `deepvit-diag compare`" in info.value for info in at.info)
    assert any(markdown_text("5 images") in info.value and markdown_text("k = 2") in info.value for info in at.info)
    assert _similar_blocks(at) == _expected_similar(saved)
    blocks = block_list(saved.a.similar_blocks().indices)
    assert blocks and any(blocks in (metric.help or "") for metric in at.metric)
    at.button(key="rerun_live").click().run()  # the same numbers, analysed live
    _assert_fine(at)
    assert calls == [1]
    assert _similar_blocks(at) == _expected_similar(saved)
    assert not any("Opened at once" in info.value for info in at.info)


def test_a_saved_result_of_other_settings_is_not_shown_first(tmp_path, monkeypatch):
    _saved_comparison(tmp_path / "deepvit-diag-report", tau=0.6)
    monkeypatch.setenv("DEEPVIT_DIAG_APP_SAVED", str(tmp_path / "deepvit-diag-report"))
    calls = _no_analysis(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _assert_fine(at)
    assert calls == [1] and not any("Opened at once" in info.value for info in at.info)


def test_the_apps_saved_folder_is_where_the_cli_writes():
    from app.config import DEFAULT_SAVED
    from deepvit_diag.cli import build_parser

    args = build_parser().parse_args(["compare", "--ckpt-a", "vit32", "--ckpt-b", "deepvit32"])
    assert args.out == Path(DEFAULT_SAVED) == Path(app.compute.RESULT_FOLDER)
