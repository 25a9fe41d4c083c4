"""deepvit-diag in the browser: ``streamlit run app/main.py`` from the project root.

Opens with the bundled demo pair (vit32 against deepvit32 on digits-clutter-test) already
analysed; the sidebar picks other checkpoints, images and parameters, and Run analyses
them. The Sweep view runs many checkpoints on the sidebar's images and parameters, or
opens a saved sweep or monitor file. Defaults can be changed with environment variables
(see ``app/config.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on the path, not the project root with the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st  # noqa: E402

from app.compute import Analysis, AnalysisRequest, failure_message, queue_name, run_analysis  # noqa: E402
from app.config import DEMO_CHECKPOINTS, AppDefaults  # noqa: E402
from app.sidebar import render_sidebar  # noqa: E402
from app.views import ablation, export, heads, more, overview, ratio, similarity, sweep, theta  # noqa: E402
from app.views.common import CancelButton, jobs  # noqa: E402
from deepvit_diag.escaping import markdown_text  # noqa: E402

VIEWS = {
    "Overview": overview.render,
    "Layer similarity": similarity.render,
    "Similarity ratio": ratio.render,
    "Heads": heads.render,
    "Theta": theta.render,
    "More metrics": more.render,
    "Ablation": ablation.render,
    "Export": export.render,
}
# Laptop widths: Streamlit cuts text that does not fit its box with an ellipsis (a metric's label,
# value and delta: "3 o...", "agai..."; a button's label: "Download report.h..."), which wraps
# instead, and the main area gets more of the window.
LAPTOP_CSS = """<style>
.stMarkdownEllipsis, .stMarkdownEllipsis *,
[data-testid="stMetricLabel"] *, [data-testid="stMetricValue"], [data-testid="stMetricValue"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}
/* Streamlit keeps 5rem on each side of the main area; next to the open sidebar on a laptop that is
   a fifth of the width the figures need (titles and legends cut, colour bars crowding panels). */
@media (max-width: 1400px) {
  [data-testid="stMainBlockContainer"] { padding-left: 2rem !important; padding-right: 2rem !important; }
}
</style>"""
# Not a view of the comparison: it has its own inputs and works without one.
SWEEP_VIEW = "Sweep"


def main() -> None:
    st.set_page_config(page_title="deepvit-diag", layout="wide")
    st.markdown(LAPTOP_CSS, unsafe_allow_html=True)
    defaults = AppDefaults.from_env()
    with st.sidebar:
        chosen = render_sidebar(defaults)
    st.title("Attention collapse in ViT and DeepViT")
    if chosen.run_clicked and chosen.request is None:
        # Not another error box: each bad input already has its own, next to it.
        st.info("Fix the inputs marked in the sidebar, then press **Run analysis** again.")
    # The first visit runs the defaults; later, only Run starts an analysis.
    if chosen.request is not None and (chosen.run_clicked or "request" not in st.session_state):
        st.session_state["request"] = chosen.request
    if st.session_state.pop("cancelled", False):
        st.info("Analysis cancelled.")
    analysis = _current_analysis()
    if analysis is not None:
        if chosen.request is not None and chosen.request != analysis.request:
            st.info(
                "The sidebar differs from the analysis shown below: press **Run analysis** to analyse the new settings."
            )
        for note in analysis.notes:
            st.warning(markdown_text(note))
        if analysis.queued is not None and analysis.queued.ahead_on_arrival:
            st.caption(
                f"This analysis waited {analysis.queued.waited_s:.0f} s in the queue for "
                f"{jobs(analysis.queued.ahead_on_arrival)} ahead of it on the same device."
            )
    names = [*VIEWS, SWEEP_VIEW]
    tabs = st.tabs(names, key="view", on_change="rerun")
    for tab, name in zip(tabs, names):
        with tab:
            if not tab.open:  # only the open view is drawn
                continue
            if name == SWEEP_VIEW:
                sweep.render(chosen.images, chosen.settings, defaults)
            elif analysis is not None:
                VIEWS[name](analysis)


def _current_analysis() -> Analysis | None:
    """The analysis of the requested settings; after a failed run the one shown before, if any."""
    request: AnalysisRequest | None = st.session_state.get("request")
    if request is None:
        st.info("Choose two checkpoints in the sidebar and press **Run analysis**.")
        return None
    try:
        analysis = _run_with_progress(request)
    except Exception as err:  # whatever a user's file does, the app must stay usable
        st.error(markdown_text(failure_message(err, request)))
        _explain_missing_demo(request)
        previous: Analysis | None = st.session_state.get("shown_analysis")
        # Back to the analysis that worked, so that the next rerun does not retry the failing one.
        st.session_state["request"] = previous.request if previous else None
        if previous is not None:
            st.caption("Showing the previous analysis.")
        return previous
    st.session_state["shown_analysis"] = analysis
    return analysis


def _run_with_progress(request: AnalysisRequest) -> Analysis:
    """The analysis, with its progress (or its place in the device queue) and a Cancel button
    shown while it waits or runs. Cancel reruns the page, which stops the work at its next report."""
    bar = st.empty()
    cancel = CancelButton("cancel_analysis", _cancel)

    def waiting(ahead: int) -> None:
        cancel.offer()
        bar.info(
            f"Waiting for the {queue_name(request.settings)}: {jobs(ahead)} ahead in the queue "
            f"(this analysis is number {ahead + 1}). It starts by itself."
        )

    def report(done: int, total: int) -> None:
        cancel.offer()
        bar.progress(done / total, text=f"Analysing images: {done} of {total} read")

    try:
        return run_analysis(request, report, waiting)
    finally:
        bar.empty()
        cancel.remove()


def _cancel() -> None:
    """Leave the queue (or stop the analysis): back to the analysis shown before, if any."""
    previous: Analysis | None = st.session_state.get("shown_analysis")
    st.session_state["request"] = previous.request if previous else None
    st.session_state["cancelled"] = True


def _explain_missing_demo(request: AnalysisRequest) -> None:
    if {request.a.spec, request.b.spec} & set(DEMO_CHECKPOINTS) and "no-weights" in (
        request.a.fingerprint,
        request.b.fingerprint,
    ):
        st.info(
            "The bundled demo weights (deepvit_diag/weights/vit32-digits.safetensors and "
            "deepvit32-digits.safetensors) are not installed. Pick other checkpoints in the sidebar: "
            "a file on the server, an upload or a timm model name."
        )


main()
