"""The registry of figure functions: ``@figure`` marks a function that draws a figure of the
catalogue (``catalogue.Figure`` holds the function itself, so a renamed or removed figure
fails when the catalogue is imported, not when a report is drawn)."""

from __future__ import annotations

from collections.abc import Callable

FIGURE_FUNCTIONS: dict[str, Callable] = {}


def figure(function: Callable) -> Callable:
    """Register ``function`` as a figure function (by its name, which must be unique)."""
    if FIGURE_FUNCTIONS.setdefault(function.__name__, function) is not function:
        raise ValueError(f"two figure functions are named {function.__name__}")
    return function
