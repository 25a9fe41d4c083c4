"""Read checkpoint files (.pth, .pth.tar, .pt, .bin, .safetensors) without running code from them.

PyTorch files go through ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` added to
the allow-list (the official timm-0.3 CheckpointSaver dicts store their ``args``); a
pickle that needs any other global is refused before anything of it runs. safetensors files hold no
code. Every way a file can be unreadable ends in a one-line ``DiagError`` that names the file and
the cause in deepvit-diag's words (never PyTorch's advice to load with ``weights_only=False``).

What comes back is a state dict: string keys, dense tensors, and no more tensor data than the file
holds (a tensor repeating one stored value, e.g. a stride-0 view, could otherwise claim any size).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import DiagError
from ..formats import ZIP_MAGIC
from .native import parse_native_metadata

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")
# timm's rule for training checkpoints (timm.models.load_state_dict with use_ema=True).
STATE_DICT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
# Tensors may take at most this much memory: twice the file (tied weights share stored data) plus 1 MiB.
_DATA_FACTOR, _DATA_SLACK = 2, 1 << 20
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's old format: pickled magic number


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
    try:
        info = path.stat()
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        raise DiagError(f"no such file: {path}{dangling}") from None
    except OSError as err:  # a symbolic-link loop, a permission, a name too long
        raise DiagError(f"cannot read {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DiagError(f"{path} is not a file")
    if info.st_size == 0:
        raise DiagError(f"{path} is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise DiagError(f"cannot read {path}: {err.strerror or err}") from None
    safetensors = path.suffix == ".safetensors" or head[8:9] == b"{"  # an 8-byte header length, then JSON
    raw = _read_safetensors(path) if safetensors else _read_torch(path, head)
    if not raw.state_dict:
        raise DiagError(f"{path} holds no tensors")
    _check_data_size(path, raw.state_dict, info.st_size)
    return raw


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        state_dict = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DiagError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {_first_line(err)}"
        ) from None
    native = parse_native_metadata(meta, str(path))
    return RawCheckpoint(path, file_sha256(path), _strip_wrappers(state_dict), native=native)


def _read_torch(path: Path, head: bytes) -> RawCheckpoint:
    try:
        # torch warns about pickle protocols and the like; the outcome is all that is reported.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file can fail in any way; each is explained below
        raise DiagError(_torch_failure(path, head, err)) from None
    state_dict, entry = _unwrap(obj, path)
    return RawCheckpoint(
        path,
        file_sha256(path),
        _strip_wrappers(state_dict),
        entry=entry,
        model_name=_model_name(obj),
        epoch=_epoch(obj),
    )


def _torch_failure(path: Path, head: bytes, err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line: refused code, or what the file is."""
    text = str(err)
    code = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"unrecognized function (.+?)(?: which belongs|$)", text)
    if code:
        return (
            f"refused to load {path}: unpickling would call {code.group(1)}; deepvit-diag never runs code from "
            "checkpoint files (re-save the weights as a plain state dict or safetensors)"
        )
    if (made := re.search(r"(?:Can only (?:create new object|build).*but got) (.+)", text)) is not None:
        return (
            f"refused to load {path}: unpickling would create {made.group(1).strip()}, which a state dict never "
            "holds; deepvit-diag never runs code from checkpoint files"
        )
    readable = f"{path} is not a readable PyTorch or safetensors checkpoint"
    if head.startswith(ZIP_MAGIC):
        if "constants.pkl" in text or "TorchScript" in text:
            return f"{readable}: it is a TorchScript archive (a compiled model); save model.state_dict() instead"
        if "central directory" in text or "zip archive" in text:
            return f"{readable}: the zip archive is truncated or damaged"
        return f"{readable}: a zip archive that is not a PyTorch file, or a damaged one ({type(err).__name__})"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return f"{readable}: a PyTorch file in the old format that is truncated or damaged ({type(err).__name__})"
    if head[:1] == b"\x80":
        return f"{readable}: a Python pickle, not a PyTorch checkpoint (torch.save writes a zip archive)"
    if b"\0" not in head and _is_text(head):
        return f"{readable}: it holds text, not weights"
    return f"{readable}: its first bytes are none of a PyTorch zip archive, a pickle or a safetensors header"


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # a character cut at the end of the sample is still text
    return True


def _check_data_size(path: Path, state_dict: dict[str, torch.Tensor], file_size: int) -> None:
    """Refuse tensors that would take far more memory than the file holds (views repeating stored data)."""
    claimed = sum(tensor.numel() * tensor.element_size() for tensor in state_dict.values())
    if claimed > _DATA_FACTOR * file_size + _DATA_SLACK:
        raise DiagError(
            f"refused to load {path}: its tensors would take {_size(claimed)}, but the file holds only "
            f"{_size(file_size)} (tensors that repeat the same stored values)"
        )


def _size(count: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if not isinstance(obj, dict):
        raise DiagError(f"{path} holds a {type(obj).__name__}, not a state dict")
    entry = next((k for k in STATE_DICT_ENTRIES if isinstance(obj.get(k), dict) and obj[k]), None)
    state_dict = obj[entry] if entry else obj
    where = f"entry {entry!r}" if entry else "the file"
    not_named = [k for k in state_dict if not isinstance(k, str)]  # a list: None itself may be the key
    if not_named:
        key = not_named[0]
        raise DiagError(
            f"{path}: {where} is not a state dict (key {_short(repr(key))} is a {type(key).__name__}, "
            "not a tensor name)"
        )
    not_tensor = next((k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)), None)
    if not_tensor is not None:
        raise DiagError(
            f"{path}: {where} is not a state dict ({not_tensor!r} is a {type(state_dict[not_tensor]).__name__})"
        )
    odd = next((k for k, v in state_dict.items() if v.layout != torch.strided or v.is_quantized), None)
    if odd is not None:
        kind = "quantised" if state_dict[odd].is_quantized else str(state_dict[odd].layout).removeprefix("torch.")
        raise DiagError(f"{path}: tensor {odd} is {kind}; deepvit-diag reads dense floating-point weights")
    return dict(state_dict), entry


def _model_name(obj: dict[str, Any]) -> str | None:
    """CheckpointSaver records ``args`` (argparse.Namespace) and ``arch`` (= args.model); only a string counts."""
    args = obj.get("args")
    recorded = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    return next((name for name in (recorded, obj.get("arch")) if isinstance(name, str) and name), None)


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
    return _short(str(err).strip().splitlines()[0] if str(err).strip() else "no details")


def _short(text: str) -> str:
    return text if len(text) <= 160 else text[:157] + "..."
