"""Opening saved outputs and zips of them (deepvit_diag/saved.py): every kind, and hostile archives refused."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepvit_diag import Settings, analyze, compare, sweep
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.errors import DiagError
from deepvit_diag.manifest import MARKER
from deepvit_diag.outputs import write_checked
from deepvit_diag.results import AnalysisResult, ComparisonResult, is_result_file
from deepvit_diag.saved import extract_saved, load_saved, made_with, model_labels, pack_output, saved_kind
from deepvit_diag.sweeps import SweepResult


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved comparison, analysis and sweep of tiny models, written as the command line writes them."""
    import torch

    from deepvit_diag.models import build_model

    root = tmp_path_factory.mktemp("saved")
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)
    paths = {}
    for family in ("vit", "deepvit"):
        torch.manual_seed(0)
        paths[family] = root / f"{family}.safetensors"
        save_native(build_model({"family": family, "kwargs": kwargs}), paths[family])
    images = root / "images"
    images.mkdir()
    for index in range(4):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    from deepvit_diag import load_model

    a, b = load_model(str(paths["vit"])), load_model(str(paths["deepvit"]))
    comparison = compare(a, b, images, num_examples=1)
    write_checked(root / "comparison", is_result_file, comparison.write_files)
    analysis = analyze(a, images, num_examples=1)
    write_checked(root / "analysis", is_result_file, analysis.write_files)
    swept = sweep([paths["vit"], paths["deepvit"]], images, progress=False)
    swept.save(root / "sweep")
    return root, paths, comparison, images


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _folder_entries(folder: Path, prefix: str = "out/") -> dict[str, bytes]:
    return {prefix + path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_every_kind_of_saved_folder_opens_as_what_it_is(saved):
    root, _, comparison, _ = saved
    assert [saved_kind(root / kind) for kind in ("comparison", "analysis", "sweep")] == [
        "comparison",
        "analysis",
        "sweep",
    ]
    assert load_saved(root / "comparison") == comparison
    assert isinstance(load_saved(root / "analysis"), AnalysisResult)
    assert isinstance(load_saved(root / "sweep"), SweepResult)
    with pytest.raises(DiagError, match="has neither result.json nor sweep.json"):
        saved_kind(root)


def test_labels_are_the_names_the_command_line_gave(saved):
    root, paths, comparison, images = saved
    assert model_labels(comparison) == ["vit.safetensors (A)", "deepvit.safetensors (B)"]
    assert model_labels(comparison.a) == ["vit.safetensors"]


def test_made_with_names_the_first_difference(saved):
    root, paths, comparison, images = saved
    specs = (str(paths["vit"]), str(paths["deepvit"]))
    weights = (paths["vit"], paths["deepvit"])
    settings = Settings(num_images=4)
    assert made_with(comparison, specs, weights, str(images), settings) is None
    assert "analysed 4 images, not 5" in made_with(comparison, specs, weights, images, Settings(num_images=5))
    assert "tau = 0.5, not 0.6" in made_with(comparison, specs, weights, images, Settings(tau=0.6))
    assert "model B" in made_with(comparison, (specs[0], "deepvit32"), weights, images, settings)
    assert "other weights" in made_with(comparison, specs, (paths["vit"], paths["vit"]), images, settings)
    assert "not photos" in made_with(comparison, specs, weights, None, settings)  # no card names a set


@pytest.mark.parametrize("prefix", ["out/", ""])
def test_a_zipped_output_folder_extracts_and_loads(saved, tmp_path, prefix):
    root, _, comparison, _ = saved
    archive = tmp_path / "result.zip"
    archive.write_bytes(_zip(_folder_entries(root / "comparison", prefix)))
    folder = extract_saved(archive, tmp_path / "opened")
    assert ComparisonResult.load(folder) == comparison


def test_pack_output_is_what_extract_saved_opens(saved, tmp_path):
    _, _, comparison, _ = saved
    packed = pack_output(comparison.write_files, "deepvit-diag-report")
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        assert sorted(archive.namelist()) == [
            f"deepvit-diag-report/{name}" for name in (MARKER, "arrays.npz", "result.json")
        ]
    (tmp_path / "packed.zip").write_bytes(packed)
    assert load_saved(extract_saved(tmp_path / "packed.zip", tmp_path / "opened")) == comparison


def _hostile(saved) -> dict[str, bytes]:
    root, _, _, _ = saved
    good = _folder_entries(root / "comparison")
    marker = good["out/" + MARKER]
    return {
        "traversal": _zip({**good, "out/../../evil.json": b"{}"}),
        "absolute": _zip({"/etc/result.json": b"{}", MARKER: marker}),
        "nested": _zip({**good, "out/deeper/x.json": b"{}"}),
        "link": _zip({**good, "out/link.json": b"/etc/passwd"}, links=("out/link.json",)),
        "two folders": _zip({"a/result.json": good["out/result.json"], "b/" + MARKER: marker}),
        "no marker": _zip({name: data for name, data in good.items() if not name.endswith(MARKER)}),
        "unlisted": _zip({**good, "out/notes.txt": b"hello"}),
        "edited": _zip({**good, "out/result.json": good["out/result.json"].replace(b'"k": 2', b'"k": 3')}),
        "not a zip": b"this is a text file, not an archive\n" * 4,
        "foreign marker": _zip({**good, "out/" + MARKER: json.dumps({"format": "other"}).encode()}),
    }


@pytest.mark.parametrize(
    "case, words",
    [
        ("traversal", "points outside the archive's folder"),
        ("absolute", "points outside the archive's folder"),
        ("nested", "lies in a nested folder"),
        ("link", "is a link"),
        ("two folders", "not all in one folder"),
        ("no marker", "is not a deepvit-diag output"),
        ("unlisted", "notes.txt, which its .deepvit-diag.json does not list"),
        ("edited", "not those its .deepvit-diag.json describes"),
        ("not a zip", "not a zip archive"),
        ("foreign marker", "is not deepvit-diag's"),
    ],
)
def test_hostile_zips_are_refused_in_one_line_leaving_nothing(saved, tmp_path, case, words):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(_hostile(saved)[case])
    with pytest.raises(DiagError, match="refused upload.zip: ") as refused:
        extract_saved(archive, tmp_path / "opened")
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "opened").exists() and not (tmp_path / "evil.json").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["upload.zip"]


def test_a_zip_that_would_expand_beyond_the_limit_is_refused_before_extracting(saved, tmp_path, monkeypatch):
    root, _, _, _ = saved
    monkeypatch.setattr("deepvit_diag.archives.TOTAL_LIMIT", 1000)
    archive = tmp_path / "big.zip"
    archive.write_bytes(_zip({**_folder_entries(root / "comparison"), "out/zeros.bin": bytes(5000)}))
    with pytest.raises(DiagError, match=r"refused big.zip: its entries would expand to .* \(at most 0.0 MB"):
        extract_saved(archive, tmp_path / "opened")
    assert not (tmp_path / "opened").exists()
    many = tmp_path / "many.zip"
    many.write_bytes(_zip({f"{index}.json": b"{}" for index in range(40)}))
    with pytest.raises(DiagError, match="40 entries, more than"):
        extract_saved(many, tmp_path / "opened")


def test_a_result_json_nested_too_deep_is_refused_in_one_line(tmp_path):
    """Read like every other document: JSON deeper than the parser's stack is refused, not a RecursionError."""
    (tmp_path / "result.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DiagError, match="nested 100000 levels deep"):
        saved_kind(tmp_path)
