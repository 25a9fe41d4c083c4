"""Text from files, file names and options shown as data, one helper per medium.

A label, a file name, a model card or a monitor line may hold markup (``<a href=...>``,
``[text](url)``, ``[/bold]``) or terminal escape codes; shown raw it would become a live link,
an image request, a Rich ``MarkupError`` or a rewritten terminal. Every display point passes such
text through the helper of its medium:

====================  ==========================================================================
medium                helper
====================  ==========================================================================
HTML (report pages)   ``html_text``: ``& < > " '`` as entities
Plotly label markup   ``plotly_label``: ``& < >`` as entities (Plotly decodes them, builds no tags)
Markdown (the app)    ``markdown_text``: every mark Markdown, autolinks or Streamlit read is
                      backslash-escaped, so no link, image, emphasis, directive or math is read;
                      line breaks as spaces
Rich markup           ``rich_text``: ``[`` escaped, control characters as below
terminal              ``terminal_text``: control characters (C0, DEL, C1) as ``\\xNN``, names that
                      were not UTF-8 (surrogate escapes) with the replacement character;
                      ``TerminalConsole`` does it to everything it prints
====================  ==========================================================================
"""

from __future__ import annotations

import html
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# What Markdown, GitHub's autolinks and Streamlit's directives read within a line: emphasis, code, links
# and images (brackets), HTML, math, strikethrough, emoji and colour directives (":red[...]", ":smile:"),
# "http://", "www." and e-mail addresses. Parentheses, a colon before a space or a full stop elsewhere
# read as text, so that messages stay as written.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>~$@]|:(?!\s|$)|(?<=www)\.)", re.IGNORECASE)
REPLACEMENT = "\ufffd"


def terminal_text(value: Any) -> str:
    """``value`` as text that cannot steer a terminal: control characters visible as ``\\xNN`` (a
    newline as ``\\n``), undecodable bytes of a file name as the replacement character."""
    text = _SURROGATE.sub(REPLACEMENT, str(value))
    return _CONTROL.sub(_visible_control, text)


def _visible_control(found: re.Match) -> str:
    char = found.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def rich_text(value: Any) -> str:
    """``value`` for a string that Rich reads as markup: shown as written, never as a style or a link."""
    from rich.markup import escape

    return escape(terminal_text(value))


def html_text(value: Any) -> str:
    """``value`` as HTML text or attribute content."""
    return html.escape(_SURROGATE.sub(REPLACEMENT, str(value)), quote=True)


def plotly_label(value: Any) -> str:
    """``value`` in a Plotly title, legend, annotation or hover label: Plotly's label markup (``<a>``,
    ``<b>``, ``<br>``, ...) is not read from it; Plotly shows its entities as the characters."""
    return html.escape(_SURROGATE.sub(REPLACEMENT, str(value)), quote=False)


def markdown_text(value: Any) -> str:
    """``value`` in Streamlit Markdown (captions, info boxes, errors) as plain text."""
    text = _CONTROL.sub(" ", _SURROGATE.sub(REPLACEMENT, str(value)))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


class _Sanitising:
    """Mixin for ``rich.console.Console``: the text of every rendered segment through ``terminal_text``
    (Rich's own styles become escape codes only after rendering, so they are kept)."""

    def render(self, renderable, options=None):  # noqa: ANN001, ANN201  (Rich's signature)
        from rich.segment import Segment

        for segment in super().render(renderable, options):
            if segment.control or not _CONTROL.search(segment.text) and not _SURROGATE.search(segment.text):
                yield segment
            else:  # a line break Rich itself renders stays one
                lines = segment.text.split("\n")
                yield Segment("\n".join(terminal_text(line) for line in lines), segment.style)


def terminal_console(**options: Any):  # noqa: ANN201  (rich is imported late: the CLI starts without it)
    """A ``rich.console.Console`` whose output carries no control character from the text it prints."""
    from rich.console import Console

    class TerminalConsole(_Sanitising, Console):
        pass

    return TerminalConsole(**options)
