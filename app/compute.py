"""Loading, analysing and exporting, each cached so that switching views never recomputes.

* checkpoints: ``st.cache_resource`` keyed by (spec, arch, fingerprint, side), shared by all
  sessions (a model holds nothing a visitor gave beyond what its key names);
* analyses: a ``ResultStore`` keyed by both checkpoints, the image set and every parameter
  (see ``ResultStore`` for why not ``st.cache_data``): one shared by all sessions for
  analyses of public inputs only (presets, store entries, timm names, bundled images), and
  one per session, of at most ``AppDefaults.max_results`` entries, for anything a visitor
  gave (uploads, server paths), whose keys also name the session;
* live attention of one image and the export files: ``st.cache_data`` keyed by the same keys;
* sweeps: run by ``deepvit_diag.sweep`` (one checkpoint in memory at a time, none cached as
  a model) and kept in their own stores, shared or per session by the same rule; saved sweeps
  and monitor files are read by ``SweepResult.load`` / ``SweepResult.from_monitor``;
* ablations of model A or B: run by ``deepvit_diag.ablate`` and kept in their own
  ``ResultStore``; saved ones read by ``AblationResult.load``;
* saved results (a folder ``analyze``, ``compare`` or ``sweep`` wrote, or an uploaded zip of one
  that ``deepvit_diag.saved.extract_saved`` unpacked): read by ``load_saved`` into an ``Analysis``
  without request (no models or images at hand) or a ``SweepResult``; ``saved_differs`` says
  whether one is what the sidebar's defaults would compute, so the first visit can show it.

Analyses and sweeps run through ``DeviceQueue``: one at a time per device.

Every number comes from ``deepvit_diag``: this module only calls it.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from torch import nn

from deepvit_diag import AblationResult, DiagError, Settings, ablate, compare, extract_attention, load_model, sweep
from deepvit_diag.device import resolve_device
from deepvit_diag.errors import failure_line
from deepvit_diag.images import ImageSet, default_image_set, open_images
from deepvit_diag.manifest import MARKER
from deepvit_diag.report import write_report, write_sweep_report
from deepvit_diag.results import AnalysisResult, ComparisonResult
from deepvit_diag.saved import load_saved, made_with, model_labels, pack_output
from deepvit_diag.sweeps import SweepResult

from .config import AppDefaults
from .sources import ImageChoice, ModelChoice, SavedChoice, session_key, shown_as, weights_file
from .work_queue import DeviceQueue, Turn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisRequest:
    """Everything an analysis depends on; equal requests give the same result.

    ``settings.num_images`` is always set: the app analyses the first N images."""

    a: ModelChoice
    b: ModelChoice
    images: ImageChoice
    settings: Settings

    def analysis_settings(self) -> Settings:
        """The settings ``deepvit_diag.compare`` runs with. Images are decoded in the app's
        own process: forking loader workers from Streamlit's threads risks deadlocks (and
        warns from Python 3.12), and the app's image sets are small."""
        return replace(self.settings, num_workers=0)

    @property
    def public(self) -> bool:
        """Nothing in it that a visitor gave: its result may be shown to every session."""
        return self.a.public and self.b.public and self.images.public


@dataclass
class LoadedModel:
    """A model with what loading it announced, and a lock: a model records attention through
    hooks, so two sessions must not run it at the same time."""

    model: nn.Module
    notes: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class SavedOrigin:
    """Where a result opened from disk came from: the folder or zip as the user named it, and the
    names the command line gave its models."""

    name: str
    labels: tuple[str, ...]


@dataclass
class Analysis:
    """A finished comparison (or, opened from disk, a saved analysis of one model), with what the
    views need to label and redo parts of it."""

    key: str
    request: AnalysisRequest | None  # None: opened from disk (``saved``), with no models or images at hand
    images: ImageChoice | None  # resolved: never the "model cards' set" placeholder; None when saved
    result: ComparisonResult | AnalysisResult
    notes: list[str]  # warnings worth showing (guessed architecture, skipped images)
    queued: Turn | None = None  # its time in the device queue
    saved: SavedOrigin | None = None

    @property
    def comparison(self) -> ComparisonResult | None:
        """The comparison; None for a saved analysis of one model."""
        return self.result if isinstance(self.result, ComparisonResult) else None

    @property
    def labels(self) -> tuple[str, ...]:
        """Names in figures: the short names, with the side so that A and B always differ."""
        if self.saved is not None:
            return self.saved.labels
        return f"{self.request.a.name} (A)", f"{self.request.b.name} (B)"

    @property
    def results(self) -> dict[str, AnalysisResult]:
        analyses = (self.result.a, self.result.b) if self.comparison is not None else (self.result,)
        return dict(zip(self.labels, analyses))

    @property
    def first(self) -> AnalysisResult:
        """Model A, or the one model: its images and parameters are those of the whole result."""
        return next(iter(self.results.values()))


def failure_message(err: Exception, request: AnalysisRequest | None = None) -> str:
    """One line for ``st.error`` about why loading or analysing failed (``failure_line``), naming
    uploaded files as they were uploaded. Anything but a ``DiagError`` or a file the server cannot
    read is unexpected (a bug, or input nobody foresaw) and is also logged with its traceback."""
    if not isinstance(err, (DiagError, OSError)):
        logger.exception("unexpected failure in the app")
    message = failure_line(err)
    return shown_as(message, request.a, request.b, request.images) if request is not None else message


@contextmanager
def _announcements() -> Iterator[list[warnings.WarningMessage]]:
    """Record the library's announcements (UserWarnings: guessed architecture, random weights,
    skipped images) to show in the page; other categories (deprecations) are not for users."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", UserWarning)
        yield caught


# ----------------------------------------------------------------------------- checkpoints


@st.cache_resource(max_entries=6, show_spinner="Loading checkpoint...")
def _load(spec: str, arch: str | None, fingerprint: str, side: str) -> LoadedModel:
    # ``side`` is part of the key so that comparing a checkpoint with itself uses two
    # model objects: one model cannot carry two attention recorders at once.
    with _announcements() as caught:
        model = load_model(spec, arch=arch or None)
    return LoadedModel(model, [str(warning.message) for warning in caught])


def load(choice: ModelChoice, side: str) -> LoadedModel:
    return _load(choice.spec, choice.arch, choice.fingerprint, side)


# ----------------------------------------------------------------------------- analyses


class ResultStore:
    """Finished analyses (or sweeps: anything with a ``key``) shared by every session; the
    oldest goes beyond ``max_entries``.

    Not ``st.cache_data``: the analysis reports progress to a bar that the caller owns,
    and ``st.cache_data`` replays the element calls made inside a cached function, which
    fails for an element made outside it. Results are only read after they are stored.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Analysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Analysis | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
            return self._entries.get(key)

    def put(self, analysis: Analysis) -> None:
        with self._lock:
            self._entries[analysis.key] = analysis
            self._entries.move_to_end(analysis.key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


@st.cache_resource(show_spinner=False)
def result_store() -> ResultStore:
    """Analyses of public inputs, shared by every session."""
    return ResultStore(max_entries=8)


def _session_store(name: str) -> ResultStore:
    """This session's own store ``name``: what it made from inputs it gave, seen by no other session."""
    if name not in st.session_state:
        st.session_state[name] = ResultStore(max_entries=AppDefaults.from_env().max_results)
    return st.session_state[name]


def _owner(public: bool) -> str:
    """Who may see a result: everyone, or this session only."""
    return "shared" if public else session_key()


@st.cache_resource(show_spinner=False)
def device_queue() -> DeviceQueue:
    """The queue every session's heavy work waits in."""
    return DeviceQueue()


def queue_name(settings: Settings) -> str:
    """The device ``settings`` run on, as the queue names it (``"auto"`` resolved; one queue per GPU)."""
    try:
        device = resolve_device(settings.device)
    except ValueError:  # the analysis itself says what is wrong with the device
        return settings.device
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def resolve_images(request: AnalysisRequest, models: tuple[LoadedModel, LoadedModel]) -> ImageChoice:
    """The request's image source, with "the set the model cards name" made concrete."""
    if request.images.spec is not None:
        return request.images
    return ImageChoice(default_image_set([loaded.model for loaded in models]))


def open_image_set(images: ImageChoice, limit: int) -> tuple[ImageSet, list[str]]:
    """The first ``limit`` usable images, and the warnings about files skipped on the way."""
    with _announcements() as caught:
        image_set = open_images(list(images.spec) if isinstance(images.spec, tuple) else images.spec, limit=limit)
    if images.description:
        image_set.description = images.description
    return image_set, [str(warning.message) for warning in caught]


def analysis_key(request: AnalysisRequest, images: ImageChoice) -> str:
    """Names the session for a private analysis: the caches of one image's maps and of the
    export files are keyed by it too, and must not serve one session what another made."""
    return repr((_owner(request.public), request.a.key, request.b.key, images, request.analysis_settings()))


def _store_for(public: bool, shared: Callable[[], ResultStore], name: str) -> ResultStore:
    """Where a result of public inputs, or of this session's own, is kept."""
    return shared() if public else _session_store(name)


def _check_image_limit(settings: Settings) -> None:
    """The sidebar offers no more than the limit; this holds for any client of the server too."""
    limit = AppDefaults.from_env().max_images
    if settings.num_images is not None and settings.num_images > limit:
        raise DiagError(f"this server analyses at most {limit} images at a time, not {settings.num_images}")


def run_analysis(
    request: AnalysisRequest, report: Callable[[int, int], None], waiting: Callable[[int], None] = lambda ahead: None
) -> Analysis:
    """The comparison ``request`` asks for, from the store or computed now.

    ``report(done, total)`` is called as images are read; ``waiting(ahead)`` while other
    work holds the device (see ``DeviceQueue.turn``). Raises ``DiagError`` for any input the
    library refuses (unreadable checkpoint, mismatched weights, no usable image); see
    ``failure_message`` for what else can come from untrusted files.
    """
    store = _store_for(request.public, result_store, "analyses")
    models = (load(request.a, "a"), load(request.b, "b"))
    images = resolve_images(request, models)
    key = analysis_key(request, images)
    if (stored := store.get(key)) is not None:
        return stored
    settings = request.analysis_settings()
    _check_image_limit(settings)
    with device_queue().turn(queue_name(settings), waiting) as turn:
        image_set, image_notes = open_image_set(images, settings.num_images)
        # Always in the same order, so two sessions locking the same pair cannot deadlock.
        first, second = sorted(models, key=id)
        with first.lock, second.lock, _announcements() as caught:
            comparison = compare(models[0].model, models[1].model, image_set, settings, progress=report)
    notes = [*models[0].notes, *models[1].notes, *image_notes, *(str(warning.message) for warning in caught)]
    notes = [shown_as(note, request.a, request.b, images) for note in notes]
    analysis = Analysis(key, request, images, comparison, list(dict.fromkeys(notes)), turn)
    store.put(analysis)
    return analysis


# ----------------------------------------------------------------------------- live maps of one image

NEEDS_MODELS = (
    "This result was opened from saved files, which hold every metric but neither the checkpoints nor the "
    "images this needs: press **Run analysis** in the sidebar to analyse the checkpoints live."
)


@st.cache_data(max_entries=64, show_spinner="Computing the attention maps of this image...")
def block_attention(
    analysis_key: str, side: str, image_index: int, block: int, _analysis: Analysis
) -> dict[str, np.ndarray]:
    """Pre- and post-Theta maps (H, T, T) of one block for example image ``image_index``
    (0-based, in the order the analysis read its images), from one forward pass."""
    request = _analysis.request
    if request is None:  # a result opened from disk has neither its models nor its images here
        raise DiagError(NEEDS_MODELS)
    loaded = load(request.a if side == "a" else request.b, side)
    image_set, _ = open_image_set(_analysis.images, image_index + 1)
    # Iterating skips undecodable files exactly as the analysis did, so the index matches.
    image = next(islice(iter(image_set), image_index, None), None)
    if image is None:
        raise DiagError(f"image {image_index + 1} of {image_set.description} can no longer be read")
    with loaded.lock:
        capture = extract_attention(loaded.model, [image], blocks=[block])
    return {kind: getattr(capture, kind)[0, 0].to(torch.float32).cpu().numpy() for kind in ("pre", "post")}


# ----------------------------------------------------------------------------- export


# The folder `deepvit-diag analyze` and `compare` write by default; the zip of a result unpacks to it.
RESULT_FOLDER = "deepvit-diag-report"
SWEEP_FOLDER = "deepvit-diag-sweep"


@st.cache_data(max_entries=4, show_spinner="Preparing the downloads...")
def export_files(analysis_key: str, _analysis: Analysis) -> dict[str, bytes]:
    """``result.json`` and ``arrays.npz`` (the library's ``save``), ``report.html``, and all of them
    with the folder's marker as ``deepvit-diag-report.zip`` (what the app and ``load_saved`` open)."""

    def fill(folder: Path) -> None:
        _analysis.result.write_files(folder)
        write_report(folder / "report.html", _analysis.result, _analysis.labels)

    return _with_members(pack_output(fill, RESULT_FOLDER), f"{RESULT_FOLDER}.zip")


@st.cache_data(max_entries=4, show_spinner="Preparing the downloads...")
def sweep_files(sweep_key: str, _sweep: SweepResult) -> dict[str, bytes]:
    """``sweep.json``, ``arrays.npz`` and ``sweep.html`` as ``deepvit-diag sweep`` writes them, and all
    of them as ``deepvit-diag-sweep.zip``."""

    def fill(folder: Path) -> None:
        _sweep.write_files(folder)
        write_sweep_report(folder / "sweep.html", _sweep)

    return _with_members(pack_output(fill, SWEEP_FOLDER), f"{SWEEP_FOLDER}.zip")


def _with_members(packed: bytes, zip_name: str) -> dict[str, bytes]:
    """Every file of the zip by its name (the marker left out: it only means something in the zip), and the zip."""
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        files = {
            Path(member).name: archive.read(member) for member in archive.namelist() if not member.endswith(MARKER)
        }
    return {**files, zip_name: packed}


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepRequest:
    """Everything a sweep run depends on: the checkpoints in order, the images and the settings."""

    checkpoints: tuple[ModelChoice, ...]
    images: ImageChoice
    settings: Settings

    def analysis_settings(self) -> Settings:
        """What every analysis of the sweep runs with: images decoded in the app's own
        process (as for a comparison) and no example images (a sweep draws none)."""
        return replace(self.settings, num_workers=0, num_examples=0)

    @property
    def public(self) -> bool:
        """Nothing in it that a visitor gave: its result may be shown to every session."""
        return all(choice.public for choice in self.checkpoints) and self.images.public

    @property
    def key(self) -> str:
        """Unique within a store (a session's own sweeps are kept in that session)."""
        return repr((tuple(choice.key for choice in self.checkpoints), self.images, self.analysis_settings()))


@dataclass
class SweepRun:
    """A finished sweep, with the request that made it and what was announced on the way."""

    key: str
    sweep: SweepResult
    notes: list[str]


@st.cache_resource(show_spinner=False)
def sweep_store() -> ResultStore:
    """Sweeps of public inputs, shared by every session."""
    return ResultStore(max_entries=4)


def run_sweep(
    request: SweepRequest,
    report: Callable[[int, int | None], None],
    waiting: Callable[[int], None] = lambda ahead: None,
) -> SweepRun:
    """The sweep ``request`` asks for, from the store or computed now (one model at a time,
    images decoded in the app's own process, as for a comparison), in the device queue."""
    store = _store_for(request.public, sweep_store, "sweeps")
    if (stored := store.get(request.key)) is not None:
        return stored
    settings = request.analysis_settings()
    _check_image_limit(settings)
    with device_queue().turn(queue_name(settings), waiting):
        images, notes = (
            (None, []) if request.images.spec is None else open_image_set(request.images, settings.num_images)
        )
        with _announcements() as caught:
            result = sweep(
                [choice.spec for choice in request.checkpoints],
                images,
                settings,
                labels=[choice.name for choice in request.checkpoints],
                progress=report,
            )
    run = SweepRun(request.key, result, list(dict.fromkeys([*notes, *(str(warning.message) for warning in caught)])))
    store.put(run)
    return run


@st.cache_data(max_entries=16, show_spinner="Reading the sweep...")
def open_sweep(path: str, fingerprint: str) -> SweepResult:
    """A saved sweep (a folder with sweep.json and arrays.npz) or a monitor's .jsonl file;
    ``fingerprint`` changes when the files do."""
    del fingerprint  # part of the cache key only
    return SweepResult.from_monitor(path) if Path(path).is_file() else SweepResult.load(path)


# ----------------------------------------------------------------------------- saved results


def open_saved(choice: SavedChoice) -> Analysis | SweepResult:
    """The analysis, comparison or sweep ``deepvit-diag`` saved in the chosen folder (``load_saved``),
    an analysis as the views show it."""
    # What a visitor opened is theirs; the result of the defaults' command is every visitor's first screen.
    return _open_saved(choice.path, choice.fingerprint, choice.name, _owner(choice.default))


@st.cache_resource(max_entries=8, show_spinner="Reading the saved result...")
def _open_saved(path: str, fingerprint: str, name: str, owner: str) -> Analysis | SweepResult:
    # Not copied per rerun: nothing changes a result, and ``fingerprint`` changes with its files. ``owner``
    # keys the entry, and the caches keyed by the analysis's key, to the session that opened it.
    saved = load_saved(path)
    if isinstance(saved, SweepResult):
        return saved
    origin = SavedOrigin(name, tuple(model_labels(saved)))
    return Analysis(repr(("saved", owner, path, fingerprint)), None, None, saved, [], saved=origin)


def saved_differs(analysis: Analysis, request: AnalysisRequest) -> str | None:
    """Why the saved ``analysis`` is not what running ``request`` would give (``saved.made_with``);
    None when it is the same comparison: same checkpoints and weights, images, parameters and count."""
    if analysis.comparison is None:
        return "it is an analysis of one model"
    if request.images.spec is not None and not isinstance(request.images.spec, str):
        return "the sidebar's images are uploads"
    weights = (weights_file(request.a.spec), weights_file(request.b.spec))
    return made_with(
        analysis.comparison, (request.a.spec, request.b.spec), weights, request.images.spec, request.settings
    )


# ----------------------------------------------------------------------------- ablations


@dataclass(frozen=True)
class AblationRequest:
    """An ablation of model A or B (``side``) of an analysis, on its first ``num_images`` images."""

    analysis_key: str
    side: str
    num_images: int
    studies: tuple[str, ...]
    heads: str

    @property
    def key(self) -> str:
        return repr(self)


@dataclass
class AblationRun:
    """A finished ablation, with the request that made it."""

    key: str
    result: AblationResult


@st.cache_resource(show_spinner=False)
def ablation_store() -> ResultStore:
    return ResultStore(max_entries=4)


def run_ablation(
    analysis: Analysis, request: AblationRequest, report: Callable[[int, int | None], None]
) -> AblationRun:
    """The ablation ``request`` asks for, from the store or computed now, with the analysis'
    settings (k, tau, rho, maps, ...) on the analysis' images."""
    if (stored := ablation_store().get(request.key)) is not None:
        return stored
    loaded = load(analysis.request.a if request.side == "a" else analysis.request.b, request.side)
    settings = replace(analysis.request.analysis_settings(), num_images=request.num_images)
    image_set, _ = open_image_set(analysis.images, request.num_images)
    with loaded.lock, _announcements():
        result = ablate(
            loaded.model, image_set, settings, studies=request.studies, heads=request.heads, progress=report
        )
    run = AblationRun(request.key, result)
    ablation_store().put(run)
    return run


@st.cache_data(max_entries=8, show_spinner="Reading the ablation...")
def open_ablation(path: str, fingerprint: str) -> AblationResult:
    """An ablation ``deepvit-diag ablate`` saved (result.json and arrays.npz); ``fingerprint``
    changes when the files do."""
    del fingerprint  # part of the cache key only
    return AblationResult.load(path)
