"""Export: the result shown as the command line writes it (result.json, arrays.npz, the
self-contained report.html), and all of them as one zip of the folder, which the app opens again."""

from __future__ import annotations

import streamlit as st

from ..compute import RESULT_FOLDER, Analysis, export_files
from .common import download_row

DOWNLOADS = (
    ("result.json", "application/json", "Headline numbers, parameters, provenance and package versions."),
    ("arrays.npz", "application/octet-stream", "Every metric array (of a comparison: a/..., b/... and cka_ab)."),
    ("report.html", "text/html", "The full report, one self-contained page that opens offline."),
    (
        f"{RESULT_FOLDER}.zip",
        "application/zip",
        "All of them, as `deepvit-diag compare` writes its folder; **Open a saved result** in the sidebar opens it.",
    ),
)


def render(analysis: Analysis) -> None:
    files = export_files(analysis.key, _analysis=analysis)
    st.caption(
        "The files `deepvit-diag compare` writes, for the result shown (load them again with "
        "`deepvit_diag.load_saved(folder)` or `ComparisonResult.load(folder)`)."
    )
    for name, mime, what in DOWNLOADS:
        download_row(name, files[name], mime, what, key=f"download_{name}")
