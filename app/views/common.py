"""What every view shares: how a figure (a catalogue figure with its caption) is put on the
page, the block-numbering note, and the Cancel button and queue wording of heavy work."""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from deepvit_diag import catalogue
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures import drawing
from deepvit_diag.report import PLOTLY_CONFIG

from ..compute import Analysis

BLOCKS_FROM_ONE = "Blocks and heads are numbered from 1, as in the paper."


def show_figure(fig: go.Figure, key: str, on_select: Callable[[], None] | None = None) -> None:
    """The library's own styling (``theme=None``), so the app's figures look like the report's.
    A figure that sets its own width (square attention panels) keeps it; others fill the column.
    ``on_select`` is called when a click selects a point (it reads ``st.session_state[key]``)."""
    st.plotly_chart(
        fig,
        theme=None,
        config=PLOTLY_CONFIG,
        key=key,
        width="content" if fig.layout.width else "stretch",
        on_select=on_select or "ignore",
        selection_mode="points",
    )


def show_drawn(drawn: list[drawing.DrawnFigure]) -> None:
    """Catalogue figures as ``drawing.draw`` made them, each with the report's caption."""
    for item in drawn:
        show_figure(item.figure, item.element_id)
        st.caption(markdown_text(item.caption))


def show_section(section: str, analysis: Analysis, options: dict[str, dict] | None = None) -> None:
    """Every catalogue figure of a report section, as the report draws it; ``options`` maps
    a figure's key to keyword arguments of its function (e.g. the ``block`` of
    ``cross_head_matrices``)."""
    for spec in catalogue.figures_in(section):
        show_drawn(drawing.draw(spec, analysis.results, analysis.comparison, **(options or {}).get(spec.key, {})))


def download_row(name: str, data: bytes, mime: str, what: str, key: str) -> None:
    """A download button for file ``name`` beside what it holds and its size."""
    button, text = st.columns([1, 3], vertical_alignment="center")
    with button:
        st.download_button(f"Download {name}", data, file_name=name, mime=mime, key=key, width="stretch")
    text.markdown(f"{what} ({len(data) / 1024:,.0f} KB)")


class CancelButton:
    """A Cancel button for heavy work, drawn once, when the work first reports (waiting in the
    device queue, or progress). Pressing it reruns the page, which ends the work at its next
    report (see ``app/work_queue.py``); ``on_click`` says what the page shows instead."""

    def __init__(self, key: str, on_click: Callable[[], None]):
        self.key, self.on_click = key, on_click
        self._slot = st.empty()
        self._drawn = False

    def offer(self) -> None:
        if not self._drawn:
            self._drawn = True
            self._slot.button("Cancel", key=self.key, on_click=self.on_click)

    def remove(self) -> None:
        self._slot.empty()


def jobs(count: int) -> str:
    """``count`` jobs in words: "1 job", "2 jobs"."""
    return f"{count} job" if count == 1 else f"{count} jobs"
