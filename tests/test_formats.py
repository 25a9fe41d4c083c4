"""formats: JSON documents, npz arrays, "written by deepvit-diag" detection, package versions."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

import deepvit_diag
from deepvit_diag.errors import DiagError
from deepvit_diag.formats import (
    is_zip_archive,
    jsonable,
    package_versions,
    read_document,
    read_folder,
    rebuild,
    write_document,
    write_folder,
    written_by_us,
)


def test_package_versions_come_from_the_installed_metadata():
    versions = package_versions()
    assert set(versions) == {"deepvit_diag", "torch", "timm", "numpy", "python"}
    assert versions["numpy"] == version("numpy") and versions["deepvit_diag"] == deepvit_diag.__version__


def test_jsonable_turns_numpy_tuples_and_paths_into_json_types():
    value = {"a": (1, 2), "b": np.float32(0.5), "c": np.arange(2), "d": Path("x/y")}
    assert jsonable(value) == {"a": [1, 2], "b": 0.5, "c": [0, 1], "d": "x/y"}


def test_a_folder_round_trips_and_damage_is_one_line(tmp_path):
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    write_folder(tmp_path / "run", {"format": "deepvit-diag test", "version": 1}, arrays, "doc.json")
    document, loaded = read_folder(tmp_path / "run", "deepvit-diag test", "doc.json")
    assert document == {"format": "deepvit-diag test", "version": 1}
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    with pytest.raises(DiagError, match="holds a 'deepvit-diag test' document, expected 'other'"):
        read_folder(tmp_path / "run", "other", "doc.json")
    (tmp_path / "run" / "arrays.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DiagError, match="damaged or not a numpy archive"):
        read_folder(tmp_path / "run", "deepvit-diag test", "doc.json")
    with pytest.raises(DiagError, match="is a damaged deepvit-diag result \\(missing entry 'k'\\)"):
        rebuild(tmp_path / "run", lambda: {}["k"])


def test_documents_refuse_nan_and_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError):
        write_document(tmp_path / "d.json", {"format": "f", "value": float("nan")})
    with pytest.raises(DiagError, match="is not a shard of an analysis \\(no readable d.json"):
        read_document(tmp_path / "d.json", "f", "is not a shard of an analysis")
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(DiagError, match="not valid JSON"):
        read_document(tmp_path / "d.json", "f", "is missing")


def test_written_by_us_knows_our_documents_and_archives_only(tmp_path):
    ours, theirs, archive = tmp_path / "result.json", tmp_path / "notes.json", tmp_path / "arrays.npz"
    ours.write_text(json.dumps({"format": "deepvit-diag analysis"}))
    theirs.write_text(json.dumps({"format": "deepvit-diag analysis"}))
    np.savez(archive, x=np.zeros(1))
    documents = {"result.json": ("deepvit-diag analysis",)}
    assert written_by_us(ours, documents, ("arrays.npz",)) and written_by_us(archive, documents, ("arrays.npz",))
    assert not written_by_us(theirs, documents, ("arrays.npz",))
    ours.write_text(json.dumps({"format": "someone else"}))
    assert not written_by_us(ours, documents)
    archive.write_text("plain text")
    assert not is_zip_archive(archive) and not written_by_us(archive, documents, ("arrays.npz",))
