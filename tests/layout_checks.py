"""Text that overlaps other text or is cut, found from bounding boxes in a Playwright page.

``layout_problems(page)`` collects every visible piece of text: each HTML text node (one box
per rendered line, from ``Range.getClientRects``) and each SVG ``<text>`` (its ``getBBox``
mapped to the screen by ``getScreenCTM``, so rotated tick labels keep their true, oriented
box). It reports

- overlaps: two pieces of text whose boxes intersect by more than ``tolerance_px`` in both
  directions (for rotated text, along every axis of the two boxes); text of one element
  against itself or against text nested in it is not compared;
- cuts: text partly hidden by an ancestor that clips (``overflow: hidden`` or ``clip``; an
  SVG clips its own contents) or half scrolled out of one that scrolls sideways (a row of
  chips or tabs), text shortened by ``text-overflow: ellipsis``, text that runs past the
  left or right edge of the window, and a select box's choice wider than the box (inputs one
  types into are not looked at). Text half scrolled out of a box that scrolls up and down
  is not cut, and text that is hidden whole (scrolled out of sight, zero size, ``display:
  none``, ``visibility: hidden``, ``opacity: 0``, clipped away entirely) is not looked at.

Layers drawn above the page on purpose (Plotly's hover labels and mode bar, tooltips,
popovers) are left out; ``ignore`` adds CSS selectors of more such layers.
``assert_clean_layout(page)`` fails with one line per problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TOLERANCE_PX = 2.0
# Layers that sit over the page by design, not text that collides with it.
LAYERED = (
    ".hoverlayer",
    ".modebar-container",
    '[role="tooltip"]',
    '[data-baseweb="tooltip"]',
    '[data-baseweb="popover"]',
)

_COLLECT = Path(__file__).with_name("layout_checks.js").read_text()


@dataclass(frozen=True)
class Overlap:
    first: str
    first_where: str  # the element: tag, class or data-testid, up to three levels
    first_figure: str | None  # "figure N (title)" for text in a Plotly figure
    second: str
    second_where: str
    second_figure: str | None
    depth: float  # px: how far the boxes reach into each other along the axis where they overlap least

    @property
    def inside_figure(self) -> bool:
        """Both texts belong to one Plotly figure: the figure's own layout, not the page's."""
        return self.first_figure is not None and self.first_figure == self.second_figure

    def __str__(self) -> str:
        return (
            f"overlap by {self.depth:.1f} px: {_short(self.first)!r} ({_place(self.first_where, self.first_figure)}) "
            f"and {_short(self.second)!r} ({_place(self.second_where, self.second_figure)})"
        )


@dataclass(frozen=True)
class Cut:
    text: str
    where: str
    why: str
    figure: str | None  # the Plotly figure whose own box cuts the text, if that is what cuts it

    @property
    def inside_figure(self) -> bool:
        return self.figure is not None

    def __str__(self) -> str:
        return f"cut: {_short(self.text)!r} ({_place(self.where, self.figure)}): {self.why}"


@dataclass(frozen=True)
class LayoutReport:
    texts: int  # how many pieces of visible text were looked at
    overlaps: list[Overlap]
    cuts: list[Cut]

    @property
    def problems(self) -> list[str]:
        return [str(problem) for problem in [*self.overlaps, *self.cuts]]

    @property
    def page_problems(self) -> list[str]:
        """Problems of the page's layout: all but those within one figure."""
        return [str(problem) for problem in [*self.overlaps, *self.cuts] if not problem.inside_figure]

    @property
    def figure_problems(self) -> list[str]:
        """Problems within one Plotly figure (its ticks, colour bars, titles, annotations)."""
        return [str(problem) for problem in [*self.overlaps, *self.cuts] if problem.inside_figure]


def _place(where: str, figure: str | None) -> str:
    return f"{figure}: {where}" if figure else where


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def layout_problems(page, tolerance_px: float = DEFAULT_TOLERANCE_PX, ignore: tuple[str, ...] = ()) -> LayoutReport:
    """Overlapping and cut text in ``page`` as it is drawn now (see the module docstring)."""
    found = page.evaluate(_COLLECT, [tolerance_px, [*LAYERED, *ignore]])
    cuts = list(dict.fromkeys(Cut(**cut) for cut in found["cuts"]))  # one per text, not per line
    deepest: dict[Overlap, Overlap] = {}
    for overlap in (Overlap(**found_overlap) for found_overlap in found["overlaps"]):
        pair = dataclasses.replace(overlap, depth=0.0)
        if pair not in deepest or overlap.depth > deepest[pair].depth:  # one per pair of texts, not per line
            deepest[pair] = overlap
    return LayoutReport(found["texts"], list(deepest.values()), cuts)


def assert_readable(layouts: Mapping[str, LayoutReport]) -> None:
    """Fail on any problem in ``layouts`` (reports by where they were taken, e.g. "Overview at
    1100 px"), the page's own layout first, then the figures' (titles, legends, colour bars,
    ticks, annotations: ``deepvit_diag/figures/`` keeps them apart)."""
    page = [f"{where}: {problem}" for where, layout in layouts.items() for problem in layout.page_problems]
    assert not page, f"{len(page)} layout problems:\n" + "\n".join(page)
    inside = [f"{where}: {problem}" for where, layout in layouts.items() for problem in layout.figure_problems]
    assert not inside, f"{len(inside)} layout problems inside figures:\n" + "\n".join(inside)


def assert_clean_layout(page, context: str = "", **options) -> LayoutReport:
    """Fail with every overlap and cut in ``page``; return the report when there is none."""
    report = layout_problems(page, **options)
    assert report.texts > 0, f"{context}: no visible text found"
    assert not report.problems, f"{context}: {len(report.problems)} layout problems:\n" + "\n".join(report.problems)
    return report
