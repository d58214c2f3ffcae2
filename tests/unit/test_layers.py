"""The package's shape: no import circle, arrows only point down the layers, a core without drivers.

The import graph is read from the source with ``ast``: module-level, function-level and
``TYPE_CHECKING`` imports, and ``importlib.import_module("literal")`` calls, all count.
docs/architecture.md draws the layers checked here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "dxf_celery"
ROOT = "dxf_celery"
MAX_MODULE_LINES = 500

#: Layer of each top-level part of the package (0 = bottom): an import may only go to the
#: same layer or a lower one.
LAYERS: dict[str, int] = {
    "proto": 0,
    "transitions": 0,
    "errors": 0,
    "context": 0,
    "retry": 1,
    "storage": 2,
    "taskexecutor": 2,
    "scheduler": 3,
    "handle": 4,
    "client": 4,
    "testing": 4,
    "settings": 5,
    "worker": 6,
    "metrics": 6,
    "app": 7,
    "cli": 8,
    "contrib": 8,
    "examples": 8,
    "dashboard": 8,
    "demo_app": 8,
    "demo": 9,
}
#: The DXF core: runs without Celery, so it never imports Celery, kombu, or the layers that do.
CORE = (
    "proto",
    "transitions",
    "errors",
    "context",
    "retry",
    "storage",
    "taskexecutor",
    "scheduler",
    "handle",
    "client",
    "testing",
)
CELERY_SIDE = ("app", "worker", "cli", "contrib", "settings")
#: Parts that must import without a database driver (``import dxf_celery`` to read a state).
NO_SQLALCHEMY = ("proto", "transitions", "errors", "context", "retry", "taskexecutor")


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _part(module: str) -> str:
    """``dxf_celery.taskexecutor.manager`` -> ``taskexecutor``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imported_names(module: str, tree: ast.AST) -> list[str]:
    """Every absolute module name ``module`` imports, wherever the import statement is."""
    is_package = MODULES[module].name == "__init__.py"
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package.
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.append(sub if sub in MODULES else source)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


@cache
def raw_imports() -> dict[str, set[str]]:
    """Module -> every absolute name it imports (inside the package or not)."""
    return {m: set(_imported_names(m, ast.parse(p.read_text(), str(p)))) for m, p in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The package module an imported name lands in (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, set[str]]:
    """Import edges between the package's modules.

    The implicit import of a module's parent packages is not an edge: it would make every
    package a circle with its own submodules. ``from pkg import name`` (not a module) is.
    """
    edges: dict[str, set[str]] = {}
    for module, names in raw_imports().items():
        targets = {_resolve(n) for n in names if n == ROOT or n.startswith(ROOT + ".")}
        edges[module] = {t for t in targets if t is not None} - {module}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


# ---------------------------------------------------------------------- the checker checks


def test_the_cycle_finder_names_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_every_kind_of_import() -> None:
    source = textwrap.dedent(
        """
        import importlib
        from typing import TYPE_CHECKING

        from dxf_celery.taskexecutor import interrupt, BaseTaskExecutor
        from ..errors import DXFError

        if TYPE_CHECKING:
            from dxf_celery.storage import TaskManager

        def later():
            from dxf_celery.scheduler.manager import Manager
            return importlib.import_module("dxf_celery.app")
        """
    )
    names = set(_imported_names("dxf_celery.worker.tasks", ast.parse(source)))
    assert {
        "dxf_celery.taskexecutor.interrupt",  # a submodule
        "dxf_celery.taskexecutor",  # a name from a package's __init__
        "dxf_celery.errors",  # relative
        "dxf_celery.storage",  # TYPE_CHECKING
        "dxf_celery.scheduler.manager",  # inside a function
        "dxf_celery.app",  # importlib with a literal
    } <= names


# ---------------------------------------------------------------------- the rules


def test_no_import_circle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_part_has_a_layer() -> None:
    parts = {_part(m) for m in MODULES} - {""}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_imports_only_point_down_the_layers() -> None:
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph().items()
        for t in targets
        if _part(m) and _part(t) and LAYERS[_part(t)] > LAYERS[_part(m)]
    )
    assert upward == [], "imports pointing up the layers:\n" + "\n".join(upward)


def test_core_never_imports_celery_or_the_celery_side() -> None:
    bad = []
    for module, names in raw_imports().items():
        if _part(module) not in CORE:
            continue
        for name in names:
            top = name.split(".")[0]
            target = _resolve(name) if top == ROOT else None
            if top in ("celery", "kombu") or (target is not None and _part(target) in CELERY_SIDE):
                bad.append(f"{module} imports {name}")
    assert bad == [], "\n".join(sorted(bad))


def test_driver_free_parts_never_import_storage_or_sqlalchemy() -> None:
    bad = []
    for module, names in raw_imports().items():
        if _part(module) not in NO_SQLALCHEMY:
            continue
        for name in names:
            target = _resolve(name) if name.split(".")[0] == ROOT else None
            if name.split(".")[0] == "sqlalchemy" or (target is not None and _part(target) == "storage"):
                bad.append(f"{module} imports {name}")
    assert bad == [], "\n".join(sorted(bad))


_BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class NoSQLAlchemy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "sqlalchemy" or name.startswith("sqlalchemy."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoSQLAlchemy())
    import dxf_celery
    import dxf_celery.context
    import dxf_celery.errors
    import dxf_celery.proto
    import dxf_celery.retry
    import dxf_celery.taskexecutor

    assert dxf_celery.TaskState.RUNNING.value == "running"
    assert dxf_celery.Context is dxf_celery.context.Context
    assert dxf_celery.TaskFailedError is dxf_celery.errors.TaskFailedError
    assert dxf_celery.BaseTaskExecutor is dxf_celery.taskexecutor.BaseTaskExecutor
    assert "sqlalchemy" not in sys.modules
    try:
        import dxf_celery.storage  # the blocker works: storage does need SQLAlchemy
    except ImportError:
        print("ok")
    """
)


def test_reading_states_and_the_executor_core_needs_no_sqlalchemy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_500_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[module].relative_to(PACKAGE.parent)} has {lines} lines"
