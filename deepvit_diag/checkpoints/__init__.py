"""Checkpoint loading: safe reading, layout detection and conversion, the weight store, provenance."""

from ..hints import GuessWarning
from .inference import infer_arch
from .layouts import detect_layout
from .loader import build_arch, import_checkpoint, load_model, resolve_arch
from .native import read_native_metadata, save_native
from .objects import convert
from .safe_load import read_checkpoint
from .store import bundled_path, list_models, list_store, store_dir, store_path

__all__ = [
    "GuessWarning",
    "build_arch",
    "convert",
    "bundled_path",
    "detect_layout",
    "import_checkpoint",
    "infer_arch",
    "list_models",
    "list_store",
    "load_model",
    "read_checkpoint",
    "read_native_metadata",
    "resolve_arch",
    "save_native",
    "store_dir",
    "store_path",
]
