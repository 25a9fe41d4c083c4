"""``load_model``: a preset, store name, timm model name or checkpoint file -> an eval-mode model.

Every model comes back with ``model.arch`` (see ``deepvit_diag.models.presets``) and
``model.provenance``: ``spec``, ``source`` ("store" | "bundled" | "file" | "timm-hub" | "random"),
``format`` ("official" | "timm" | "lucidrains-vit" | "lucidrains-deepvit" | "hf-vit" | "hf-deit" |
"hf-dinov2" | "native" | "timm-name"), ``path``, ``sha256`` (of the file), ``entry`` (training-checkpoint
entry used, e.g. "state_dict_ema"), ``arch``, ``card``, ``description`` (one line), ``warnings``
(what the architecture inference announced: contradictions between a name and the weights, guesses)
and ``epoch`` (the training epoch a CheckpointSaver file or a native file's model card records; None
if none).

The architecture of a file is read from its tensors first (``deepvit_diag.checkpoints.inference``);
``arch=``, a recorded model name or a Hugging Face ``config.json`` supply only what the tensors cannot,
and the caller's overrides (``num_heads=``, ``img_size=``, ...) beat everything.

Archs of timm models named by the user (``spec`` or ``arch=``) are ``{"family": "timm", "name": ...,
"kwargs": {...}}``: timm builds them exactly, so nothing about them is re-derived.

Whatever a file says about its architecture is checked against its tensors before a model is built
(``deepvit_diag.checkpoints.validation``): a file decides neither how much memory is allocated nor
what else is read.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from torch import nn

from ..errors import DiagError
from ..hints import Hint, HintedError, Message, as_strings, prefixed, warn_guesses
from ..introspection import check_readable
from ..models.presets import (
    PRESET_DESCRIPTIONS,
    PRESETS,
    attach_arch,
    build_model,
    create_timm,
    data_config,
    with_overrides,
)
from ..outputs import OutputTarget
from . import huggingface
from .inference import infer_arch
from .layouts import NATIVE, detect_layout, to_our_keys
from .native import is_native_file, read_native_metadata, save_native
from .provenance import arch_kwarg, arch_summary, describe
from .resample import resample_positions
from .safe_load import CHECKPOINT_SUFFIXES, RawCheckpoint, file_sha256, read_checkpoint
from .store import bundled_path, is_store_name, store_path
from .validation import check_depth, check_fit, checked_arch
from .wrappers import model_tensors

# The official repository's registry names (zhoudaquan/dvit_repo) -> our presets.
OFFICIAL_NAMES = {
    "deepvit_patch16_224_re_attn_16b": "deepvit16",
    "deepvit_patch16_224_re_attn_24b": "deepvit24",
    "deepvit_patch16_224_re_attn_32b": "deepvit32",
    "deepvit_S": "deepvit_s",
    "deepvit_L": "deepvit_l",
}
# timm.create_model options about where weights come from, not about the network.
TIMM_LOADING_OPTIONS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
RESAMPLE_HINT = Hint("resample_pos_embed", "True")
HUB_CONNECT_TIMEOUT = 3.0  # seconds: without network, find out at once rather than after the hub's retries


def load_model(
    spec: str | os.PathLike,
    *,
    arch: str | dict[str, Any] | None = None,
    pretrained: bool = True,
    resample_pos_embed: bool = False,
    key: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load ``spec`` as an eval-mode model carrying ``.arch`` and ``.provenance``.

    Args:
        spec: a checkpoint file (.pth, .pth.tar, .pt, .bin, .safetensors; any supported layout), a Hugging
            Face model folder, a weight-store name, a preset name (store entry, else bundled demo weights)
            or a timm model name.
        arch: what the weights cannot say: a preset, official DeepViT or timm model name, or an arch dict.
        pretrained: ``False`` gives random weights for preset, store and timm names (announced loudly).
        resample_pos_embed: with ``img_size=N``, resample a file's position embeddings to that size the
            way timm does (``deepvit_diag.checkpoints.resample``), instead of refusing the mismatch.
        key: the entry of a nested training checkpoint to take (``"student"``, ``"state_dict.model"``);
            by default the teacher of a student/teacher pair, else timm's rule (``state_dict_ema``, ...).
        overrides: constructor arguments with timm's names (``num_heads``, ``embed_dim``, ``img_size``,
            ``num_classes``, ``norm_eps``, ``act_layer``, ``dynamic_img_size``, ...); for timm names also
            timm's ``pretrained_cfg_overlay`` / ``cache_dir``.

    Example:
        >>> model = dd.load_model("vit32")  # a bundled demo model; or a checkpoint file or folder
    """
    if resample_pos_embed and "img_size" not in overrides:
        raise HintedError("resample_pos_embed=True needs ", Hint("img_size", "N", "N"), ": the size to resample to")
    if isinstance(spec, os.PathLike) or _looks_like_path(spec):
        if not pretrained:
            raise DiagError("pretrained=False gives random weights for preset, store or timm names, not for files")
        return _load_file(Path(spec), str(spec), "file", arch, overrides, resample_pos_embed, key)
    if not isinstance(spec, str):
        raise DiagError(f"cannot load a {type(spec).__name__}: pass a file path, store name, preset or timm model name")
    if key is not None:
        raise DiagError(f"key={key!r} chooses an entry of a checkpoint file; {spec!r} is not a file")
    if spec in PRESETS and not pretrained:
        return _random(with_overrides(PRESETS[spec], **overrides), spec, None)
    if is_store_name(spec) and store_path(spec).is_file():
        if not pretrained:
            return _random(with_overrides(_stored_arch(store_path(spec)), **overrides), spec, NATIVE)
        return _load_file(store_path(spec), spec, "store", arch, overrides, resample_pos_embed)
    if spec in PRESETS:
        if bundled_path(spec).is_file():
            return _load_file(bundled_path(spec), spec, "bundled", arch, overrides, resample_pos_embed)
        raise DiagError(
            f"no weights for preset {spec!r}: import a checkpoint with `deepvit-diag import FILE --as {spec}` "
            "(or ask for pretrained=False to get random weights)"
        )
    if timm.is_model(spec):
        return _load_timm(spec, pretrained, overrides)
    if os.path.lexists(spec):  # reading it says what is wrong with it (a directory, a link loop, ...)
        return _load_file(Path(spec), spec, "file", arch, overrides, resample_pos_embed, key)
    raise DiagError(
        f"unknown model {spec!r}: not a file, weight-store entry, preset or timm model name (see `deepvit-diag models`)"
    )


def import_checkpoint(spec: str | os.PathLike, name: str, *, overwrite: bool = False, **load_kwargs: Any) -> Path:
    """Convert anything ``load_model`` reads into the store as ``<name>.safetensors`` (native format).

    The source's model card is kept, with ``imported_from``, ``sha256``, ``format`` (and ``guesses``) added.
    An existing entry, or a preset's name for another architecture (which would change what the name
    loads), is refused unless ``overwrite``. The store is checked to be writable before the source is read.
    """
    target = store_path(name)
    if target.exists() and not overwrite:
        raise DiagError(f"the weight store already has {name!r} ({target}); choose another name or overwrite it")
    with OutputTarget(
        target,
        folder=False,
        owned=is_native_file,
        force=overwrite,
        option="weight-store file",
        force_hint="pass --force (overwrite=True)",
    ) as output:
        model = load_model(spec, **load_kwargs)
        prov = model.provenance
        if prov["source"] == "random":
            raise DiagError("refusing to store random weights")
        if not overwrite:
            _check_preset_meaning(name, model.arch)
        card = dict(prov["card"] or {})
        source = str(Path(prov["path"]).resolve()) if prov["path"] else prov["spec"]
        card.update(imported_from=source, sha256=prov["sha256"], format=prov["format"])
        if prov["warnings"]:
            card["guesses"] = prov["warnings"]
        output.write(lambda path: save_native(model, path, card=card))
    return target


def _check_preset_meaning(name: str, arch: dict[str, Any]) -> None:
    """A store entry named like a preset is what that name loads: the weights must have the architecture the
    name resolves to now (its bundled weights, else the preset): family, depth, width and heads."""
    if name not in PRESETS:
        return
    bundled = bundled_path(name)
    current = read_native_metadata(bundled)["arch"] if bundled.is_file() else PRESETS[name]
    where = "the bundled weights" if bundled.is_file() else f"the preset {PRESET_DESCRIPTIONS[name]}"
    if arch["family"] != current["family"]:
        differences = [f"family {arch['family']} instead of {current['family']}"]
    else:
        differences = [
            f"{words} {arch_kwarg(arch, key)} instead of {arch_kwarg(current, key)}"
            for key, words in (("depth", "depth"), ("embed_dim", "width"), ("num_heads", "heads"))
            if arch["family"] != "timm" and arch_kwarg(arch, key) != arch_kwarg(current, key)
        ]
    if differences:
        raise DiagError(
            f"{name!r} loads {where} ({arch_summary(current)}), but these weights have {', '.join(differences)}: "
            f"import them under another name, or pass --force (overwrite=True) to make {name!r} load them"
        )


def resolve_arch(arch: str | dict[str, Any]) -> dict[str, Any]:
    """An ``arch=`` argument as an arch dict."""
    if isinstance(arch, dict):
        if "family" not in arch or "kwargs" not in arch:
            raise DiagError("an arch dict needs 'family' and 'kwargs' (see deepvit_diag.models.presets)")
        return copy.deepcopy(arch)
    known = _named_arch(arch)
    if known is None:
        raise DiagError(
            f"unknown architecture {arch!r}: not a preset ({', '.join(PRESETS)}), official DeepViT or timm model name"
        )
    return known


def build_arch(arch: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of ``arch`` (any family, including timm names); inside
    ``with torch.device("meta")`` only its shapes, which costs no memory."""
    try:
        if arch["family"] == "timm":
            model = create_timm(arch["name"], **arch["kwargs"])
            attach_arch(model, arch)
        else:
            model = build_model(arch)
    except Exception as err:  # any refusal of the constructor (the arguments may come from a file)
        raise DiagError(f"cannot build the {arch.get('family')} architecture: {type(err).__name__}: {err}") from None
    check_readable(model)
    return model


def build_checked(
    arch: dict[str, Any], state_dict: dict[str, Any], what: str, hint: Message | str = "", resample: bool = False
) -> nn.Module:
    """The model of ``arch`` holding ``state_dict``, built only after the validation steps
    (``deepvit_diag.checkpoints.validation``) found that the tensors fit it exactly; with ``resample``,
    position embeddings of another grid are resampled to the arch's first."""
    arch = checked_arch(arch, what)
    check_depth(arch, state_dict, what)
    with _naming(what), torch.device("meta"):
        skeleton = build_arch(arch)
    if resample:
        with _naming(what):
            state_dict = resample_positions(skeleton, state_dict)
    check_fit(skeleton, state_dict, what, hint)
    model = build_arch(arch)
    model.load_state_dict(state_dict, strict=True)
    return model


def _looks_like_path(spec: Any) -> bool:
    return isinstance(spec, str) and ("/" in spec or os.sep in spec or spec.lower().endswith(CHECKPOINT_SUFFIXES))


def _named_arch(name: str) -> dict[str, Any] | None:
    name = OFFICIAL_NAMES.get(name, name)
    if name in PRESETS:
        return copy.deepcopy(PRESETS[name])
    if timm.is_model(name):
        return timm_arch(name)
    return None


def timm_arch(name: str, data_cfg: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The arch dict of a timm model name with constructor ``kwargs`` (data config: timm's for the name)."""
    data = data_config(name, data_cfg)
    return with_overrides({"family": "timm", "name": name, "kwargs": {}, "pretrained_cfg": data}, **kwargs)


def _load_file(
    path: Path,
    label: str,
    source: str,
    arch: str | dict[str, Any] | None,
    overrides: dict[str, Any],
    resample: bool = False,
    key: str | None = None,
) -> nn.Module:
    return _load_checked_file(path, label, source, arch, overrides, resample, key)


@contextmanager
def _naming(label: str) -> Iterator[None]:
    """Every refusal names the file as the user named it: those of steps whose messages do not (reading
    the file, its config and fitting its tensors do) get ``label: `` before them."""
    try:
        yield
    except DiagError as err:
        raise prefixed(err, label) from None


def _load_checked_file(
    path: Path,
    label: str,
    source: str,
    arch: str | dict[str, Any] | None,
    overrides: dict[str, Any],
    resample: bool,
    key: str | None,
) -> nn.Module:
    config_path = None
    if path.is_dir():  # a Hugging Face model folder
        shards, config_path = huggingface.folder_files(path)
        raw = _read_shards(path, shards, key) if len(shards) > 1 else read_checkpoint(shards[0], key)
        path = shards[0] if len(shards) == 1 else path
    else:
        raw = read_checkpoint(path, key)
    if raw.native and arch is not None:
        warnings.warn(
            f"{label}: ignoring arch={arch!r}: the file records its own architecture", UserWarning, stacklevel=4
        )
        arch = None
    hint_text = Message("" if arch is None else f" (arch={arch if isinstance(arch, str) else 'dict'})")
    if raw.native:
        with _naming(label):
            arch_dict, state_dict, fmt = with_overrides(raw.native["arch"], **overrides), raw.state_dict, NATIVE
        notes: list[Message] = []
    else:
        arch_dict, state_dict, fmt, notes = _architecture_of(raw, config_path, arch, overrides, label)
    if "img_size" in overrides and not resample:
        hint_text = Message(
            hint_text,
            f"; to run these weights at img_size={overrides['img_size']}, resample their position embeddings: ",
            RESAMPLE_HINT,
        )
    model = build_checked(arch_dict, state_dict, f"{label} ({fmt} layout)", hint_text, resample)
    if notes:
        warn_guesses(label, notes, stacklevel=4)
    card = raw.native["card"] if raw.native else None
    description = describe(
        label if source != "file" else Path(label).name, source, fmt, model.arch, card, raw.entry, model
    )
    epoch = raw.epoch if raw.epoch is not None else (card or {}).get("epoch")
    return _finish(
        model,
        spec=label,
        source=source,
        format=fmt,
        path=str(path),
        sha256=raw.sha256,
        entry=raw.entry,
        card=card,
        description=description,
        warnings=as_strings(notes),
        epoch=epoch,
    )


def _architecture_of(
    raw: RawCheckpoint,
    config_path: Path | None,
    arch: str | dict[str, Any] | None,
    overrides: dict[str, Any],
    label: str,
) -> tuple[dict[str, Any], dict[str, Any], str, list[Message]]:
    """A foreign file's arch (``inference.infer_arch``), its tensors in our keys, its layout and the notes to
    announce. What the tensors cannot say comes from ``arch=``, else the recorded model name, and for
    Hugging Face files from their ``config.json``."""
    with _naming(label):
        tensors, dropped = model_tensors(raw.state_dict, detect_layout)
        fmt = detect_layout(tensors)
        state_dict, notes = to_our_keys(fmt, tensors)
        notes = raw.notes + dropped + notes
        base, hints, stated_by = None, None, ""
        if arch is not None:
            base, stated_by = resolve_arch(arch), f"arch={arch!r}" if isinstance(arch, str) else "the arch dict"
        elif raw.model_name and (base := _named_arch(raw.model_name)):
            stated_by = f"the checkpoint's model name {raw.model_name!r}"
    if fmt in huggingface.CONFIG_LAYOUTS:
        config_path = config_path or _beside(raw.path, huggingface.CONFIG_FILE)
        config = huggingface.read_config(config_path) if config_path else None
        hints, config_label, config_notes = huggingface.config_hints(fmt, config)
        notes, stated_by = notes + config_notes, stated_by or config_label
    with _naming(label):
        inference = infer_arch(state_dict, fmt, base=base, hints=hints, label=stated_by, overrides=overrides)
    return inference.arch, state_dict, fmt, notes + inference.notes


def load_tensors(
    state_dict: dict[str, Any], label: str, *, stated: dict[str, Any] | None = None, **overrides: Any
) -> nn.Module:
    """The model of a state dict in any layout ``load_model`` reads, as an eval-mode model with ``.arch`` and
    ``.provenance`` (source ``"object"``); ``stated`` holds what the caller knows beyond the tensors (heads,
    activation, eps), used as a Hugging Face config is."""
    with _naming(label):
        tensors, dropped = model_tensors(state_dict, detect_layout)
        fmt = detect_layout(tensors)
        converted, notes = to_our_keys(fmt, tensors)
        inference = infer_arch(converted, fmt, hints=stated, label="the model object", overrides=overrides)
    model = build_checked(inference.arch, converted, f"{label} ({fmt} layout)")
    notes = dropped + notes + inference.notes
    if notes:
        warn_guesses(label, notes, stacklevel=3)
    return _finish(
        model,
        spec=label,
        source="object",
        format=fmt,
        path=None,
        sha256=None,
        entry=None,
        card=None,
        description=describe(label, "object", fmt, model.arch, None, model=model),
        warnings=as_strings(notes),
    )


def _read_shards(folder: Path, shards: list[Path], key: str | None) -> RawCheckpoint:
    """The tensors of a sharded Hugging Face checkpoint, merged; its digest is that of the shards' digests."""
    merged: dict[str, Any] = {}
    digests = []
    for shard in shards:
        raw = read_checkpoint(shard, key)
        clash = next((k for k in raw.state_dict if k in merged), None)
        if clash is not None:
            raise DiagError(f"{folder}: tensor {clash} is in more than one shard")
        merged.update(raw.state_dict)
        digests.append(raw.sha256)
    return RawCheckpoint(folder, hashlib.sha256("".join(digests).encode()).hexdigest(), merged)


def _beside(path: Path, name: str) -> Path | None:
    """``name`` in ``path``'s folder, if it is a file there."""
    other = path.parent / name
    return other if other.is_file() else None


def _stored_arch(path: Path) -> dict[str, Any]:
    """A store file's recorded arch, checked against the blocks its tensors hold (for random weights)."""
    stored = read_native_metadata(path)
    if stored is None:
        raise DiagError(f"{path} has no deepvit-diag metadata; re-import it")
    with safe_open(str(path), framework="pt") as f:
        check_depth(stored["arch"], f.keys(), str(path))
    return stored["arch"]


def _load_timm(name: str, pretrained: bool, overrides: dict[str, Any]) -> nn.Module:
    overrides = dict(overrides)
    options = {k: overrides.pop(k) for k in TIMM_LOADING_OPTIONS if k in overrides}
    if not pretrained:
        return _random(timm_arch(name, **overrides), name, "timm-name")
    local_file = (options.get("pretrained_cfg_overlay") or {}).get("file")
    cfg = timm.models.get_pretrained_cfg(name)
    if not local_file and not (cfg and (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise DiagError(
            f"timm has no pretrained weights for {name}; ask for pretrained=False (random weights) or load a local file"
        )
    try:
        with _hub_offline_unless_reachable() as reachable:
            model = timm.create_model(name, pretrained=True, **options, **overrides)
    except (OSError, EntryNotFoundError) as err:
        if reachable:
            reason = str(err).strip().split("\n")[0][:120]
        elif _offline_requested():
            reason = "HF_HUB_OFFLINE is set and they are not in the local cache"
        else:
            reason = f"{_hub_host()} cannot be reached (no network?) and they are not in the local cache"
        raise HintedError(
            f"could not download the pretrained weights of {name}: {reason}; to use a local copy, "
            "load its file (--ckpt PATH) with ",
            Hint("arch", repr(name), name),
        ) from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise DiagError(f"timm could not create {name}: {err}") from None
    check_readable(model)
    attach_arch(model, timm_arch(name, data_cfg=model.pretrained_cfg, **overrides))
    origin = local_file or model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url")
    return _finish(
        model,
        spec=name,
        source="timm-hub",
        format="timm-name",
        path=local_file,
        sha256=file_sha256(local_file) if local_file else None,
        entry=None,
        card=None,
        description=describe(name, "timm-hub", "timm-name", model.arch, None, origin, model),
        warnings=[],
    )


def _hub_host() -> str:
    return urlsplit(hub_constants.ENDPOINT).hostname or hub_constants.ENDPOINT


def _offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` set, now or when huggingface_hub was imported."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(hub_constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepts a connection within ``timeout`` seconds, name lookup included (which
    ``socket.create_connection``'s timeout does not bound, hence the thread)."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except (OSError, ValueError):
            answer.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


@contextmanager
def _hub_offline_unless_reachable() -> Iterator[bool]:
    """The Hugging Face hub as is when it answers within ``HUB_CONNECT_TIMEOUT``; else offline mode (only
    the local cache), instead of a minute of retries. Yields whether the hub was reachable."""
    if _offline_requested():
        previous, hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE, True
        try:
            yield False
        finally:
            hub_constants.HF_HUB_OFFLINE = previous
        return
    endpoint = urlsplit(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if endpoint.hostname and _reachable(endpoint.hostname, port, HUB_CONNECT_TIMEOUT):
        yield True
        return
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        hub_constants.HF_HUB_OFFLINE = False


def _random(arch: dict[str, Any], label: str, fmt: str | None) -> nn.Module:
    model = build_arch(arch)
    message = f"{label}: RANDOM weights (pretrained=False); results describe an untrained model"
    warnings.warn(message, UserWarning, stacklevel=3)
    return _finish(
        model,
        spec=label,
        source="random",
        format=fmt,
        path=None,
        sha256=None,
        entry=None,
        card=None,
        description=describe(label, "random", fmt, model.arch, None, model=model),
        warnings=[message],
    )


def _finish(model: nn.Module, **provenance: Any) -> nn.Module:
    model.eval()
    model.provenance = {"epoch": None, **provenance, "arch": copy.deepcopy(model.arch)}
    return model
