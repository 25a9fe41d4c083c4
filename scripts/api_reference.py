"""Write docs/api.md, the API reference, from the docstrings of everything in
``deepvit_diag.__all__`` (and the figure functions of ``deepvit_diag.figures``).

    python scripts/api_reference.py          # rewrite docs/api.md
    python scripts/api_reference.py --check  # exit 1 if docs/api.md is out of date

tests/test_api_reference.py runs the check, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import deepvit_diag

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# Sections of the page, in order; every name of __all__ is in exactly one.
SECTIONS = {
    "Analysing": ["analyze", "compare", "sweep", "Settings", "CollapseMonitor", "DiagError"],
    "Results": [
        "AnalysisResult",
        "ComparisonResult",
        "SweepResult",
        "load_saved",
        "Accuracy",
        "SimilarBlocks",
        "HeadMixing",
    ],
    "Ablations": ["ablate", "AblationResult"],
    "Figures": ["figures"],
    "Attention maps": ["extract_attention", "AttentionCapture", "AttentionRecorder"],
    "Metrics": [
        "cross_layer_similarity",
        "neighbour_similarity",
        "similarity_ratio",
        "similar_blocks",
        "cross_head_similarity",
        "mean_off_diagonal",
        "attention_entropy",
        "mean_attention_distance",
        "token_similarity",
        "rank_collapse",
        "linear_cka",
        "MinibatchCKA",
        "head_mixing_matrices",
        "topk_correct",
    ],
    "Models and weights": [
        "load_model",
        "convert",
        "save_native",
        "build_model",
        "DeepVisionTransformer",
        "ReAttention",
        "models",
    ],
}
INTRO = """# API reference

Generated from the docstrings by `scripts/api_reference.py` (do not edit by hand; the test
suite checks that this page matches the code). `import deepvit_diag as dd`; every name below
is `dd.<name>`. Shapes: L blocks, B images of a batch, N images, H heads, T tokens, D width.
Block indices are 0-based in arrays, `summary()` and `to_frame()` (column `block_0based`);
figures and tables number blocks from 1.
"""


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else ""


def public_members(cls: type) -> list[tuple[str, object]]:
    """The public methods and properties a class defines itself (not inherited)."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            members.append((name, value))
    return members


def _entry(name: str, obj: object, level: str = "###") -> list[str]:
    if isinstance(obj, property):
        return [f"{level} `{name}` (property)", "", _doc(obj), ""]
    if inspect.ismodule(obj):
        lines = [f"{level} `{name}` (module)", "", _doc(obj), ""]
        for member in getattr(obj, "__all__", []):
            if member in deepvit_diag.__all__ and getattr(deepvit_diag, member) is getattr(obj, member):
                continue  # documented under its own name
            lines += _entry(f"{name}.{member}", getattr(obj, member), "####")
        return lines
    kind = "class " if inspect.isclass(obj) else ""
    lines = [f"{level} {kind}`{name}{_signature(obj)}`", "", _doc(obj), ""]
    if inspect.isclass(obj):
        for member, value in public_members(obj):
            lines += _entry(f"{name}.{member}", value, "####")
    return lines


def render() -> str:
    lines = [INTRO]
    for section, names in SECTIONS.items():
        lines += [f"## {section}", ""]
        for name in names:
            lines += _entry(name, getattr(deepvit_diag, name))
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            sys.stderr.write("docs/api.md is out of date: run python scripts/api_reference.py\n")
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
