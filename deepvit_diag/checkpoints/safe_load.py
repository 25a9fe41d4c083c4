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
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..archives import largest_entry, stated_sizes
from ..errors import DiagError
from ..formats import ZIP_MAGIC
from ..hints import Hint, Message
from .native import parse_native_metadata

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors")
# timm's rule for training checkpoints (timm.models.load_state_dict with use_ema=True).
STATE_DICT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")
# Entries that hold a model's weights one level further down (nested training dicts, wrappers).
NESTED_ENTRIES = (*STATE_DICT_ENTRIES, "module")
# DINO / iBOT training checkpoints hold both networks; the teacher (an average of the student) is the one
# their authors evaluate and release.
TEACHER, STUDENT = "teacher", "student"
_MAX_NESTING = 4
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
    notes: list[Message] = field(default_factory=list)  # what was chosen among a training checkpoint's entries


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | Path, key: str | None = None) -> RawCheckpoint:
    """The tensors of a checkpoint file, unwrapped from training dicts and ``module.`` prefixes; ``key``
    (``"student"``, ``"state_dict.model"``) names the entry of a nested checkpoint to take."""
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
    if safetensors and key is not None:
        raise DiagError(f"{path} is a safetensors file: it has no entries to choose with key={key!r}")
    raw = _read_safetensors(path) if safetensors else _read_torch(path, head, key)
    if not raw.state_dict:
        raise DiagError(f"{path} holds no tensors")
    _check_data_size(path, raw.state_dict, info.st_size)
    return raw


@contextmanager
def _utf8_path(path: Path) -> Iterator[str]:
    """A name for ``path`` that safetensors (which takes UTF-8 paths only) can open: the path itself, or for
    a file name that is not UTF-8, the file opened here under ``/proc/self/fd``."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{descriptor}"
        finally:
            os.close(descriptor)
        return
    yield str(path)


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        with _utf8_path(path) as name:
            state_dict = load_file(name, device="cpu")
            with safe_open(name, framework="pt") as f:
                meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DiagError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {_first_line(err)}"
        ) from None
    native = parse_native_metadata(meta, str(path))
    return RawCheckpoint(path, file_sha256(path), _strip_wrappers(state_dict), native=native)


def _read_torch(path: Path, head: bytes, key: str | None) -> RawCheckpoint:
    if head.startswith(ZIP_MAGIC):
        _check_zip_expansion(path)
    try:
        # torch warns about pickle protocols and the like; the outcome is all that is reported.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file can fail in any way; each is explained below
        raise DiagError(_torch_failure(path, head, err)) from None
    if not isinstance(obj, dict):
        raise DiagError(f"{path} holds a {type(obj).__name__}, not a state dict")
    chosen, entry, notes = _chosen_entry(obj, path, key)
    state_dict = _checked_state_dict(chosen, path, entry)
    return RawCheckpoint(
        path,
        file_sha256(path),
        _strip_wrappers(state_dict),
        entry=entry,
        model_name=_model_name(obj),
        epoch=_epoch(obj),
        notes=notes,
    )


def _check_zip_expansion(path: Path) -> None:
    """Refuse a PyTorch zip whose entries would inflate beyond what its tensors may take (``torch.save``
    stores them uncompressed), from the sizes its central directory states, before anything inflates."""
    try:
        entries = stated_sizes(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load names what is wrong with the archive
    file_size = path.stat().st_size
    stated = sum(info.file_size for info in entries)
    if entries and stated > _DATA_FACTOR * file_size + _DATA_SLACK:
        largest = largest_entry(entries)
        raise DiagError(
            f"refused to load {path}: its entries would expand to {_size(stated)} from a {_size(file_size)} file "
            f"(entry {largest.filename}: {_size(largest.file_size)}); PyTorch stores tensors uncompressed"
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


def _chosen_entry(obj: dict[str, Any], path: Path, key: str | None) -> tuple[Any, str | None, list[Message]]:
    """The entry of a training checkpoint that holds the model: ``key`` where given (dots or slashes between
    nested names), else the teacher of a student/teacher pair (announced), else timm's entries
    (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``) and ``module``, as deep as they nest."""
    if key is not None:
        node: Any = obj
        for name in re.split(r"[./]", key):
            if not isinstance(node, dict) or name not in node:
                held = ", ".join(map(str, node)) if isinstance(node, dict) else type(node).__name__
                raise DiagError(f"{path} has no entry {key!r} ({name!r} is not among: {held})")
            node = node[name]
        return node, key, []
    node, names, notes = obj, [], []
    for _ in range(_MAX_NESTING):
        if node and all(isinstance(value, torch.Tensor) for value in node.values()):
            break
        if isinstance(node.get(TEACHER), dict) and isinstance(node.get(STUDENT), dict):
            name = TEACHER
            notes.append(
                Message(
                    "took the teacher's weights of a student/teacher checkpoint (DINO, iBOT); for the student's pass ",
                    Hint("key", repr(STUDENT), STUDENT),
                )
            )
        else:
            name = next((k for k in NESTED_ENTRIES if isinstance(node.get(k), dict) and node[k]), None)
            if name is None:
                break
        node, names = node[name], [*names, name]
    return node, ".".join(names) or None, notes


def _checked_state_dict(state_dict: Any, path: Path, entry: str | None) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, dict):
        raise DiagError(f"{path}: entry {entry!r} holds a {type(state_dict).__name__}, not a state dict")
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
    shapeless = next((k for k, v in state_dict.items() if v.is_meta), None)
    if shapeless is not None:
        raise DiagError(f"{path}: tensor {shapeless} is on the meta device: it has a shape but no values")
    odd = next((k for k, v in state_dict.items() if v.layout != torch.strided or v.is_quantized), None)
    if odd is not None:
        kind = "quantised" if state_dict[odd].is_quantized else str(state_dict[odd].layout).removeprefix("torch.")
        raise DiagError(f"{path}: tensor {odd} is {kind}; deepvit-diag reads dense floating-point weights")
    return dict(state_dict)


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
