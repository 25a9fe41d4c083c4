"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints.

The names here are what a user calls (reference: docs/api.md); everything else stays
importable from its module (e.g. ``deepvit_diag.metrics.TOP_K``).

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
    "AblationResult": ".ablation_result",
    "Accuracy": ".metrics",
    "AnalysisResult": ".results",
    "AttentionCapture": ".capture",
    "AttentionRecorder": ".capture",
    "CollapseMonitor": ".monitor",
    "ComparisonResult": ".results",
    "DeepVisionTransformer": ".models",
    "DiagError": ".errors",
    "HeadMixing": ".metrics",
    "MinibatchCKA": ".metrics",
    "ReAttention": ".models",
    "Settings": ".settings",
    "SimilarBlocks": ".metrics",
    "SweepResult": ".sweeps",
    "ablate": ".ablation",
    "analyze": ".analysis",
    "attention_entropy": ".metrics",
    "build_model": ".models",
    "compare": ".analysis",
    "convert": ".checkpoints",
    "cross_head_similarity": ".metrics",
    "cross_layer_similarity": ".metrics",
    "extract_attention": ".capture",
    "head_mixing_matrices": ".metrics",
    "linear_cka": ".metrics",
    "load_model": ".checkpoints",
    "load_saved": ".saved",
    "mean_attention_distance": ".metrics",
    "mean_off_diagonal": ".metrics",
    "neighbour_similarity": ".metrics",
    "rank_collapse": ".metrics",
    "save_native": ".checkpoints",
    "similar_blocks": ".metrics",
    "similarity_ratio": ".metrics",
    "sweep": ".sweep_runner",
    "token_similarity": ".metrics",
    "topk_correct": ".metrics",
}
_MODULES = ("figures", "models")

__all__ = sorted([*_HOMES, *_MODULES])


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name], __name__), name)
    elif name in _MODULES:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next look-up is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
