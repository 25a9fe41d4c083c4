"""What a monitor file's measurement must hold before it is drawn: every field of the type and in the range
``CollapseMonitor`` writes, curves as long as the model is deep, one setting for the whole file.

Each refusal is one line naming the file, the line and the field.
"""

from __future__ import annotations

from typing import Any

from .errors import DiagError
from .jsonfiles import KINDS, field

MONITOR_VERSIONS = (1,)
# Each curve's length for a model of L blocks, and the range of its values (None: unbounded).
CURVE_LENGTHS = {"ratio": 0, "adjacent_similarity": -1, "entropy": 0}
CURVE_RANGES = {"ratio": (0.0, 1.0), "adjacent_similarity": (-1.0, 1.0), "entropy": (0.0, None)}


def check_monitor_record(record: dict[str, Any], source: str) -> None:
    """Refuse (``DiagError``) a measurement whose fields are not what a monitor writes."""
    version = record.get("version")
    if version not in MONITOR_VERSIONS:
        raise DiagError(f"{source}: format version {version!r} is not one this deepvit-diag reads (1)")
    field(record, "label", "text", source)
    field(record, "group", "text", source)
    field(record, "step", "count", source, optional=True)
    field(record, "images", "object", source)
    field(record, "settings", "object", source)
    summary = field(record, "summary", "object", source)
    where = f"{source}: summary"
    blocks = field(summary, "num_blocks", "positive", where)
    field(summary, "num_images", "positive", where)
    similar = field(summary, "similar_blocks", "count", where)
    if similar > blocks:
        raise DiagError(f"{where}: field 'similar_blocks' is {similar}, more than the {blocks} blocks")
    start = field(summary, "collapse_start", "count", where, optional=True)
    if start is not None and start >= blocks:
        raise DiagError(f"{where}: field 'collapse_start' is {start}, but blocks are numbered 0 to {blocks - 1}")
    for name in ("accuracy_top1", "accuracy_top5"):
        field(summary, name, "share", where, optional=True)
    curves = field(record, "curves", "object", source)
    for name, offset in CURVE_LENGTHS.items():
        values = field(curves, name, "list", f"{source}: curves")
        if len(values) != blocks + offset:
            raise DiagError(
                f"{source}: curve {name!r} has {len(values)} values, but a {blocks}-block model has {blocks + offset}"
            )
        low, high = CURVE_RANGES[name]
        number = KINDS["number"][0]
        for value in values:
            if value is not None and (
                not number(value) or (low is not None and value < low) or (high is not None and value > high)
            ):
                raise DiagError(f"{source}: curve {name!r} holds {value!r}, outside what the metric can be")


def check_same_settings(records: list[dict[str, Any]], path: object) -> None:
    """Every measurement of one monitor file was taken with the same settings and images."""
    first = records[0]
    for number, record in enumerate(records[1:], start=2):
        for key in ("settings", "images"):
            if record[key] != first[key]:
                raise DiagError(
                    f"{path}: measurement {number} was taken with other {key} than the first; a monitor file "
                    "holds one series"
                )
