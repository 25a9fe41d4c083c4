"""Renaming state-dict keys by patterns: the one mechanism of every layout conversion table."""

from __future__ import annotations

import re

import torch

Tensors = dict[str, torch.Tensor]
Renames = list[tuple[re.Pattern[str], str]]


def renames(table: list[tuple[str, str]]) -> Renames:
    """(regular expression, replacement) pairs, compiled; the first matching pattern wins."""
    return [(re.compile(pattern), replacement) for pattern, replacement in table]


def renamed(sd: Tensors, table: Renames) -> Tensors:
    """``sd`` with each key renamed by the first pattern of ``table`` that matches it (unknown keys stay:
    the strict fit names them)."""
    out: Tensors = {}
    for key, tensor in sd.items():
        for pattern, replacement in table:
            new_key, found = pattern.subn(replacement, key)
            if found:
                break
        else:
            new_key = key
        out[new_key] = tensor
    return out
