"""The marker of an output folder deepvit-diag wrote, and the manifest that makes its files one unit.

Every folder output (``analyze``/``compare``/``merge``/``sweep --out``, a shard's folder) ends with
``.deepvit-diag.json``, written and moved into place after every other file: the name, size and sha256
of each file of that output. It serves twice:

* ownership: ``--out`` may replace a file only when the marker lists it (a zip that happens to be
  named ``arrays.npz`` in a user's folder is not ours);
* one unit: loading checks the files it reads against the marker, so a folder whose files come from
  different runs (a kill between two renames) is refused instead of loaded as a mix. A folder without
  a marker (``AnalysisResult.save`` called from Python) is read as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DiagError

MARKER = ".deepvit-diag.json"
MARKER_FORMAT = "deepvit-diag output"


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def write_marker(folder: Path, files: Iterable[Path], kept: Iterable[str] = ()) -> Path:
    """``folder/MARKER`` describing ``files`` (the output's files, in ``folder``); ``kept`` names files of
    an earlier output that stay deepvit-diag's (listed for ownership, not part of this unit)."""
    document = {
        "format": MARKER_FORMAT,
        "files": {path.name: _fingerprint(path) for path in files},
        "kept": sorted(set(kept)),
    }
    path = folder / MARKER
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None when it has none or one that is not deepvit-diag's."""
    try:
        document = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    files, kept = (document.get("files"), document.get("kept")) if isinstance(document, dict) else (None, None)
    if document.get("format") != MARKER_FORMAT or not isinstance(files, dict) or not isinstance(kept, list):
        return None
    return document


def listed(folder: Path) -> set[str]:
    """The names the folder's marker says deepvit-diag wrote (none without a marker)."""
    marker = read_marker(folder)
    return set() if marker is None else {*marker["files"], *(name for name in marker["kept"] if isinstance(name, str))}


def check_unit(folder: Path, names: Iterable[str]) -> None:
    """Refuse (``DiagError``) files that are not those the folder's marker describes: written by different
    runs, or changed since. Nothing is checked in a folder without a marker."""
    marker = read_marker(folder)
    if marker is None:
        return
    for name in names:
        entry = marker["files"].get(name)
        path = folder / name
        if entry is None or not path.is_file() or _fingerprint(path) != entry:
            raise DiagError(
                f"{folder} mixes files of different runs: {name} is not the file written with the rest of this "
                f"output ({MARKER} records another); run the command again"
            )
