"""``convert(model)``: a ViT object of another library as the equivalent timm model, without a file.

torchvision's ``VisionTransformer``, open_clip's ``CLIP`` / ``VisionTransformer`` (OpenAI CLIP too) and
Hugging Face ``transformers`` ViT, DeiT, DINOv2 and CLIP (vision) models: their state dict goes through
the same layouts as their files (``layouts``), and what a file cannot say the object does: its attention
modules' head count, its activation's class and its LayerNorm eps (or its ``config``). A timm or
deepvit-diag model is returned as it is: ``analyze`` reads it directly.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..introspection import check_readable
from .families import family_of_class
from .huggingface import ACTIVATIONS as HF_ACTIVATIONS
from .loader import load_tensors

# Activation classes by name (torch's, timm's and open_clip's QuickGELU) -> timm's act_layer names.
_ACTIVATION_CLASSES = {"QuickGELU": "quick_gelu", "GELU": "gelu", "SiLU": "silu", "ReLU": "relu"}
_VISION_PARTS = ("visual", "vision")


def convert(model: nn.Module, **overrides: Any) -> nn.Module:
    """``model`` as a timm (or deepvit-diag) model with the same weights, ready for ``analyze``;
    ``overrides`` as for ``load_model`` (``num_heads=``, ...) settle what neither says."""
    if family_of_class(type(model)) is not None:
        check_readable(model)
        return model
    return load_tensors(model.state_dict(), type(model).__name__, stated=_facts(model), **overrides)


def _facts(model: nn.Module) -> dict[str, Any]:
    """What the object says beyond its tensors: heads, activation, LayerNorm eps of its image tower."""
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    if config is not None and hasattr(config, "num_attention_heads"):
        facts = {"num_heads": config.num_attention_heads}
        if getattr(config, "hidden_act", None) in HF_ACTIVATIONS:
            facts["act_layer"] = HF_ACTIVATIONS[config.hidden_act]
        if isinstance(getattr(config, "layer_norm_eps", None), float):
            facts["norm_eps"] = config.layer_norm_eps
        return facts
    named = list(model.named_modules())
    modules = [m for name, m in named if _in_vision(name)] or [m for _, m in named]
    facts = {}
    attention = next((m for m in modules if isinstance(m, nn.MultiheadAttention)), None)
    if attention is not None:
        facts["num_heads"] = attention.num_heads
    norm = next((m for m in modules if isinstance(m, nn.LayerNorm)), None)
    if norm is not None:
        facts["norm_eps"] = norm.eps
    activation = next((m for m in modules if type(m).__name__ in _ACTIVATION_CLASSES), None)
    if activation is not None:
        tanh = getattr(activation, "approximate", "none") == "tanh"
        facts["act_layer"] = "gelu_tanh" if tanh else _ACTIVATION_CLASSES[type(activation).__name__]
    return facts


def _in_vision(name: str) -> bool:
    return any(name.startswith(part) for part in _VISION_PARTS)
