"""A checkpoint's architecture, read from its tensors first (docs/checkpoints.md, "Architecture from the weights").

Every constructor argument the tensors determine is read from them: depth, width, MLP width, patch
size, grid and image size (``pos_embed``, or a relative-position table), prefix tokens (class,
distillation, registers), qkv/proj bias, qk-norm and its head width, layer scale, norm placement
(pre-norm, ``fc_norm``), classes, and each family's own parts. What they cannot say comes, in this
order, from the caller's ``overrides``, a *base* (``arch=``, a recorded model name, a Hugging Face
``config.json``) and the family's convention:

==================  ===============================  ===================================================
value               convention                       announced
==================  ===============================  ===================================================
heads               a per-head tensor (Θ, BEiT and   when guessed: 12 for the paper's ViT shape (width
                    relative-position tables, CaiT's  384, MLP ratio 3, patch 16) is the official rule;
                    talking heads) or ``q_norm``'s    else 64-wide heads (timm), else 12 (official
                    width decides; else a guess       DeepViT/ViT); vit-pytorch: ``dim_head=64``
LayerNorm eps       1e-6 (timm, official); 1e-5      CLIP-style pre-norm ViTs (1e-5, with GELU)
                    (vit-pytorch)
pooling             ``fc_norm`` means average         vit-pytorch DeepViT's ``pool='cls'``
                    pooling (timm's rule), no class
                    token too; else the class token
activation          GELU                              with the pre-norm guess (OpenAI CLIP: QuickGELU)
EVA rotary          SwiGLU MLP (EVA-02) means rotary  always
                    embeddings, else none (EVA)
relative-position   pre-norm blocks                   always (``*_rpn`` models are post-norm)
ViT blocks
==================  ===============================  ===================================================

A value of the base that the tensors contradict is no error: the tensors win and the difference is
listed (``Inference.notes``), as is every guess; the loader turns the notes into one warning and keeps
them in the model's provenance. The class count is not compared (fine-tuning replaces the head).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DiagError
from ..hints import ARCH_HINT, Hint, HintedError, Message, hint
from ..models.presets import PAPER_DATA_CFG, create_timm, data_config
from .families import FAMILIES, Family, Reading, detect_family, family_of_class
from .families.base import Guess, Tensors, head_count_guess, image_size
from .layouts import block_count, layout_pooling

# Constructor arguments each family's architectures may carry (``validation.ARCH_ARGUMENTS`` is their union).
FAMILY_ARGUMENTS = {family.name: family.arguments for family in FAMILIES}
# Differences between a base and the tensors that are no contradiction worth a line.
_NOT_COMPARED = ("num_classes", "apply_transform")
SIZE_HINT = Hint("img_size", "(H, W)", "HxW")


def read_tensors(sd: Tensors, family: Family, in_chans: int | None = None, img_size: Any = None) -> Reading:
    """Every constructor argument ``sd`` (our keys) determines for ``family``; ``in_chans`` and ``img_size``
    (the caller's or a base's) settle what the tensors leave open."""
    if block_count(sd) == 0:
        raise DiagError("checkpoint has no transformer blocks (blocks.N.*)")
    try:
        reading = family.read(sd, in_chans, img_size)
    except KeyError as err:
        raise DiagError(f"checkpoint lacks {err.args[0]!r}, needed to read its architecture") from None
    except (IndexError, ZeroDivisionError, ValueError):
        shapes = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in ("pos_embed", "patch_embed.proj.weight") if k in sd)
        raise DiagError(f"its tensors do not have the shapes of a ViT ({shapes})") from None
    if reading.grid is not None:
        reading.kwargs["img_size"] = image_size(reading.grid, reading.kwargs["patch_size"])
    elif img_size is not None:
        reading.kwargs["img_size"] = img_size
    return reading


# ----------------------------------------------------------------------------- what a base says


@functools.lru_cache(maxsize=64)
def _named_values(name: str, kwargs_json: str) -> tuple[str, dict[str, Any]]:
    """The family of timm model ``name`` built with ``kwargs``, and every value the inference compares:
    what its tensors would say, plus heads, eps, pooling and the family's built values (built on the meta
    device)."""
    with torch.device("meta"):
        model = create_timm(name, **json.loads(kwargs_json))
    family = family_of_class(type(model))
    if family is None:
        return "", {}
    img_size = tuple(model.patch_embed.img_size) if hasattr(model, "patch_embed") else None
    values = dict(read_tensors(model.state_dict(), family, None, _size(img_size)).kwargs)
    values["num_heads"] = model.blocks[0].attn.num_heads
    eps = next((m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)), None)
    if eps is not None:
        values["norm_eps"] = eps
    if family.built_values is not None:
        values.update(family.built_values(model))
    values["global_pool"] = model.global_pool
    if "img_size" not in values and img_size is not None:
        values["img_size"] = _size(img_size)
    return family.name, values


def _size(size: tuple[int, int] | None) -> Any:
    return size if size is None or size[0] != size[1] else size[0]


def named_values(arch: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The family of a base arch and the values it states (a timm name: everything it builds with)."""
    if arch["family"] == "timm":
        try:
            family, values = _named_values(arch["name"], json.dumps(arch["kwargs"], sort_keys=True))
        except Exception as err:  # a name's own constructor refusing the base's kwargs
            raise DiagError(f"cannot build {arch['name']} to compare it with the weights: {err}") from None
        return family or None, {**values, **arch["kwargs"]}
    return arch["family"], dict(arch["kwargs"])


# ----------------------------------------------------------------------------- inference


@dataclass
class Inference:
    """``infer_arch``'s answer: the arch dict and the notes to announce (contradictions, guesses), each a
    ``hints.Message`` naming the option that settles it."""

    arch: dict[str, Any]
    notes: list[Message]


def infer_arch(
    sd: Tensors,
    layout: str,
    *,
    base: dict[str, Any] | None = None,
    hints: dict[str, Any] | None = None,
    label: str = "",
    overrides: dict[str, Any] | None = None,
) -> Inference:
    """The arch ``sd`` (in our keys) fits: overrides > the tensors > ``base`` (an arch of the same family)
    and ``hints`` (values for any family, e.g. from a Hugging Face config) > the family's convention.
    ``label`` names the base or the hints in notes, e.g. "the model name 'vit_base_patch16_224'"."""
    overrides = dict(overrides or {})
    family = detect_family(sd)
    base_family, stated = named_values(base) if base else (None, {})
    notes: list[Message] = []
    if base and base_family != family.name:
        notes.append(
            Message(
                f"{label} is a {base_family or base['family']} architecture but the weights are {family.name}: "
                "built as the weights say, ignoring it"
            )
        )
        base, stated = None, {}
    if (pool := layout_pooling(layout, sd)) is not None:
        stated.setdefault("global_pool", pool)
    stated.update(hints or {})
    in_chans = overrides.get("in_chans", stated.get("in_chans"))
    reading = read_tensors(sd, family, in_chans, overrides.get("img_size", stated.get("img_size")))
    facts = reading.kwargs
    differences = [
        f"{key} {stated[key]!r} -> {facts[key]!r}"
        for key in facts
        if key in stated and key not in overrides and key not in _NOT_COMPARED and stated[key] != facts[key]
    ]
    if differences:
        notes.append(Message(f"the weights differ from {label} in {', '.join(differences)}; built as the weights say"))
    values = {**stated, **facts, **overrides}

    guessed: set[str] = set()

    def guess(key: str, value: Any, reason: str) -> None:
        if key not in overrides and key not in stated and key not in facts and key not in guessed:
            guessed.add(key)
            values[key] = value
            if reason:
                notes.append(Message(f"guessed {key}={value!r} ({reason}); pass ", hint(key), " if that is wrong"))

    if reading.grid_doubt and "img_size" not in overrides and "img_size" not in stated:
        rows, columns = reading.grid
        notes.append(
            Message(
                f"read pos_embed as a {rows} x {columns} patch grid whose prefix tokens carry no position "
                f"(no_embed_class=True), but {reading.grid_doubt}; pass ",
                SIZE_HINT,
                " for a non-square grid",
            )
        )
    _fill_heads(family, reading, values, stated, overrides, layout, notes, guess)
    _check_heads(values, reading.inner_dim)
    if family.conventions is not None:
        family.conventions(reading, values, layout, guess)
    for key, value, reason in reading.conventions:
        if key is not None:
            guess(key, value, reason)
        elif base is None:
            notes.append(Message(f"{reason}; pass ", ARCH_HINT, " if that is wrong"))
    if reading.grid is None and "img_size" not in values:
        guess("img_size", 224, "no tensor holds the patch grid")
    return Inference(_arch(family, values, base, overrides), notes)


def _fill_heads(
    family: Family,
    reading: Reading,
    values: dict[str, Any],
    stated: dict[str, Any],
    overrides: dict[str, Any],
    layout: str,
    notes: list[Message],
    guess: Guess,
) -> None:
    """The head count: a per-head tensor or ``q_norm``'s width, the caller, a base of the weights' width,
    a base of another width scaled, or the family's convention."""
    inner = reading.inner_dim
    if reading.heads is not None:
        values["num_heads"] = overrides.get("num_heads", reading.heads)
        return
    if reading.head_width is not None:
        values["num_heads"] = overrides.get("num_heads", inner // reading.head_width)
        return
    if "num_heads" in overrides:
        return
    if "num_heads" in stated:
        named_heads, named_width = stated["num_heads"], stated.get("embed_dim")
        if named_width in (None, values["embed_dim"]) or not isinstance(named_heads, int) or named_heads < 1:
            return  # the base is of the weights' width: its head count holds
        head_width = named_width // named_heads
        if inner % head_width == 0:
            heads, why = inner // head_width, f"heads of width {head_width} as in {named_heads} for width {named_width}"
        else:
            heads, why = named_heads, f"the base's head count, although its width is {named_width}"
        values["num_heads"] = heads
        notes.append(Message(f"guessed num_heads={heads} ({why}); pass ", hint("num_heads"), " if that is wrong"))
        return
    if family.guess_heads is not None:
        family.guess_heads(reading, values, layout, guess)
    else:
        head_count_guess(reading, values, guess)
    if "num_heads" not in values:
        raise HintedError(
            f"cannot tell the number of attention heads (qkv width {inner}) from the weights; pass ",
            hint("num_heads"),
            " or ",
            ARCH_HINT,
        )


def _check_heads(values: dict[str, Any], inner_dim: int) -> None:
    heads = values["num_heads"]
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise DiagError(f"num_heads must be a whole number of at least 1, got {heads!r}")
    if inner_dim % heads:
        raise DiagError(f"num_heads={heads} does not divide the qkv width {inner_dim}")


def _arch(
    family: Family, values: dict[str, Any], base: dict[str, Any] | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The arch dict: deepvit-diag's own family (``vit``/``deepvit``) or ``timm`` with a name."""
    if family.own_arch and not (base and base["family"] == "timm"):
        keys = family.arguments
        ordered = [k for k in keys if k in values] + [k for k in overrides if k not in keys]
        defaults = family.defaults
        kwargs = {k: values[k] for k in ordered if k in overrides or not (k in defaults and values[k] == defaults[k])}
        data_cfg = copy.deepcopy((base or {}).get("pretrained_cfg") or PAPER_DATA_CFG)
        arch = {"family": family.name, "kwargs": kwargs}
    else:
        name = base["name"] if base and base["family"] == "timm" else family.timm_name(values)
        _, defaults = named_values({"family": "timm", "name": name, "kwargs": {}})
        kwargs = {
            k: values[k]
            for k in family.arguments
            if k in values and (k in overrides or defaults.get(k, _MISSING) != values[k])
        }
        kwargs.update({k: v for k, v in overrides.items() if k not in kwargs})
        data_cfg = data_config(name)
        if base and base.get("pretrained_cfg"):
            data_cfg.update(base["pretrained_cfg"])
        arch = {"family": "timm", "name": name, "kwargs": kwargs}
    size = values.get("img_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    data_cfg.update(input_size=(values.get("in_chans", 3), height, width), num_classes=values["num_classes"])
    arch["pretrained_cfg"] = data_cfg
    return arch


_MISSING = object()
