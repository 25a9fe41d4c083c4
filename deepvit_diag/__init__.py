"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints.

The names here are what a user calls (reference: docs/api.md); everything else stays
importable from its module (e.g. ``deepvit_diag.metrics.TOP_K``).
"""

from importlib.metadata import version

__version__ = version("deepvit-diag")

from . import figures, models  # models registers the presets with timm
from .ablation import ablate
from .ablation_result import AblationResult
from .analysis import analyze, compare
from .capture import AttentionCapture, AttentionRecorder, extract_attention
from .checkpoints import convert, load_model, save_native
from .errors import DiagError
from .metrics import (
    Accuracy,
    HeadMixing,
    MinibatchCKA,
    SimilarBlocks,
    attention_entropy,
    cross_head_similarity,
    cross_layer_similarity,
    head_mixing_matrices,
    linear_cka,
    mean_attention_distance,
    mean_off_diagonal,
    neighbour_similarity,
    rank_collapse,
    similar_blocks,
    similarity_ratio,
    token_similarity,
    topk_correct,
)
from .models import DeepVisionTransformer, ReAttention, build_model
from .monitor import CollapseMonitor
from .results import AnalysisResult, ComparisonResult
from .settings import Settings
from .sweep_runner import sweep
from .sweeps import SweepResult

__all__ = [
    "AblationResult",
    "Accuracy",
    "AnalysisResult",
    "AttentionCapture",
    "AttentionRecorder",
    "CollapseMonitor",
    "ComparisonResult",
    "DeepVisionTransformer",
    "DiagError",
    "HeadMixing",
    "MinibatchCKA",
    "ReAttention",
    "Settings",
    "SimilarBlocks",
    "SweepResult",
    "ablate",
    "analyze",
    "attention_entropy",
    "build_model",
    "compare",
    "convert",
    "cross_head_similarity",
    "cross_layer_similarity",
    "extract_attention",
    "figures",
    "head_mixing_matrices",
    "linear_cka",
    "load_model",
    "mean_attention_distance",
    "mean_off_diagonal",
    "models",
    "neighbour_similarity",
    "rank_collapse",
    "save_native",
    "similar_blocks",
    "similarity_ratio",
    "sweep",
    "token_similarity",
    "topk_correct",
]
