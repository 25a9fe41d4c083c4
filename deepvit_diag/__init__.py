"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints."""

from importlib.metadata import version

__version__ = version("deepvit-diag")

from . import models  # registers the presets with timm
from .ablation import ablate
from .ablation_result import AblationResult
from .analysis import analyze, compare
from .capture import AttentionCapture, AttentionRecorder, extract_attention
from .checkpoints import convert, load_model, save_native
from .errors import DiagError
from .metrics import *  # noqa: F403  (the metrics' __all__)
from .metrics import __all__ as _metrics_all
from .models import DeepVisionTransformer, ReAttention, build_model
from .monitor import CollapseMonitor
from .results import AnalysisResult, ComparisonResult
from .settings import Settings
from .sweep_runner import sweep
from .sweeps import SweepResult

__all__ = [
    "AblationResult",
    "AnalysisResult",
    "AttentionCapture",
    "AttentionRecorder",
    "CollapseMonitor",
    "ComparisonResult",
    "DeepVisionTransformer",
    "DiagError",
    "ReAttention",
    "Settings",
    "SweepResult",
    "ablate",
    "analyze",
    "build_model",
    "compare",
    "convert",
    "extract_attention",
    "load_model",
    "models",
    "save_native",
    "sweep",
    *_metrics_all,
]
