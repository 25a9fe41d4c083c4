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

from ..errors import DiagError
from ..jsonfiles import check_depth, field
from .validation import checked_arch

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


# Model-card fields deepvit-diag reads, and what each must be (``jsonfiles.KINDS``).
CARD_FIELDS = {"epoch": "count", "test_accuracy": "share", "dataset": "text", "imported_from": "text"}


def read_native_metadata(path: str | Path) -> dict[str, Any] | None:
    """``{"arch": ..., "card": ...}`` from a native file, or None if it is another safetensors file.

    The arch is checked (``validation.checked_arch``: architecture arguments only) and the card is
    an object or None; anything else is a ``DiagError`` naming the file."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return parse_native_metadata(meta, str(path))


def parse_native_metadata(meta: dict[str, str], source: str) -> dict[str, Any] | None:
    """``read_native_metadata`` for a safetensors header's metadata already read."""
    if FORMAT_KEY not in meta:
        return None
    if meta[FORMAT_KEY] != FORMAT_VERSION:
        raise DiagError(
            f"{source}: deepvit-diag format {meta[FORMAT_KEY]!r}, which this version does not read "
            f"(it reads {FORMAT_VERSION!r}); was it written by a newer deepvit-diag?"
        )
    card = _json_entry(meta, CARD_KEY, source, "null")
    if card is not None and not isinstance(card, dict):
        raise DiagError(f"{source}: its model card ({CARD_KEY}) is not a JSON object")
    for name, kind in CARD_FIELDS.items():  # the card fields deepvit-diag reads, where the card has them
        if card is not None:
            field(card, name, kind, f"{source}: its model card", optional=True)
    return {"arch": checked_arch(_json_entry(meta, ARCH_KEY, source), source), "card": card}


def is_native_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file deepvit-diag wrote (what ``train --out`` may replace)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return FORMAT_KEY in (f.metadata() or {})
    except Exception:  # not safetensors at all, unreadable, truncated: not ours
        return False


def _json_entry(meta: dict[str, str], key: str, source: str, default: str | None = None) -> Any:
    text = meta.get(key, default)
    if text is None:
        raise DiagError(f"{source}: deepvit-diag metadata without {key}")
    check_depth(text, f"{source}: its metadata {key}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise DiagError(f"{source}: its metadata {key} is not valid JSON ({err})") from None
