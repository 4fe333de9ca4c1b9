"""The layout's promises: dependencies point one way (scripts -> tuning -> pipeline ->
models), inside pipeline/ data never reaches into training and production never into the
benchmarks; checked on every import statement, local ones included."""

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
    "pipeline.errors": (),
    "pipeline.experiments": ("pipeline.config", "pipeline.errors"),
    "pipeline.data": ("pipeline.config", "pipeline.errors", "pipeline.run_length"),
    "pipeline.training": (
        "models",
        "pipeline.config",
        "pipeline.errors",
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
        "pipeline.run_length",
        "pipeline.training",
    ),
    "pipeline.bench": ("models", "pipeline"),
    "tuning": ("pipeline", "models"),
    "scripts": ("pipeline", "models", "tuning"),
}


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def _project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
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
