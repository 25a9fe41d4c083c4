"""Read checkpoint files (.pth, .pth.tar, .pt, .bin, .safetensors) without running code from them.

PyTorch files go through ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` added to
the allow-list (the official timm-0.3 CheckpointSaver dicts store their ``args``); a
pickle that needs any other global is refused before anything of it runs. safetensors files hold no
code. Every way a file can be unreadable ends in a one-line ``DiagError``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import DiagError
from .native import read_native_metadata

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")
# timm's rule for training checkpoints (timm.models.load_state_dict with use_ema=True).
STATE_DICT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


@dataclass
class RawCheckpoint:
    """A file's tensors and what the file says about them."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    native: dict[str, Any] | None = None  # {"arch", "card"} of a deepvit-diag file
    entry: str | None = None  # the training-checkpoint entry the weights came from, e.g. "state_dict_ema"
    model_name: str | None = None  # the model name a training script recorded (args.model / arch)
    epoch: int | None = None  # the epoch a training script recorded (CheckpointSaver's "epoch")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """The tensors of a checkpoint file, unwrapped from training dicts and ``module.`` prefixes."""
    path = Path(path)
    if not path.exists():
        raise DiagError(f"no such file: {path}")
    if not path.is_file():
        raise DiagError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise DiagError(f"{path} is empty (0 bytes)")
    raw = _read_safetensors(path) if _looks_like_safetensors(path) else _read_torch(path)
    if not raw.state_dict:
        raise DiagError(f"{path} holds no tensors")
    return raw


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or head[8:9] == b"{"


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        state_dict = load_file(str(path), device="cpu")
        native = read_native_metadata(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise DiagError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {_first_line(err)}"
        ) from None
    return RawCheckpoint(path, file_sha256(path), _strip_wrappers(state_dict), native=native)


def _read_torch(path: Path) -> RawCheckpoint:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file can fail in any way; each means "unreadable"
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if forbidden:
            raise DiagError(
                f"refused to load {path}: unpickling it would call {forbidden.group(1)}, and deepvit-diag never runs "
                "code from checkpoint files; re-save it as a plain state dict or safetensors"
            ) from None
        raise DiagError(
            f"{path} is not a readable PyTorch or safetensors checkpoint (truncated, corrupt or another kind of file: "
            f"{type(err).__name__}: {_first_line(err)})"
        ) from None
    state_dict, entry = _unwrap(obj, path)
    return RawCheckpoint(
        path,
        file_sha256(path),
        _strip_wrappers(state_dict),
        entry=entry,
        model_name=_model_name(obj),
        epoch=_epoch(obj),
    )


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if not isinstance(obj, dict):
        raise DiagError(f"{path} holds a {type(obj).__name__}, not a state dict")
    entry = next((k for k in STATE_DICT_ENTRIES if isinstance(obj.get(k), dict) and obj[k]), None)
    state_dict = obj[entry] if entry else obj
    not_tensor = next((k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)), None)
    if not_tensor is not None:
        where = f"entry {entry!r}" if entry else "the file"
        raise DiagError(
            f"{path}: {where} is not a state dict ({not_tensor!r} is a {type(state_dict[not_tensor]).__name__})"
        )
    return dict(state_dict), entry


def _model_name(obj: dict[str, Any]) -> str | None:
    """CheckpointSaver records ``args`` (argparse.Namespace) and ``arch`` (= args.model)."""
    args = obj.get("args")
    name = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    name = name or obj.get("arch")
    return name if isinstance(name, str) else None


def _epoch(obj: dict[str, Any]) -> int | None:
    """timm's (and the official DeepViT's) CheckpointSaver records the epoch it saved at."""
    epoch = obj.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _strip_wrappers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    while prefix := next(
        (p for p in _WRAPPER_PREFIXES if state_dict and all(k.startswith(p) for k in state_dict)), None
    ):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return text if len(text) <= 160 else text[:157] + "..."
