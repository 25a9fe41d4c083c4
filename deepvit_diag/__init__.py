"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints.

The public names below are imported on first use (PEP 562): ``import deepvit_diag`` takes no
time, so the command line can answer a Ctrl-C while torch and timm load (``deepvit_diag.__main__``).
Using any of them, or importing ``deepvit_diag.models``, registers the presets with timm.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it; the metrics' names come from ``metrics.__all__``.
_EXPORTS = {
    "AnalysisResult": "results",
    "AttentionCapture": "capture",
    "AttentionRecorder": "capture",
    "ComparisonResult": "results",
    "DeepVisionTransformer": "models",
    "DiagError": "errors",
    "ReAttention": "models",
    "Settings": "settings",
    "analyze": "analysis",
    "build_model": "models",
    "compare": "analysis",
    "extract_attention": "capture",
    "load_model": "checkpoints",
    "save_native": "checkpoints",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name == "__all__":
        value = [*_EXPORTS, "models", *import_module(".metrics", __name__).__all__]
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    elif name in (metrics := import_module(".metrics", __name__)).__all__:
        value = getattr(metrics, name)
    else:
        try:
            value = import_module(f".{name}", __name__)  # a submodule, e.g. deepvit_diag.models
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
