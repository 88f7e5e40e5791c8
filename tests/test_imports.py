"""Import directions: fsm/ stays pure, each third-party library lives behind one module,
and fsm's public names are all exported."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fsm

ROOT = Path(__file__).resolve().parents[1]
FSM_FILES = sorted((ROOT / "fsm").glob("*.py"))
PROCMOND_FILES = sorted((ROOT / "procmond").rglob("*.py"))

#: What fsm/ may import: the standard library, transitions, and itself.
FSM_ALLOWED = frozenset(sys.stdlib_module_names) | {"transitions", "fsm"}

#: Standard-library modules that would bring I/O, clocks, concurrency or
#: randomness into fsm/ (STYLE: "fsm/ does no I/O ... reads no clock").
FSM_FORBIDDEN_STDLIB = frozenset(
    {
        "asyncio",
        "concurrent",
        "datetime",
        "io",
        "logging",
        "multiprocessing",
        "os",
        "pathlib",
        "random",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "subprocess",
        "threading",
        "time",
    }
)

#: Each third-party library and the only procmond modules allowed to import it.
OWNERS: dict[str, frozenset[str]] = {
    "redis": frozenset(
        {
            "procmond/bus/redis.py",
            "procmond/bus/redis_commands.py",
            "procmond/bus/redis_pubsub.py",
            "procmond/embedded.py",
        }
    ),
    "psutil": frozenset(
        {
            "procmond/collect/collector.py",
            "procmond/collect/details.py",
            "procmond/collect/scan.py",
        }
    ),
    "pydantic": frozenset(
        {
            "procmond/agent/schemas.py",
            "procmond/schemas/config.py",
            "procmond/schemas/envelopes.py",
            "procmond/schemas/messages.py",
            "procmond/schemas/payloads.py",
            "procmond/schemas/wire.py",
        }
    ),
    "click": frozenset(
        {
            "procmond/cli/__init__.py",
            "procmond/cli/acl.py",
            "procmond/cli/control.py",
            "procmond/cli/daemon.py",
            "procmond/cli/options.py",
            "procmond/cli/tools.py",
        }
    ),
    "graphviz": frozenset({"procmond/diagram.py"}),
    "prometheus_client": frozenset(
        {
            "procmond/metrics/agent.py",
            "procmond/metrics/daemon.py",
            "procmond/metrics/endpoint.py",
            "procmond/metrics/families.py",
        }
    ),
}


def import_roots(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_import_roots_sees_nested_and_from_imports(tmp_path: Path) -> None:
    """The scanner finds plain, dotted, from- and function-local imports, skipping relative ones."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os.path\nfrom redis.asyncio import Redis\nfrom . import x\n"
        "def f():\n    import psutil\n"
    )
    assert [root for _, root in import_roots(sample)] == ["os", "redis", "psutil"]


@pytest.mark.parametrize("path", FSM_FILES, ids=rel)
def test_fsm_imports_only_stdlib_and_transitions(path: Path) -> None:
    """Each fsm/ module imports only the standard library, transitions and fsm itself."""
    bad = [(line, root) for line, root in import_roots(path) if root not in FSM_ALLOWED]
    assert bad == [], f"{rel(path)} imports outside stdlib+transitions: {bad}"


@pytest.mark.parametrize("path", FSM_FILES, ids=rel)
def test_fsm_imports_no_io_clock_or_concurrency(path: Path) -> None:
    """No fsm/ module imports a standard-library module that does I/O, reads clocks or spawns."""
    bad = [(line, root) for line, root in import_roots(path) if root in FSM_FORBIDDEN_STDLIB]
    assert bad == [], f"{rel(path)} imports I/O, clock or concurrency modules: {bad}"


def test_fsm_files_were_found() -> None:
    """The fsm scan covers the lifecycle and the renderer (the glob is not silently empty)."""
    assert {"fsm/lifecycle.py", "fsm/machine.py", "fsm/render.py"} <= {rel(p) for p in FSM_FILES}


def test_each_third_party_library_has_one_owner() -> None:
    """Each third-party library (redis, psutil, pydantic, ...) is imported by its owners only."""
    assert PROCMOND_FILES, "no procmond modules found"
    strays = [
        f"{rel(path)}:{line} imports {root} (allowed only in {sorted(OWNERS[root])})"
        for path in PROCMOND_FILES
        for line, root in import_roots(path)
        if root in OWNERS and rel(path) not in OWNERS[root]
    ]
    assert strays == []


def public_names(path: Path) -> set[str]:
    """Public names a module defines at top level (classes, functions, assignments)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if not name.startswith("_")}


@pytest.mark.parametrize("module", ["vocabulary", "lifecycle", "machine", "render"])
def test_fsm_all_is_complete(module: str) -> None:
    """Every public name defined in the fsm modules is in fsm.__all__."""
    missing = public_names(ROOT / "fsm" / f"{module}.py") - set(fsm.__all__)
    assert missing == set()


def test_fsm_all_resolves_and_is_sorted() -> None:
    """fsm.__all__ names real attributes, once each, in isort order (constants, classes, rest)."""
    assert all(hasattr(fsm, name) for name in fsm.__all__)
    assert len(set(fsm.__all__)) == len(fsm.__all__)

    def isort_key(name: str) -> tuple[int, str]:
        kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
        return kind, name

    assert fsm.__all__ == sorted(fsm.__all__, key=isort_key)
