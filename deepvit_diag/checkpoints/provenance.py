"""One-line descriptions of where a model's weights come from, for terminals and reports."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..models.presets import FAMILY_CLASSES

FORMAT_WORDS = {
    "official": "official DeepViT checkpoint",
    "timm": "timm ViT checkpoint",
    "lucidrains-vit": "vit-pytorch ViT checkpoint",
    "lucidrains-deepvit": "vit-pytorch DeepViT checkpoint",
    "hf-vit": "Hugging Face ViT checkpoint",
    "hf-deit": "Hugging Face DeiT checkpoint",
    "hf-dinov2": "Hugging Face DINOv2 checkpoint",
    "hf-beit": "Hugging Face BEiT checkpoint",
    "hf-clip": "Hugging Face CLIP image tower",
    "hf-siglip": "Hugging Face SigLIP image tower",
    "openai-clip": "CLIP image tower (OpenAI / open_clip)",
    "torchvision": "torchvision ViT checkpoint",
    "dinov2-hub": "DINOv2 hub checkpoint",
    "deit3": "official DeiT III checkpoint",
    "native": "deepvit-diag file",
}


def arch_kwarg(arch: dict[str, Any], key: str) -> Any:
    """A constructor argument of ``arch``, falling back to its class's default."""
    if key in arch["kwargs"]:
        return arch["kwargs"][key]
    cls = FAMILY_CLASSES.get(arch["family"])
    param = inspect.signature(cls).parameters.get(key) if cls else None
    return param.default if param is not None else None


def arch_summary(arch: dict[str, Any], model: nn.Module | None = None) -> str:
    """E.g. ``"16 blocks, width 384, 12 heads, Re-attention in 16/16 blocks"``; timm archs are read off
    their ``model`` when there is one."""
    if arch["family"] == "timm":
        if model is None:
            return f"timm model {arch['name']}"
        heads = model.blocks[0].attn.num_heads
        return f"timm {arch['name']}, {len(model.blocks)} blocks, width {model.embed_dim}, {heads} heads"
    depth = arch_kwarg(arch, "depth")
    text = f"{depth} blocks, width {arch_kwarg(arch, 'embed_dim')}, {arch_kwarg(arch, 'num_heads')} heads"
    if arch["family"] == "deepvit":
        flags = arch_kwarg(arch, "apply_transform")
        count = depth if flags is True else 0 if flags is False else sum(flags)
        text += f", Re-attention in {count}/{depth} blocks"
    return text


# Model-card dataset names of the bundled training data, in words.
DATASET_WORDS = {"digits": "scikit-learn digits", "digits-clutter": "scikit-learn digits on cluttered canvases"}


def card_summary(card: dict[str, Any] | None) -> str:
    """What the model card says about training and origin, e.g. ``"trained on scikit-learn digits, ..."``."""
    if not card:
        return ""
    parts = []
    dataset = card.get("dataset")
    if dataset:
        parts.append("trained on " + DATASET_WORDS.get(dataset, str(dataset)))
    if isinstance(card.get("test_accuracy"), (int, float)):
        parts.append(f"test accuracy {card['test_accuracy']:.1%}")
    if card.get("imported_from"):
        parts.append(f"imported from {card['imported_from']}")
    return ", ".join(parts)


def describe(
    label: str,
    source: str,
    fmt: str | None,
    arch: dict[str, Any],
    card: dict[str, Any] | None,
    entry: str | None = None,
    model: nn.Module | None = None,
) -> str:
    """One plain line: ``"<label>: <where the weights come from> (<entry>) - <arch>, <card facts>"``."""
    summary = arch_summary(arch, model)
    if source == "random":
        return f"{label}: RANDOM WEIGHTS, untrained (pretrained=False) - {summary}; results describe no trained model"
    origin = {
        "bundled": "bundled demo weights",
        "store": "weight store",
        "timm-hub": "timm pretrained weights",
        "object": "converted model object",
    }.get(source) or FORMAT_WORDS.get(fmt or "", "checkpoint")
    if entry:
        origin += f" ({entry})"
    details = ", ".join(p for p in (summary, card_summary(card)) if p)
    return " ".join(f"{label}: {origin} - {details}".split())
