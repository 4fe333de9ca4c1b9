"""The layout's promises: dependencies point one way (scripts -> tuning -> pipeline ->
models), inside pipeline/ data never reaches into training, only the benchmarks and
`cifar-bench` import the benchmarks, and no module takes part in an import cycle; checked
on every import statement, relative and local ones included."""

import ast
import builtins
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("models", "pipeline", "tuning", "scripts")
# What each part may import from the project (its own modules always).
ALLOWED = {
    "models": (),
    "pipeline": (),  # the package's own docstring
    "pipeline.config": ("pipeline.errors",),
    "pipeline.run_length": (),
    "pipeline.compute": ("pipeline.config", "pipeline.errors", "pipeline.run_length"),
    "pipeline.errors": (),
    "pipeline.runtime": ("pipeline.config", "pipeline.errors"),
    "pipeline.files": ("pipeline.errors",),
    "pipeline.experiments": ("pipeline.config", "pipeline.errors"),
    "pipeline.data": (
        "pipeline.config",
        "pipeline.errors",
        "pipeline.files",
        "pipeline.run_length",
    ),
    "pipeline.training": (
        "models",
        "pipeline.compute",
        "pipeline.config",
        "pipeline.errors",
        "pipeline.files",
        "pipeline.runtime",
        "pipeline.run_length",
        "pipeline.data",
    ),
    "pipeline.notebook_api": (
        "models",
        "pipeline.config",
        "pipeline.data",
        "pipeline.experiments",
        "pipeline.errors",
    ),
    "pipeline.inference": (
        "models",
        "pipeline.config",
        "pipeline.data",
        "pipeline.errors",
        "pipeline.files",
        "pipeline.runtime",
        "pipeline.run_length",
        "pipeline.training",
    ),
    "pipeline.bench": ("models", "pipeline"),
    "tuning": ("pipeline", "models"),
    "scripts": ("pipeline", "models", "tuning"),
}


# Packages only some parts may import (docs/layout.md): the benchmarks are for
# `cifar-bench` alone, and production code never depends on them.
PRIVATE = {"pipeline.bench": ("pipeline.bench", "scripts.bench")}


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def _absolute(node: ast.ImportFrom, path: Path, root: Path) -> str:
    """The module an ImportFrom names, relative ones (`from . import x`) resolved."""
    if not node.level:
        return node.module
    package = list(path.relative_to(root).parent.parts)
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _project_imports(path: Path, root: Path = REPO) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path, root)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def _part(module: str) -> str:
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v))
def test_imports_point_one_way(module, path):
    part = _part(module)
    for name in _project_imports(path):
        if name == "pipeline":
            continue  # `from pipeline import x` is judged by its `pipeline.x` entry
        assert _within(name, (part, *ALLOWED[part])), (
            f"{module} imports {name}, outside what {part} may use: {ALLOWED[part]}"
        )


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v))
def test_private_packages_are_imported_only_where_the_readme_says(module, path):
    for private, users in PRIVATE.items():
        if _within(module, users):
            continue
        reached = [n for n in _project_imports(path) if _within(n, (private,))]
        assert not reached, f"{module} imports {reached}; only {users} may import {private}"


def test_relative_imports_are_seen(tmp_path):
    package = tmp_path / "pipeline" / "bench"
    package.mkdir(parents=True)
    module = package / "x.py"
    module.write_text("def f():\n    from . import torch_twin\n    from ..training import loop\n")
    found = _project_imports(module, root=tmp_path)
    assert {"pipeline.bench.torch_twin", "pipeline.training.loop"} <= found


def _module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it, local imports too)."""
    modules = dict(_modules())
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _project_imports(path):
            while name and name not in modules:  # `from pkg import function` -> pkg
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_import_cycle_between_modules():
    graph, cycles = _module_graph(), []

    def visit(module, trail):
        for target in graph[module]:
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in done:
                visit(target, [*trail, target])
        done.add(module)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_between_top_level_packages():
    edges = {p: set() for p in PACKAGES}
    for module, path in _modules():
        for name in _project_imports(path):
            if name.split(".")[0] != module.split(".")[0]:
                edges[module.split(".")[0]].add(name.split(".")[0])

    def reaches(start, goal, seen=()):
        return any(
            n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in edges[start]
        )

    cycles = [p for p in PACKAGES if reaches(p, p)]
    assert not cycles, f"import cycle through {cycles}: {edges}"


def test_no_module_shadows_a_builtin_or_stdlib_name():
    import sys

    taken = set(dir(builtins)) | set(sys.stdlib_module_names)
    shadows = [m for m, _ in _modules() if m.rsplit(".", 1)[-1] in taken]
    assert not shadows, shadows
