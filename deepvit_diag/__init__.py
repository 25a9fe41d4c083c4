"""deepvit-diag: find attention collapse in ViT and DeepViT checkpoints."""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the presets with timm)
from .analysis import analyze, compare  # noqa: F401
from .capture import AttentionCapture, AttentionRecorder, extract_attention  # noqa: F401
from .checkpoints import load_model, save_native  # noqa: F401
from .metrics import *  # noqa: F401,F403  (the metrics' __all__, issue 3)
from .models import DeepVisionTransformer, ReAttention, build_model
from .results import AnalysisResult, ComparisonResult  # noqa: F401
