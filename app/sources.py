"""What the user picked in the sidebar, as things deepvit-diag can load.

Checkpoints come from preset/store names, timm names, paths on the server or uploads;
images from bundled sets, server folders or uploads. Every choice carries a
``fingerprint`` that changes when its content changes, so caches keyed by it never serve
stale results. Uploads are written to one temporary folder per session, under their
sha256 (a re-upload costs nothing); server paths are only ever read, and only where
``server_paths`` allows (see ``app/server_paths.py``).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import timm
from streamlit.runtime.uploaded_file_manager import UploadedFile

from deepvit_diag.checkpoints import bundled_path, store_path
from deepvit_diag.checkpoints.safe_load import CHECKPOINT_SUFFIXES
from deepvit_diag.checkpoints.store import is_store_name
from deepvit_diag.errors import DiagError
from deepvit_diag.images import BUNDLED_SETS, why_unusable
from deepvit_diag.saved import extract_saved

from .server_paths import GLOB_CHARACTERS, ROOTS_VARIABLE, PathRefused, ServerPaths

MEGABYTE = 1 << 20


class InputError(Exception):
    """A sidebar input that cannot be used; the message is one line for ``st.error``."""


class InputMissing(InputError):
    """An input not given yet: a hint rather than an error."""


@dataclass(frozen=True)
class ModelChoice:
    """One checkpoint: ``spec`` and ``arch`` are what ``load_model`` gets."""

    spec: str
    name: str  # short name for figures and tables
    fingerprint: str
    arch: str | None = None
    aliases: tuple[tuple[str, str], ...] = ()  # (server path, the name the user knows it by) of uploads
    public: bool = False  # a name any visitor can pick (preset, store entry, timm model), not a file they gave

    @property
    def key(self) -> str:
        return f"{self.spec}|{self.arch}|{self.fingerprint}"


@dataclass(frozen=True)
class ImageChoice:
    """An image source; ``spec`` None means the bundled set the model cards name."""

    spec: str | tuple[str, ...] | None
    description: str | None = None  # replaces the library's wording (uploads live in a temp folder)
    fingerprint: str = ""
    aliases: tuple[tuple[str, str], ...] = ()  # (server path, the name the user knows it by) of uploads

    @property
    def public(self) -> bool:
        """A bundled set (or the one the model cards name): nothing a visitor gave."""
        return self.spec is None or (isinstance(self.spec, str) and self.spec in BUNDLED_SETS)


def shown_as(text: str, *choices: ModelChoice | ImageChoice) -> str:
    """``text`` (a message from the library) with every uploaded file's server path replaced by
    the name it was uploaded as: a user never sees the server's temporary folder."""
    for choice in choices:
        for path, name in choice.aliases:
            text = text.replace(path, name)
    return text


# ----------------------------------------------------------------------------- checkpoints


def model_from_name(name: str) -> ModelChoice:
    """A preset or weight-store name; the fingerprint follows the file behind it."""
    candidates = [store_path(name), bundled_path(name)]
    return ModelChoice(
        name,
        name,
        next((_file_fingerprint(path) for path in candidates if path.is_file()), "no-weights"),
        public=True,
    )


def model_from_timm(name: str) -> ModelChoice:
    name = name.strip()
    if not name:
        raise InputMissing("enter a timm model name, e.g. vit_tiny_patch16_224")
    is_timm_name = timm.is_model(name) or name.startswith(("hf-hub:", "hf_hub:"))
    if server_paths().confined and not is_timm_name:
        _server_path(name)  # the loader reads a name that is no timm model as a path
    return ModelChoice(name, name, name, public=is_timm_name)


def model_from_path(text: str, arch: str | None) -> ModelChoice:
    path = _server_path(text)
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    _require_checkpoint_suffix(path.name)
    return ModelChoice(str(path), path.name, _file_fingerprint(path), arch)


def model_from_upload(uploaded: UploadedFile, arch: str | None, max_mb: float) -> ModelChoice:
    _require_checkpoint_suffix(uploaded.name)
    path, digest = save_upload(uploaded, max_mb)
    return ModelChoice(str(path), path.name, digest, arch, aliases=((str(path), uploaded.name),))


def _require_checkpoint_suffix(name: str) -> None:
    if not name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise InputError(f"{name} is not a checkpoint file: expected one of {', '.join(CHECKPOINT_SUFFIXES)}")


# ----------------------------------------------------------------------------- images


def images_from_bundled(name: str) -> ImageChoice:
    if name not in BUNDLED_SETS:
        raise InputError(f"unknown bundled image set {name!r}; choose one of {', '.join(BUNDLED_SETS)}")
    return ImageChoice(name)


def images_from_folder(text: str) -> ImageChoice:
    """A folder, image file or glob on the server (read by ``open_images`` at run time)."""
    text = text.strip()
    paths = server_paths()
    if any(ch in text for ch in GLOB_CHARACTERS):
        if not paths.confined:
            return ImageChoice(text, fingerprint=text)
        # The files themselves, each checked: the library would follow links out of the roots.
        files = _confined(lambda: paths.glob(text))
        if not files:
            raise InputError(f"no file matches {text}")
        return ImageChoice(tuple(str(file) for file in files), text, fingerprint=text)
    path = _server_path(text)
    if path.is_dir() and not _allows_tree(paths, str(path)):
        raise InputError(paths.refusal)
    return ImageChoice(str(path), fingerprint=_file_fingerprint(path))


@st.cache_data(ttl=60, max_entries=64, show_spinner="Checking the folder...")
def _allows_tree(paths: ServerPaths, folder: str) -> bool:
    """``ServerPaths.allows_tree``, walked at most once a minute per folder (not on every rerun)."""
    return paths.allows_tree(Path(folder))


def images_from_uploads(files: list[UploadedFile], max_mb: float) -> tuple[ImageChoice | None, list[str]]:
    """The uploads that decode as images, and one error line per upload that does not."""
    paths, aliases, errors = [], [], []
    for uploaded in files:
        try:
            path, _ = save_upload(uploaded, max_mb)
            _require_decodable(path, uploaded.name)
        except InputError as err:
            errors.append(str(err))
        else:
            paths.append(str(path))
            aliases.append((str(path), uploaded.name))
    if not paths:
        return None, errors
    names = ", ".join(Path(path).name for path in paths[:3]) + (", ..." if len(paths) > 3 else "")
    digests = ",".join(Path(path).parent.name for path in paths)
    return ImageChoice(tuple(paths), f"{len(paths)} uploaded image(s): {names}", digests, tuple(aliases)), errors


@st.cache_data(max_entries=256, show_spinner=False)
def _decode_error(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (None if it decodes); cached per content-addressed path."""
    return why_unusable(Path(path), decode=True)


def _require_decodable(path: Path, name: str) -> None:
    reason = _decode_error(str(path))
    if reason is not None:
        reason = reason.replace(str(path), name).splitlines()[0]
        raise InputError(f"{name} cannot be decoded as an image ({reason[:160]})")


# ----------------------------------------------------------------------------- files


def server_paths() -> ServerPaths:
    """What visitors of this server may read: set by ``DEEPVIT_DIAG_APP_ROOTS`` and the address the
    server is bound to (``server.address``)."""
    return ServerPaths.from_settings(st.get_option("server.address"), os.environ.get(ROOTS_VARIABLE), Path.cwd())


def _confined(read):
    """``read()``, with a refused path turned into the sidebar's input error."""
    try:
        return read()
    except PathRefused as refused:
        raise InputError(str(refused)) from None


def _server_path(text: str) -> Path:
    """``text`` as a path the server may read and that exists; outside the readable roots the
    same refusal whether it exists or not."""
    text = text.strip()
    if not text:
        raise InputMissing("enter a path on the server")
    path = _confined(lambda: server_paths().check(text))
    if not path.exists():
        raise InputError(f"no such file or folder on the server: {path}")
    return path


def _file_fingerprint(path: Path) -> str:
    """Size and modification time: changes when the file does, without reading it."""
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


@st.cache_resource(show_spinner=False)
def _server_upload_folder() -> Path:
    """One temporary folder per server process, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="deepvit-diag-uploads-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def session_key() -> str:
    """A random name for this browser session, never shown: what keeps one session's uploads and
    results from another's (Streamlit's own session id is not unique under ``AppTest``)."""
    return st.session_state.setdefault("session_key", secrets.token_hex(16))


def upload_folder() -> Path:
    """This session's folder for uploads; no other session names it (see ``session_key``)."""
    folder = _server_upload_folder() / session_key()
    folder.mkdir(exist_ok=True)
    return folder


def save_upload(uploaded: UploadedFile, max_mb: float) -> tuple[Path, str]:
    """``uploaded`` as ``<upload folder>/<sha256[:16]>/<name>`` and its sha256, after the size checks.

    Streamlit refuses files above ``server.maxUploadSize`` before the app sees them; this
    limit is the app's own, per kind of file, and also holds where that setting is larger.
    """
    if uploaded.size > max_mb * MEGABYTE:
        raise InputError(
            f"{uploaded.name} is {uploaded.size / MEGABYTE:.1f} MB, more than the {max_mb:g} MB limit for this upload"
        )
    if uploaded.size == 0:
        raise InputError(f"{uploaded.name} is empty (0 bytes)")
    saved = st.session_state.setdefault("saved_uploads", {})
    if uploaded.file_id not in saved:  # hash and write each upload once, not on every rerun
        data = uploaded.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        path = upload_folder() / digest[:16] / _safe_name(uploaded.name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)
        saved[uploaded.file_id] = (path, digest)
    return saved[uploaded.file_id]


def _safe_name(name: str) -> str:
    """The file name without folders or odd characters (the suffix decides how it is read)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip(".")
    return cleaned or "upload"


# ----------------------------------------------------------------------------- saved outputs

SWEEP_FILES = ("sweep.json", "arrays.npz")
RESULT_FILES = ("result.json", "arrays.npz")


def sweep_from_path(text: str) -> tuple[str, str]:
    """A saved sweep folder or a monitor's .jsonl file on the server: its path and fingerprint."""
    path = _server_path(text)
    if not all(server_paths().allows(path / name) for name in SWEEP_FILES):
        raise InputError(server_paths().refusal)
    if path.is_file():
        if path.suffix != ".jsonl":
            raise InputError(
                f"{path.name} is not a monitor file (.jsonl); give it or a folder `deepvit-diag sweep` wrote"
            )
        return str(path), _file_fingerprint(path)
    missing = [name for name in SWEEP_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"{path} is not a saved sweep: it has no {' or '.join(missing)}")
    return str(path), ",".join(_file_fingerprint(path / name) for name in SWEEP_FILES)


def ablation_from_path(text: str) -> tuple[str, str]:
    """A folder `deepvit-diag ablate` wrote, on the server: its path and fingerprint."""
    path = _server_path(text)
    missing = [name for name in RESULT_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"{path} is not a saved ablation: it has no {' or '.join(missing)}")
    return str(path), ",".join(_file_fingerprint(path / name) for name in RESULT_FILES)


@dataclass(frozen=True)
class SavedChoice:
    """A saved output folder to show: ``path`` on the server (an upload's extracted copy), a
    ``fingerprint`` that changes with its files, the ``name`` the user knows it by, and whether the
    app opened it by itself (``default``: the saved result of the README's command)."""

    path: str
    fingerprint: str
    name: str
    default: bool = False


def weights_file(spec: str) -> Path:
    """The file a preset, weight-store name or path loads from (a store entry before bundled weights)."""
    if not is_store_name(spec):
        return Path(spec)
    stored = store_path(spec)
    return stored if stored.is_file() else bundled_path(spec)


def saved_from_path(text: str) -> SavedChoice:
    """A folder `deepvit-diag analyze`, `compare` or `sweep` wrote, on the server: its path, a
    fingerprint of its files and its name. Every file in it must be readable here (no link out)."""
    path = _server_path(text)
    if not path.is_dir():
        raise InputError(
            f"{path} is not a folder: give the folder `deepvit-diag analyze`, `compare` or `sweep` wrote "
            "(its --out), or upload a zip of it"
        )
    files = sorted(entry for entry in path.iterdir() if entry.is_file())
    if not all(server_paths().allows(file) for file in files):
        raise InputError(server_paths().refusal)
    return SavedChoice(str(path), ",".join(f"{file.name}:{_file_fingerprint(file)}" for file in files), path.name)


def saved_from_upload(uploaded: UploadedFile, max_mb: float) -> SavedChoice:
    """An uploaded zip of a saved output folder, extracted once per content (``extract_saved`` checks
    its paths, sizes and marker first): the folder's path, the zip's sha256 and its name."""
    if not uploaded.name.lower().endswith(".zip"):
        raise InputError(f"{uploaded.name} is not a .zip file: zip the folder deepvit-diag wrote, or give its path")
    archive, digest = save_upload(uploaded, max_mb)
    folder = upload_folder() / f"saved-{digest[:16]}"
    if not folder.is_dir():
        try:
            extract_saved(archive, folder, name=uploaded.name)
        except DiagError as err:
            raise InputError(str(err)) from None
    return SavedChoice(str(folder), digest, uploaded.name)


def sweep_from_uploads(files: list[UploadedFile], max_mb: float) -> tuple[str, str]:
    """Uploaded sweep.json and arrays.npz of one sweep (put in one folder), or one monitor
    .jsonl file: the path to read and its fingerprint."""
    if len(files) == 1 and files[0].name.endswith(".jsonl"):
        path, digest = save_upload(files[0], max_mb)
        return str(path), digest
    by_name = {Path(uploaded.name).name: uploaded for uploaded in files}
    if sorted(by_name) != sorted(SWEEP_FILES):
        raise InputError("upload the sweep.json and arrays.npz of one sweep, or one monitor .jsonl file")
    saved = {name: save_upload(uploaded, max_mb) for name, uploaded in by_name.items()}
    digest = hashlib.sha256("".join(saved[name][1] for name in SWEEP_FILES).encode()).hexdigest()
    folder = upload_folder() / f"sweep-{digest[:16]}"
    folder.mkdir(exist_ok=True)
    for name, (path, _) in saved.items():
        if not (folder / name).exists():
            shutil.copyfile(path, folder / name)
    return str(folder), digest
