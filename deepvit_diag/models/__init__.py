"""ViT and DeepViT models; importing this registers the presets with timm."""

from .attention import ReAttention
from .deepvit import DeepVisionTransformer
from .presets import PRESET_DESCRIPTIONS, PRESETS, attach_arch, build_model, with_overrides

__all__ = [
    "DeepVisionTransformer",
    "ReAttention",
    "PRESETS",
    "PRESET_DESCRIPTIONS",
    "build_model",
    "attach_arch",
    "with_overrides",
]
