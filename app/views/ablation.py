"""Ablation: what removing blocks, attention, heads or Re-attention costs model A or B of the
comparison shown (on its first images), or an ablation `deepvit-diag ablate` saved, with the
table, findings and figures of the ablation's report.html."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from deepvit_diag.ablation import HEAD_MODES, STUDIES, planned_cost
from deepvit_diag.ablation_result import AblationResult
from deepvit_diag.ablation_summary import ablation_findings, ablation_rows, ablation_title, cost_lines
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures.drawing import draw_ablation

from ..compute import NEEDS_MODELS, AblationRequest, Analysis, failure_message, load, open_ablation, run_ablation
from ..sources import InputError, ablation_from_path
from .common import BLOCKS_FROM_ONE, show_figure

SOURCES = {"run": "Ablate a model of this comparison", "path": "Open a saved ablation on the server"}
# Studies chosen by default: the head study runs H ablations per block, the others about one.
DEFAULT_STUDIES = ("block", "attention", "transplant", "reattention", "pruning")


def render(analysis: Analysis) -> None:
    st.caption(
        "Similar maps suggest redundant blocks; an ablation measures it: each block removed, its attention branch "
        "removed, its maps replaced by the previous block's, each head replaced by its mean, Re-attention switched "
        "off, and the most redundant blocks pruned together, each compared with the intact model on the same images "
        f"(KL of the predictive distribution, top-1 agreement, accuracy). {BLOCKS_FROM_ONE}"
    )
    source = st.radio("Ablation", list(SOURCES), format_func=SOURCES.get, key="ablation_source", horizontal=True)
    try:
        if source == "run":
            shown = _run(analysis)
        else:
            path, fingerprint = ablation_from_path(st.text_input("Folder on the server", key="ablation_path"))
            shown = _opened(path, fingerprint)
    except InputError as err:
        st.error(markdown_text(str(err)))
        return
    if shown is not None:
        label, result = shown
        _show(label, result)


def _opened(path: str, fingerprint: str) -> tuple[str, AblationResult] | None:
    try:
        result = open_ablation(path, fingerprint)
    except Exception as err:  # whatever a user's file holds, the app must stay usable
        st.error(markdown_text(failure_message(err)))
        return None
    return result.model.get("description", path), result


def _run(analysis: Analysis) -> tuple[str, AblationResult] | None:
    if analysis.request is None:  # opened from saved files: an ablation runs the model itself
        st.info(f"{NEEDS_MODELS} A saved ablation opens with **{SOURCES['path']}** above.")
        return None
    label_a, label_b = analysis.labels
    side = st.radio("Model", ["a", "b"], format_func={"a": label_a, "b": label_b}.get, key="ablation_side")
    shown_images = analysis.comparison.a.num_images
    # The studies get a row of their own: in a third of a laptop's width their chips scroll out of sight.
    studies = st.multiselect("Studies", STUDIES, list(DEFAULT_STUDIES), key="ablation_studies")
    columns = st.columns(2)
    num_images = columns[0].number_input(
        "Images (the comparison's first)", 1, shown_images, min(32, shown_images), key="ablation_images"
    )
    heads = columns[1].radio("Head ablation", HEAD_MODES, key="ablation_heads", horizontal=True)
    if not studies:
        raise InputError("choose at least one study")
    model = load(analysis.request.a if side == "a" else analysis.request.b, side).model
    cost = cost_lines(label_a if side == "a" else label_b, planned_cost(model, studies, heads), None)
    st.caption(markdown_text(" ".join(cost)))
    request = AblationRequest(analysis.key, side, int(num_images), tuple(studies), heads)
    if st.button("Run ablation", type="primary", key="ablation_run"):
        st.session_state["ablation_request"] = request
    chosen: AblationRequest | None = st.session_state.get("ablation_request")
    if chosen is None or chosen.analysis_key != analysis.key:
        st.info("Choose a model and studies and press **Run ablation**.")
        return None
    bar = st.empty()

    def report(done: int, total: int | None) -> None:
        if total:
            bar.progress(min(1.0, done / total), text=f"Ablating: {done} of {total} image passes")

    try:
        run = run_ablation(analysis, chosen, report)
    except Exception as err:  # a model that cannot be ablated must not break the app
        st.error(markdown_text(failure_message(err, analysis.request)))
        st.session_state["ablation_request"] = None
        return None
    finally:
        bar.empty()
    return (label_a if chosen.side == "a" else label_b), run.result


def _show(label: str, result: AblationResult) -> None:
    header, rows = ablation_rows(result)
    st.subheader("Per block")
    st.caption(markdown_text(ablation_title(result)))
    st.table(pd.DataFrame(rows, columns=header).set_index(header[0]))
    for sentence in ablation_findings(label, result):
        st.markdown(f"- {markdown_text(sentence)}")
    for item in draw_ablation(result):
        show_figure(item.figure, item.element_id)
        st.caption(item.caption)
