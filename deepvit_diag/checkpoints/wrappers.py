"""The model inside a training checkpoint's tensors: key prefixes of training wrappers, and tensors only
training uses (docs/checkpoints.md, "Training checkpoints").

* ``AveragedModel`` (``torch.optim.swa_utils``): ``n_averaged`` and ``module.`` before every weight;
* a backbone under a prefix, beside heads and other networks: ``backbone.`` (DINO, iBOT), ``base_encoder.``
  (MoCo v3, beside ``momentum_encoder.`` and ``predictor.``), ``encoder.``, ``model.`` (PyTorch Lightning);
  the prefix is taken when the tensors under it alone are a ViT in a known layout;
* training-only tensors, dropped: ``mask_token`` (masked image modelling), MAE's decoder (``decoder_*``),
  projection heads (DINO's ``head.mlp.N.*`` / ``head.last_layer.*``, MoCo's ``head.N.*``), and BEiT's
  ``relative_position_index`` buffers, which timm computes itself.

Whatever is dropped is announced in one line, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ..errors import DiagError
from ..hints import Message

Tensors = dict[str, torch.Tensor]

AVERAGED_COUNT = "n_averaged"
BACKBONE_PREFIXES = ("backbone.", "base_encoder.", "encoder.", "model.")
# (pattern on a key, why training alone uses it)
TRAINING_ONLY = (
    (re.compile(r"^mask_token$"), "the mask token of masked image modelling"),
    (re.compile(r"^decoder[_.]"), "MAE's decoder"),
    (re.compile(r"^head\.(mlp\.\d+|last_layer|\d+)\."), "a self-supervised projection head"),
    (re.compile(r"(^|\.)relative_position_index$"), "relative-position index buffers (timm computes them)"),
)


def model_tensors(sd: Tensors, readable: Callable[[Tensors], object]) -> tuple[Tensors, list[Message]]:
    """The tensors of the model in ``sd`` and a note on what was left out. ``readable(sd)`` raises a
    ``DiagError`` unless ``sd`` is in a layout deepvit-diag reads (``layouts.detect_layout``)."""
    dropped: dict[str, list[str]] = {}
    if AVERAGED_COUNT in sd and all(k.startswith("module.") for k in sd if k != AVERAGED_COUNT):
        sd = {k.removeprefix("module."): v for k, v in sd.items() if k != AVERAGED_COUNT}
        dropped["AveragedModel's count of averaged models"] = [AVERAGED_COUNT]
    if not _readable(sd, readable):
        for prefix in BACKBONE_PREFIXES:
            inner = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if inner and _readable(_without_training_only(inner, {}), readable):
                others = sorted({k.split(".", 1)[0] + "." for k in sd if not k.startswith(prefix)})
                if others:
                    dropped[f"training networks beside {prefix!r}"] = others
                sd = inner
                break
    sd = _without_training_only(sd, dropped)
    if not dropped:
        return sd, []
    listed = "; ".join(f"{', '.join(_short(names))} ({why})" for why, names in dropped.items())
    return sd, [Message(f"dropped what only training uses: {listed}")]


def _readable(sd: Tensors, readable: Callable[[Tensors], object]) -> bool:
    try:
        readable(sd)
    except DiagError:
        return False
    return True


def _without_training_only(sd: Tensors, dropped: dict[str, list[str]]) -> Tensors:
    kept: Tensors = {}
    for key, tensor in sd.items():
        why = next((why for pattern, why in TRAINING_ONLY if pattern.search(key)), None)
        if why is None:
            kept[key] = tensor
        else:
            dropped.setdefault(why, []).append(key)
    return kept


def _short(names: list[str], shown: int = 3) -> list[str]:
    return names[:shown] + ([f"{len(names) - shown} more"] if len(names) > shown else [])
