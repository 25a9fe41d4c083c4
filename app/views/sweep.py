"""Sweep: many checkpoints on the same images (depths, or the epochs of one run), or a sweep
that ``deepvit-diag sweep`` saved, or a CollapseMonitor's file, with the table, findings and
figures of sweep.html."""

from __future__ import annotations

import hashlib
import pickle

import pandas as pd
import streamlit as st

from deepvit_diag import Settings
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures import drawing
from deepvit_diag.summary import sweep_findings, sweep_rows, sweep_title
from deepvit_diag.sweeps import SweepResult

from ..compute import SWEEP_FOLDER, SweepRequest, failure_message, open_sweep, run_sweep, sweep_files
from ..config import AppDefaults
from ..sidebar import model_rows
from ..sources import (
    ImageChoice,
    InputError,
    model_from_name,
    model_from_path,
    model_from_upload,
    saved_from_upload,
    sweep_from_path,
    sweep_from_uploads,
)
from .common import BLOCKS_FROM_ONE, CancelButton, download_row, jobs, show_drawn

OPENED = "The saved sweep opened in the sidebar"
SOURCES = {
    "run": "Run a sweep",
    "path": "Open a saved sweep or monitor file on the server",
    "upload": "Upload a saved sweep or monitor file",
}


def render(
    images: ImageChoice | None, settings: Settings, defaults: AppDefaults, opened: SweepResult | None = None
) -> None:
    """``opened``: a saved sweep opened in the sidebar, offered first."""
    st.caption(
        "Attention collapse across checkpoints: models of several depths (one line per group, ViT or DeepViT), "
        "or the checkpoints of one training run (by the epoch they record). Also opens what `deepvit-diag sweep` "
        f"saved (sweep.json and arrays.npz, or a zip of the folder) or a CollapseMonitor's .jsonl file. "
        f"{BLOCKS_FROM_ONE}"
    )
    sources = {"opened": OPENED, **SOURCES} if opened is not None else SOURCES
    source = st.radio("Sweep", list(sources), format_func=sources.get, key="sweep_source", horizontal=True)
    try:
        if source == "opened" and opened is not None:
            shown = opened
        elif source == "run":
            shown = _run(images, settings, defaults)
        elif source == "path":
            shown = _opened(*sweep_from_path(st.text_input("Folder or .jsonl file on the server", key="sweep_path")))
        else:
            files = st.file_uploader(
                "sweep.json and arrays.npz, a zip of the folder, or a .jsonl file",
                accept_multiple_files=True,
                key="sweep_upload",
                help="The files `deepvit-diag sweep` writes (or the zip this view downloads), or a CollapseMonitor's "
                "JSON Lines file.",
            )
            shown = _uploaded(files, defaults.max_checkpoint_mb) if files else None
    except InputError as err:
        st.error(markdown_text(err))
        return
    if shown is not None:
        _show(shown)


def _uploaded(files: list, max_mb: float) -> SweepResult | None:
    """The sweep of the uploaded files: one zip of a saved sweep folder, or its loose files."""
    if len(files) == 1 and files[0].name.lower().endswith(".zip"):
        choice = saved_from_upload(files[0], max_mb)
        return _opened(choice.path, choice.fingerprint)
    return _opened(*sweep_from_uploads(files, max_mb))


def _opened(path: str, fingerprint: str) -> SweepResult | None:
    try:
        return open_sweep(path, fingerprint)
    except Exception as err:  # whatever a user's file holds, the app must stay usable
        st.error(markdown_text(failure_message(err)))
        return None


def _run(images: ImageChoice | None, settings: Settings, defaults: AppDefaults) -> SweepResult | None:
    rows = {row["name"]: row for row in model_rows() if row["weights"] != "none"}
    names = st.multiselect("Presets and weight-store entries", list(rows), key="sweep_names")
    paths = st.text_area(
        "Checkpoint files on the server, one per line",
        key="sweep_paths",
        help="Read only. The checkpoints of one training run are put in the order of the epochs they record.",
    )
    uploads = st.file_uploader(
        "Upload checkpoint files",
        accept_multiple_files=True,
        key="sweep_uploads",
        help=f".pth, .pth.tar, .pt, .bin or .safetensors, up to {defaults.max_checkpoint_mb:g} MB each",
    )
    st.caption("Each checkpoint is analysed on the sidebar's images with the sidebar's parameters.")
    if st.button("Run sweep", type="primary", key="sweep_run"):
        choices = [
            *(model_from_name(name) for name in names),
            *(model_from_path(line, None) for line in paths.splitlines() if line.strip()),
            *(model_from_upload(uploaded, None, defaults.max_checkpoint_mb) for uploaded in uploads or []),
        ]
        if not choices:
            raise InputError("choose at least one checkpoint")
        if images is None:
            raise InputError("fix the images in the sidebar first")
        st.session_state["sweep_request"] = SweepRequest(tuple(choices), images, settings)
    request: SweepRequest | None = st.session_state.get("sweep_request")
    if request is None:
        st.info("Choose checkpoints and press **Run sweep**.")
        return None
    bar = st.empty()
    cancel = CancelButton("cancel_sweep", lambda: st.session_state.update(sweep_request=None))

    def report(done: int, total: int | None) -> None:
        cancel.offer()
        if total:
            bar.progress(min(1.0, done / total), text=f"Sweeping {len(request.checkpoints)} checkpoints")

    def waiting(ahead: int) -> None:
        cancel.offer()
        bar.info(f"Waiting for the device: {jobs(ahead)} ahead in the queue. The sweep starts by itself.")

    try:
        run = run_sweep(request, report, waiting)
    except Exception as err:  # a failing checkpoint must not break the app
        st.error(markdown_text(failure_message(err)))
        st.session_state["sweep_request"] = None
        return None
    finally:
        bar.empty()
        cancel.remove()
    for note in run.notes:
        st.warning(markdown_text(note))
    return run.sweep


def _show(sweep: SweepResult) -> None:
    header, rows = sweep_rows(sweep)
    st.subheader("Checkpoints")
    st.caption(markdown_text(sweep_title(sweep)))
    cells = [[markdown_text(cell) for cell in row] for row in rows]
    st.table(
        pd.DataFrame(cells, columns=[markdown_text(title) for title in header]).set_index(markdown_text(header[0]))
    )
    for sentence in sweep_findings(sweep):
        st.markdown(f"- {markdown_text(sentence)}")
    relative = st.toggle("Per-block curves over relative depth (block / number of blocks)", key="sweep_relative")
    show_drawn(drawing.draw_sweep(sweep, relative_depth=relative))
    _downloads(sweep)


DOWNLOADS = (
    ("sweep.html", "text/html", "The sweep's report, one self-contained page that opens offline."),
    ("sweep.json", "application/json", "Every checkpoint's headline numbers, the settings and the images."),
    ("arrays.npz", "application/octet-stream", "The per-block curves of every checkpoint (with sweep.json)."),
    (
        f"{SWEEP_FOLDER}.zip",
        "application/zip",
        "All of them as `deepvit-diag sweep` writes its folder; opens again here.",
    ),
)


def _downloads(sweep: SweepResult) -> None:
    """The files ``deepvit-diag sweep`` writes for the sweep shown."""
    st.subheader("Downloads")
    # Keyed by content: the same sweep opened or run again is packed once, another never gets its files.
    files = sweep_files(hashlib.sha256(pickle.dumps(sweep)).hexdigest(), _sweep=sweep)
    for name, mime, what in DOWNLOADS:
        download_row(name, files[name], mime, what, key=f"sweep_download_{name}")
