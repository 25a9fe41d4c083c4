"""Export: the current analysis as the library writes it (result.json, arrays.npz) and as
the self-contained HTML report."""

from __future__ import annotations

import streamlit as st

from ..compute import Analysis, export_files

DOWNLOADS = (
    ("result.json", "application/json", "Headline numbers, parameters, provenance and package versions."),
    ("arrays.npz", "application/octet-stream", "Every metric array of A (a/...) and B (b/...), and cka_ab."),
    ("report.html", "text/html", "The full report, one self-contained page that opens offline."),
)


def render(analysis: Analysis) -> None:
    files = export_files(analysis.key, _analysis=analysis)
    st.caption(
        "The files `deepvit-diag compare` writes, for the analysis shown (load them again with "
        "`deepvit_diag.ComparisonResult.load(folder)`)."
    )
    for name, mime, what in DOWNLOADS:
        button, text = st.columns([1, 3], vertical_alignment="center")
        with button:
            st.download_button(
                f"Download {name}", files[name], file_name=name, mime=mime, key=f"download_{name}", width="stretch"
            )
        text.markdown(f"{what} ({len(files[name]) / 1024:,.0f} KB)")
