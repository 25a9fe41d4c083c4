"""JSON from files (class maps, config.json, model cards, shard.json, monitor lines, results) read with a
nesting limit and typed field access, every failure one line naming the file and the field.

Python's parser recurses once per level: 100,000 nested brackets end in a ``RecursionError`` deep
inside whatever reads the document next. ``check_depth`` refuses documents nested deeper than
``MAX_DEPTH`` before they are parsed (no file deepvit-diag reads needs more than a few levels).
``field`` reads one entry as the type it must have.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DiagError

MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(text: str) -> int:
    """How deep brackets nest in JSON ``text`` (strings skipped)."""
    bare = np.frombuffer(_STRING.sub("", text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    steps = np.zeros(len(bare), np.int64)
    steps[(bare == ord("[")) | (bare == ord("{"))] = 1
    steps[(bare == ord("]")) | (bare == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def check_depth(text: str | bytes, source: str) -> None:
    """Refuse (``DiagError`` naming ``source``) JSON nested deeper than ``MAX_DEPTH``, before it is parsed."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise DiagError(
            f"{source}: JSON nested {depth} levels deep (at most {MAX_DEPTH}); not a file deepvit-diag reads"
        )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a field may be, and how messages name it.
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "text": (lambda value: isinstance(value, str), "text"),
    "whole": (_whole, "a whole number"),
    "count": (lambda value: _whole(value) and value >= 0, "a whole number >= 0"),
    "positive": (lambda value: _whole(value) and value >= 1, "a whole number >= 1"),
    "number": (_number, "a number"),
    "share": (lambda value: _number(value) and 0 <= value <= 1, "a number from 0 to 1"),
    "object": (lambda value: isinstance(value, dict), "an object"),
    "list": (lambda value: isinstance(value, list), "a list"),
    "flag": (lambda value: isinstance(value, bool), "true or false"),
}


def field(document: dict[str, Any], name: str, kind: str, source: str, *, optional: bool = False) -> Any:
    """``document[name]`` when it is of ``kind`` (a key of ``KINDS``); None when ``optional`` and missing or null."""
    value = document.get(name)
    if value is None and optional:
        return None
    if name not in document:
        raise DiagError(f"{source}: field {name!r} is missing")
    accepts, words = KINDS[kind]
    if not accepts(value):
        raise DiagError(f"{source}: field {name!r} must be {words}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
