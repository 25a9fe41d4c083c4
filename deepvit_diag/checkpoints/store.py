"""The weight store (one directory of deepvit-diag files) and the bundled demo weights.

The store is ``$DEEPVIT_DIAG_HOME/weights`` when that variable is set, else
``$XDG_CACHE_HOME/deepvit-diag/weights`` (``~/.cache/deepvit-diag/weights``). Entry ``NAME`` is
``NAME.safetensors`` in the native format. Bundled demo weights for preset ``P`` are
``deepvit_diag/weights/P-digits.safetensors`` when the package ships them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import DiagError
from ..models.presets import PRESET_DESCRIPTIONS, PRESETS
from .native import read_native_metadata
from .provenance import describe
from .safe_load import CHECKPOINT_SUFFIXES

STORE_ENV = "DEEPVIT_DIAG_HOME"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def store_dir() -> Path:
    home = os.environ.get(STORE_ENV)
    if home:
        return Path(home).expanduser() / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "deepvit-diag" / "weights"


def is_store_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and not name.endswith(CHECKPOINT_SUFFIXES)  # fullmatch: no trailing newline


def store_path(name: str) -> Path:
    if not is_store_name(name):
        raise DiagError(f"invalid weight-store name {name!r}: use letters, digits, '_', '-' or '.', no file suffix")
    return store_dir() / f"{name}.safetensors"


def bundled_path(preset: str) -> Path:
    return BUNDLED_DIR / f"{preset}-digits.safetensors"


def list_store() -> list[dict[str, Any]]:
    """Store entries: ``name``, ``path``, ``arch``, ``card`` (``error`` instead for unreadable files)."""
    entries = []
    for path in sorted(store_dir().glob("*.safetensors")):
        entry: dict[str, Any] = {"name": path.stem, "path": path}
        try:
            meta = read_native_metadata(path)
            if meta is None:
                raise ValueError("no deepvit-diag metadata")
            entry.update(arch=meta["arch"], card=meta["card"])
        except Exception as err:  # a broken store file must not break the listing
            entry["error"] = f"unreadable: {err}"
        entries.append(entry)
    return entries


def list_models() -> list[dict[str, Any]]:
    """Presets, store entries and bundled weights: ``name``, ``kind`` ("preset" | "store"), ``weights``
    ("store" | "bundled" | "none"), ``path`` and a one-line ``description``."""
    store = {entry["name"]: entry for entry in list_store()}
    rows = []
    for name, arch in PRESETS.items():
        if name in store:
            rows.append(_store_row(store.pop(name), kind="preset"))
        elif bundled_path(name).is_file():
            meta = read_native_metadata(bundled_path(name)) or {"arch": arch, "card": None}
            rows.append(
                {
                    "name": name,
                    "kind": "preset",
                    "weights": "bundled",
                    "path": bundled_path(name),
                    "description": describe(name, "bundled", "native", meta["arch"], meta["card"]),
                }
            )
        else:
            rows.append(
                {
                    "name": name,
                    "kind": "preset",
                    "weights": "none",
                    "path": None,
                    "description": f"{PRESET_DESCRIPTIONS[name]}; no weights yet: deepvit-diag import FILE --as {name}",
                }
            )
    rows.extend(_store_row(entry, kind="store") for entry in store.values())
    return rows


def _store_row(entry: dict[str, Any], kind: str) -> dict[str, Any]:
    description = entry.get("error") or describe(entry["name"], "store", "native", entry["arch"], entry["card"])
    return {"name": entry["name"], "kind": kind, "weights": "store", "path": entry["path"], "description": description}
