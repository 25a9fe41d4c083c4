"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints.

The public names load on first use (PEP 562): ``import deepvit_diag`` alone does not load
torch or timm, so that the command line answers ``--help`` and usage errors at once. The
first name used loads what it needs; ``deepvit_diag.models`` (imported by any of them)
registers the presets with timm.
"""

from importlib import import_module
from importlib.metadata import version

__version__ = version("deepvit-diag")

# Public name -> the module that defines it.
_HOMES = {
    "AnalysisResult": ".results",
    "AttentionCapture": ".capture",
    "AttentionRecorder": ".capture",
    "CollapseMonitor": ".monitor",
    "ComparisonResult": ".results",
    "DeepVisionTransformer": ".models",
    "DiagError": ".errors",
    "ReAttention": ".models",
    "Settings": ".settings",
    "SweepResult": ".sweeps",
    "analyze": ".analysis",
    "build_model": ".models",
    "compare": ".analysis",
    "convert": ".checkpoints",
    "extract_attention": ".capture",
    "load_model": ".checkpoints",
    "save_native": ".checkpoints",
    "sweep": ".sweep_runner",
}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name], __name__), name)
    elif name == "models":
        value = import_module(".models", __name__)
    elif name == "__all__":
        value = [*sorted(_HOMES), "models", *import_module(".metrics", __name__).__all__]
    else:
        metrics = import_module(".metrics", __name__)
        if name not in metrics.__all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(metrics, name)
    globals()[name] = value  # the next look-up is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
