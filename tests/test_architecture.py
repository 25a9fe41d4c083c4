"""The layering of the package (docs/layout.md), read from the source with ``ast``:

* no module imports another module's private (``_``-prefixed) name;
* no import cycle between modules, counting imports inside functions too (imports under
  ``if TYPE_CHECKING:`` never run and are left out);
* the library never prints: only the renderers (``cli.py``, ``summary.py``) call ``print``
  or a rich ``Console``'s ``print``;
* ``cli.py`` and ``app/`` never import the metrics or the tally (they render results).

Each rule is a function over ``{module name: source}``, so the tests at the end feed it a
deliberate violation and check that it is caught.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deepvit_diag", "app")
# Modules that render for a person: the CLI and the text it prints.
RENDERERS = {"deepvit_diag.cli", "deepvit_diag.summary"}
# Library internals the CLI and the app must not reach into.
INTERNALS = ("deepvit_diag.metrics", "deepvit_diag.tally")


def package_sources() -> dict[str, str]:
    """``{dotted module name: source}`` of every module of the package and the app."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


@cache
def parsed(source: str) -> ast.Module:
    return ast.parse(source)


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in sources)


def _runtime_nodes(tree: ast.AST):
    """Every node that runs: the bodies of ``if TYPE_CHECKING:`` are left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(name: str, source: str, sources: dict[str, str]) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every import that runs in module ``name``,
    with relative imports resolved; a name that is itself a module counts as that module."""
    package = name if _is_package(name, sources) else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(parsed(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.append((submodule, None) if submodule in sources else (module, alias.name))
    return found


def private_imports(sources: dict[str, str]) -> list[str]:
    """``importer: module.name`` for every private name imported from another project module."""
    found = []
    for name, source in sources.items():
        for module, imported in imports(name, source, sources):
            if module in sources and module != name and imported and imported.startswith("_"):
                if not imported.startswith("__"):  # __version__, __all__: public by convention
                    found.append(f"{name}: {module}.{imported}")
    return found


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """The strongly connected groups of two or more modules in the import graph (Tarjan)."""
    graph = {
        name: {module for module, _ in imports(name, source, sources) if module in sources and module != name}
        for name, source in sources.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def printing_calls(sources: dict[str, str]) -> list[str]:
    """``module:line`` of every ``print(...)`` or ``<something>.print(...)`` outside the renderers."""
    found = []
    for name, source in sources.items():
        if name in RENDERERS or not name.startswith("deepvit_diag"):
            continue
        for node in ast.walk(parsed(source)):
            if isinstance(node, ast.Call):
                function = node.func
                if (isinstance(function, ast.Name) and function.id == "print") or (
                    isinstance(function, ast.Attribute) and function.attr == "print"
                ):
                    found.append(f"{name}:{node.lineno}")
    return found


def internal_imports(sources: dict[str, str]) -> list[str]:
    """``importer: module`` for every import of the metrics or the tally by the CLI or the app."""
    found = []
    for name, source in sources.items():
        if name == "deepvit_diag.cli" or name.split(".")[0] == "app":
            for module, imported in imports(name, source, sources):
                target = module if imported is None else f"{module}.{imported}"
                if target.startswith(INTERNALS) or (module == "deepvit_diag" and imported in ("metrics", "tally")):
                    found.append(f"{name}: {target}")
    return found


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return package_sources()


def test_no_module_imports_another_modules_private_names(sources):
    assert private_imports(sources) == []


def test_no_import_cycles(sources):
    assert import_cycles(sources) == []


def test_the_library_never_prints(sources):
    assert printing_calls(sources) == []


def test_cli_and_app_do_not_import_metrics_internals(sources):
    assert internal_imports(sources) == []


def test_the_layout_docs_name_every_module(sources):
    """docs/layout.md and the README's layout paragraph name every module of the package and
    the app by its file or folder name, so neither falls behind the code."""
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("## Layout") :]
    for name in sources:
        last = name.rpartition(".")[2]
        if name in PACKAGES or last == "views" or name.startswith("app.views."):
            continue  # the packages themselves, and the app's views as one folder
        assert f"`{last}" in paragraph, f"README layout paragraph lacks {name}"
        assert f"{last}" in layout, f"docs/layout.md lacks {name}"


# ----------------------------------------------------------------------------- deliberate violations


def with_module(sources: dict[str, str], name: str, source: str) -> dict[str, str]:
    return {**sources, name: source}


def test_a_private_import_is_caught(sources):
    bad = with_module(sources, "deepvit_diag.intruder", "from .results import _arrays_equal\n")
    assert private_imports(bad) == ["deepvit_diag.intruder: deepvit_diag.results._arrays_equal"]
    inside = with_module(sources, "deepvit_diag.intruder", "def f():\n    from deepvit_diag.formats import _builtin\n")
    assert private_imports(inside) == ["deepvit_diag.intruder: deepvit_diag.formats._builtin"]


def test_an_import_cycle_is_caught_at_module_and_function_level(sources):
    module_level = with_module(sources, "deepvit_diag.errors", "from .results import AnalysisResult\n")
    assert any({"deepvit_diag.errors", "deepvit_diag.results"} <= set(cycle) for cycle in import_cycles(module_level))
    function_level = with_module(sources, "deepvit_diag.formats", "def f():\n    from . import sweeps\n")
    assert any({"deepvit_diag.formats", "deepvit_diag.sweeps"} <= set(cycle) for cycle in import_cycles(function_level))
    type_only = with_module(
        sources,
        "deepvit_diag.formats",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import sweeps\n",
    )
    assert import_cycles(type_only) == []


def test_printing_in_the_library_is_caught(sources):
    bad = with_module(sources, "deepvit_diag.intruder", "from rich.console import Console\nConsole().print('hi')\n")
    assert printing_calls(bad) == ["deepvit_diag.intruder:2"]
    assert printing_calls(with_module(sources, "deepvit_diag.intruder", "print('hi')\n")) == ["deepvit_diag.intruder:1"]


def test_metrics_internals_in_the_app_are_caught(sources):
    bad = with_module(sources, "app.views.intruder", "from deepvit_diag.metrics.similarity import similarity_ratio\n")
    assert internal_imports(bad) == ["app.views.intruder: deepvit_diag.metrics.similarity.similarity_ratio"]
    package = with_module(sources, "deepvit_diag.cli", "def f():\n    from . import tally\n")
    assert internal_imports(package) == ["deepvit_diag.cli: deepvit_diag.tally"]
