"""deepvit-diag in the browser: ``streamlit run app/main.py`` from the project root.

Opens with the bundled demo pair (vit32 against deepvit32 on digits-clutter-test): the saved
result of ``deepvit-diag compare --ckpt-a vit32 --ckpt-b deepvit32`` when it is there and was
made with the same weights, images and parameters, else analysed live. The title and a
loading notice are drawn before the heavy imports (torch, timm, Plotly), so a fresh server
shows the page from the first second. The sidebar picks other checkpoints, images and
parameters (Run analyses them) or opens a saved result folder or zip. The Sweep view runs
many checkpoints on the sidebar's images and parameters, or opens a saved sweep or monitor
file. Defaults can be changed with environment variables (see ``app/config.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on the path, not the project root with the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time  # noqa: E402

import streamlit as st  # noqa: E402

# Drawn before the heavy imports below (torch, timm, Plotly and the analysis take 10-20 s to import
# on a busy machine), so that a fresh server shows the page and what it is doing from the first second.
st.set_page_config(page_title="deepvit-diag", layout="wide")
st.title("Attention collapse in ViT and DeepViT")
_starting = st.empty()
if "app.compute" not in sys.modules:
    _starting.info("Starting: loading PyTorch, timm and Plotly (10-20 s, once per server)...", icon="⏳")

from app.compute import (  # noqa: E402
    Analysis,
    AnalysisRequest,
    failure_message,
    open_saved,
    queue_name,
    run_analysis,
    saved_differs,
)
from app.config import DEMO_CHECKPOINTS, AppDefaults  # noqa: E402
from app.sidebar import render_sidebar  # noqa: E402
from app.sources import SavedChoice, saved_from_path  # noqa: E402
from app.views import ablation, export, heads, more, overview, ratio, similarity, sweep, theta  # noqa: E402
from app.views.common import CancelButton, jobs  # noqa: E402
from deepvit_diag import Settings  # noqa: E402
from deepvit_diag.escaping import markdown_text  # noqa: E402
from deepvit_diag.sweeps import SweepResult  # noqa: E402

_starting.empty()

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
    st.markdown(LAPTOP_CSS, unsafe_allow_html=True)
    defaults = AppDefaults.from_env()
    with st.sidebar:
        chosen = render_sidebar(defaults)
    run_clicked = chosen.run_clicked or st.session_state.pop("run_live", False)
    if run_clicked and chosen.request is None:
        # Not another error box: each bad input already has its own, next to it.
        st.info("Fix the inputs marked in the sidebar, then press **Run analysis** again.")
    if chosen.opened is not None:
        st.session_state["opened"] = chosen.opened
    elif run_clicked:
        st.session_state["opened"] = None  # back to live analyses
    # The first visit runs the defaults (or opens their saved result); later, only Run starts an analysis.
    if chosen.request is not None and (run_clicked or "request" not in st.session_state):
        if "request" not in st.session_state and "opened" not in st.session_state:
            st.session_state["opened"] = _saved_defaults(chosen.request, defaults)
        st.session_state["request"] = chosen.request
    if st.session_state.pop("cancelled", False):
        st.info("Analysis cancelled.")
    opened = _opened()
    if isinstance(opened, SweepResult):
        name = markdown_text(st.session_state["opened"].name)
        st.info(f"Opened the saved sweep `{name}`: it is shown in the **Sweep** view.")
    analysis = opened if isinstance(opened, Analysis) else _current_analysis()
    if analysis is not None and analysis.saved is not None:
        _explain_saved(analysis, st.session_state["opened"])
    elif analysis is not None:
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
                sweep.render(
                    chosen.images, chosen.settings, defaults, opened if isinstance(opened, SweepResult) else None
                )
            elif analysis is not None:
                VIEWS[name](analysis)


def _saved_defaults(request: AnalysisRequest, defaults: AppDefaults) -> SavedChoice | None:
    """The saved result of the README's command (``AppDefaults.saved``) when it is exactly what
    ``request``, the sidebar's defaults, would compute; None when there is none or it differs."""
    if not defaults.saved:
        return None
    try:
        choice = saved_from_path(defaults.saved)
        opened = open_saved(choice)
    except Exception:  # no such folder, not readable here, or not a result: analyse live as without one
        return None
    if not isinstance(opened, Analysis) or saved_differs(opened, request) is not None:
        return None
    return SavedChoice(choice.path, choice.fingerprint, choice.name, default=True)


def _opened() -> Analysis | SweepResult | None:
    """The saved output opened (by the user, or the defaults' own), or None; a failure is shown
    and forgotten, and the live analysis shown instead."""
    choice: SavedChoice | None = st.session_state.get("opened")
    if choice is None:
        return None
    try:
        return open_saved(choice)
    except Exception as err:  # whatever a saved file holds, the app must stay usable
        st.error(markdown_text(failure_message(err)))
        st.session_state["opened"] = None
        return None


def _explain_saved(analysis: Analysis, choice: SavedChoice) -> None:
    """Which saved result is shown, made how, and the way back to live analyses."""
    first = analysis.first
    settings = first.settings
    made = markdown_text(
        f"{first.images['description'].split(':')[0]}, k = {settings.k}, tau = {settings.tau:g}, "
        f"rho = {settings.rho:g}, {settings.axis} as attention vectors, {settings.maps} maps"
    )
    models = markdown_text(" and ".join(analysis.labels))
    if choice.default:
        text = (
            f"Opened at once: the saved result of `deepvit-diag compare` in `{markdown_text(choice.name)}`, "
            f"{models} with the sidebar's defaults ({made}). Analysing them live reads every image through both "
            "models again: about a minute on a 2-core CPU."
        )
    else:
        text = f"Showing the saved result `{markdown_text(choice.name)}` of {models}: {made}."
    info, button = st.columns([5, 1], vertical_alignment="center")
    info.info(
        text + " The views that need the checkpoints or the images (one image's maps per head, ablations) say so."
    )
    button.button("Re-run live", key="rerun_live", on_click=_run_live, help="Analyse the sidebar's checkpoints now")


def _run_live() -> None:
    """Leave the saved result for a live analysis of the sidebar's inputs."""
    st.session_state["opened"] = None
    st.session_state["run_live"] = True


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
    note = st.empty()
    bar = st.empty()
    cancel = CancelButton("cancel_analysis", _cancel)
    settings = request.analysis_settings()
    demo = ""
    command_defaults = Settings(num_images=AppDefaults.from_env().num_images)  # the README command's
    if (request.a.spec, request.b.spec) == DEMO_CHECKPOINTS and request.settings == command_defaults:
        demo = (
            " `deepvit-diag compare --ckpt-a vit32 --ckpt-b deepvit32` saves this result into ./deepvit-diag-report, "
            "which the app, started in the same folder, opens at once."
        )

    def announce() -> None:
        """What runs, said once it does (an analysis from the store runs nothing)."""
        note.caption(
            markdown_text(
                f"Analysing {request.a.name} against {request.b.name}: the first {settings.num_images} images through "
                f"both models on the {queue_name(settings)}, every metric from one pass (the bar shows the time left)."
            )
            + demo
        )

    def waiting(ahead: int) -> None:
        announce()
        cancel.offer()
        bar.info(
            f"Waiting for the {queue_name(request.settings)}: {jobs(ahead)} ahead in the queue "
            f"(this analysis is number {ahead + 1}). It starts by itself."
        )

    first_report: list[tuple[float, int]] = []  # (time, images done) when the images began to be read

    def report(done: int, total: int) -> None:
        announce()
        cancel.offer()
        now = time.monotonic()
        if not first_report:
            first_report.append((now, done))
        since, done_then = first_report[0]
        left = ""
        if done_then < done < total:  # the time left at the pace since the first report
            left = f", about {(now - since) / (done - done_then) * (total - done):.0f} s left"
        bar.progress(done / total, text=f"Analysing images: {done} of {total} read{left}")

    try:
        return run_analysis(request, report, waiting)
    finally:
        note.empty()
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
