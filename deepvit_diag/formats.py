"""The files deepvit-diag writes: JSON documents that name their format and version, numpy
``.npz`` archives beside them, and how to tell a file this tool wrote (what ``--out`` may
replace). Results, shards, sweeps, the monitor and training all read and write through here.

A document is a JSON object with ``"format"`` (e.g. ``"deepvit-diag analysis"``) and
``"version"``; a saved result is a folder of one document and ``arrays.npz``.
"""

from __future__ import annotations

import json
import platform
import zipfile
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .archives import check_expansion
from .errors import DiagError
from .jsonfiles import check_depth
from .manifest import check_unit

ARRAYS_FILE = "arrays.npz"
# The first bytes of a zip archive (an .npz, a torch.save file); an empty archive starts with
# the end-of-directory record.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# The packages whose versions a saved file records (distribution names).
RECORDED_PACKAGES = {"deepvit_diag": "deepvit-diag", "torch": "torch", "timm": "timm", "numpy": "numpy"}


def package_versions() -> dict[str, str]:
    """The installed versions of deepvit-diag and the packages that shape its numbers, and Python's."""
    versions = {}
    for key, distribution in RECORDED_PACKAGES.items():
        try:
            versions[key] = version(distribution)
        except PackageNotFoundError:
            versions[key] = "not installed"
    return {**versions, "python": platform.python_version()}


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, paths strings), so that a
    metadata dict equals what ``json.load`` gives back."""
    return json.loads(json.dumps(value, default=_builtin))


def _builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)  # Path, torch.dtype, torch.device, ...


def is_zip_archive(path: Path) -> bool:
    """Whether ``path`` starts like a zip archive (an ``.npz``; an empty one has no entries)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in ZIP_MAGIC
    except OSError:
        return False


def written_by_us(path: Path, documents: Mapping[str, tuple[str, ...]], archives: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` is a file deepvit-diag wrote (what ``--out`` may replace): a document
    named in ``documents`` whose ``format`` is one of those listed for its name, or an
    archive named in ``archives`` that is a zip archive."""
    if path.name in archives:
        return is_zip_archive(path)
    if path.name not in documents:
        return False
    try:
        text = path.read_text(encoding="utf-8")
        check_depth(text, str(path))  # a file nested too deep for json is not ours (and would overflow the stack)
        document = json.loads(text)
    except (OSError, ValueError, DiagError):
        return False
    return isinstance(document, dict) and document.get("format") in documents[path.name]


def read_json(path: Path, missing: str) -> Any:
    """The JSON value in ``path``, refused in one ``DiagError`` line when it cannot be read, is not
    JSON or nests too deep to parse; ``missing`` is what to say of the folder when it cannot be
    read (e.g. "is not a saved deepvit-diag result")."""
    try:
        text = path.read_text(encoding="utf-8")
        check_depth(text, str(path))
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DiagError(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise DiagError(f"{path.parent} {missing} (no readable {path.name}: {err.strerror or err})") from None


def read_document(path: Path, expected_format: str, missing: str) -> dict[str, Any]:
    """The JSON document at ``path``, which must name ``expected_format``; ``missing`` as for ``read_json``."""
    document = read_json(path, missing)
    if not isinstance(document, dict) or document.get("format") != expected_format:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise DiagError(f"{path} holds a {found!r} document, expected {expected_format!r}")
    return document


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON; NaN and infinity are refused (they are not JSON)."""
    path.write_text(json.dumps(jsonable(document), indent=2, allow_nan=False), encoding="utf-8")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (pickles refused; expansion capped, ``archives.check_expansion``)."""
    try:
        check_expansion(path)
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = getattr(err, "strerror", None) or str(err).strip().split("\n")[0] or type(err).__name__
        raise DiagError(f"{path} is damaged or not a numpy archive ({reason})") from None


def read_folder(folder: str | Path, expected_format: str, document_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """A saved folder's document (of ``expected_format``) and its ``arrays.npz``."""
    folder = Path(folder)
    json_path, npz_path = folder / document_name, folder / ARRAYS_FILE
    if not json_path.is_file() or not npz_path.is_file():
        raise DiagError(f"{folder} is not a saved deepvit-diag result (needs {document_name} and {ARRAYS_FILE})")
    document = read_document(json_path, expected_format, "is not a saved deepvit-diag result")
    check_unit(folder, (document_name, ARRAYS_FILE))
    return document, read_arrays(npz_path)


def write_folder(folder: str | Path, document: dict, arrays: dict[str, np.ndarray], document_name: str) -> Path:
    """Write ``document`` and ``arrays.npz`` (compressed) into ``folder``, made if needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / document_name).write_text(json.dumps(document, indent=2, allow_nan=False))
    np.savez_compressed(folder / ARRAYS_FILE, **arrays)
    return folder


def rebuild(folder: str | Path, build: Callable[[], Any]) -> Any:
    """``build()`` from a folder's contents, a damaged one (entries missing or of the wrong type) as a ``DiagError``."""
    try:
        return build()
    except DiagError as err:
        raise DiagError(f"{folder} is a damaged deepvit-diag result ({err})") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        detail = f"missing entry {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise DiagError(f"{folder} is a damaged deepvit-diag result ({detail})") from None
