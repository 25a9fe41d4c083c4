"""docs/api.md is generated from the docstrings (scripts/api_reference.py) and cannot drift:
it matches the code, names everything in ``deepvit_diag.__all__``, and every public
function, class, method and property it lists has a docstring; every function of
``__all__`` shows an example."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

import deepvit_diag

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api_reference():
    spec = importlib.util.spec_from_file_location("api_reference", ROOT / "scripts" / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_matches_the_docstrings(api_reference):
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == api_reference.render(), "docs/api.md is out of date: run python scripts/api_reference.py"


def test_the_page_lists_every_name_of_all(api_reference):
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    sectioned = [name for names in api_reference.SECTIONS.values() for name in names]
    assert sorted(sectioned) == sorted(deepvit_diag.__all__)
    for name in deepvit_diag.__all__:
        assert f"`{name}" in page, name
    for name in deepvit_diag.figures.__all__:
        assert f"`figures.{name}(" in page, name


def _documented(name: str, obj: object, api_reference) -> list[str]:
    """Names of ``obj`` and its listed members that lack a docstring."""
    missing = [] if inspect.getdoc(obj) else [name]
    if inspect.isclass(obj):
        for member, value in api_reference.public_members(obj):
            missing += _documented(f"{name}.{member}", value, api_reference)
    if inspect.ismodule(obj):
        for member in obj.__all__:
            missing += _documented(f"{name}.{member}", getattr(obj, member), api_reference)
    return missing


def test_every_public_name_and_method_has_a_docstring(api_reference):
    missing = [
        m for name in deepvit_diag.__all__ for m in _documented(name, getattr(deepvit_diag, name), api_reference)
    ]
    assert missing == []


def test_every_function_and_result_method_shows_an_example():
    functions = [getattr(deepvit_diag, name) for name in deepvit_diag.__all__]
    functions = [function for function in functions if inspect.isfunction(function)]
    methods = [
        getattr(cls, name)
        for cls in (deepvit_diag.AnalysisResult, deepvit_diag.ComparisonResult, deepvit_diag.SweepResult)
        for name in ("plot", "to_frame")
    ]
    lacking = [function.__qualname__ for function in functions + methods if "Example:" not in function.__doc__]
    assert lacking == []


def test_internals_are_out_of_all_but_importable_from_their_modules():
    from deepvit_diag.metrics import TOP_K, DeferredChecks, cka_from_hsic  # noqa: F401

    for internal in ("DeferredChecks", "deferred_value_checks", "cka_from_hsic", "reported_ks", "TOP_K", "AXES"):
        assert internal not in deepvit_diag.__all__
