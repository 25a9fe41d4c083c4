"""The checkpoint families, one module each, asked in this order (docs/checkpoints.md, "Adding a family").

``detect_family`` names the family of a state dict in timm's / deepvit-diag's keys; ``family_of_class``
the family of a model class (the most specific one: distilled DeiT before ViT).
"""

from __future__ import annotations

from . import beit, cait, deepvit, deit_distilled, eva, vit, vit_relpos
from .base import Family, Reading

# Most specific first: CaiT and relative-position ViTs also have BEiT-like tables or ViT keys, and ViT
# (the last) takes every state dict the others do not.
FAMILIES: tuple[Family, ...] = (
    cait.FAMILY,
    vit_relpos.FAMILY,
    beit.FAMILY,
    deepvit.FAMILY,
    deit_distilled.FAMILY,
    eva.FAMILY,
    vit.FAMILY,
)
BY_NAME = {family.name: family for family in FAMILIES}


def detect_family(keys: object) -> Family:
    """The family of a state dict's keys (ours)."""
    names = frozenset(keys)
    return next(family for family in FAMILIES if family.detect(names))


def family_of_class(cls: type) -> Family | None:
    """The family of a model class (the most specific one)."""
    return next((family for family in FAMILIES if issubclass(cls, family.model_class)), None)


def attention_classes() -> set[type]:
    """Every attention module class a family's blocks use."""
    return {cls for family in FAMILIES for cls in family.attention}


__all__ = ["BY_NAME", "FAMILIES", "Family", "Reading", "detect_family", "family_of_class"]
