"""deepvit-diag's own checkpoint format: safetensors with the arch and a model card.

Metadata keys (all strings, as safetensors requires):
``deepvit_diag.format`` = ``"1"``, ``deepvit_diag.arch`` = JSON arch dict
(see ``deepvit_diag.models.presets``), ``deepvit_diag.card`` = JSON model card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

FORMAT_KEY = "deepvit_diag.format"
ARCH_KEY = "deepvit_diag.arch"
CARD_KEY = "deepvit_diag.card"
FORMAT_VERSION = "1"


def save_native(
    model: nn.Module,
    path: str | Path,
    *,
    card: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (which must carry ``model.arch``) as safetensors with its arch and card.

    ``dtype`` casts floating-point tensors (e.g. ``torch.float16`` for small files);
    integer buffers such as BatchNorm's ``num_batches_tracked`` keep their type.
    """
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ValueError("model has no .arch; build it with deepvit_diag.build_model or load_model")
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    metadata = {FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(arch)}
    if card is not None:
        metadata[CARD_KEY] = json.dumps(card)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_native_metadata(path: str | Path) -> dict[str, Any] | None:
    """``{"arch": ..., "card": ...}`` from a native file, or None if it is another safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if FORMAT_KEY not in meta:
        return None
    return {"arch": json.loads(meta[ARCH_KEY]), "card": json.loads(meta.get(CARD_KEY, "null"))}
