"""The layout shows the architecture: no import cycle, no private name imported across
modules, no module past ~400 lines (STYLE: a module past that is split by responsibility)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "procmond").rglob("*.py"), *(ROOT / "fsm").rglob("*.py")])
#: Lines a source module may have (issue 9: "no module over ~400 lines").
MAX_LINES = 410


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in SOURCES}


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of each absolute import of our own packages in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in {"procmond", "fsm"}:
                yield node.lineno, node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in {"procmond", "fsm"}:
                    yield node.lineno, alias.name, []


def target_module(module: str, name: str) -> str:
    """``from module import name`` imports a submodule when ``module.name`` is one."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _line, module, names in imports(path):
            for target in {target_module(module, n) for n in names} or {module}:
                if target in MODULES and target != name:
                    edges[name].add(target)
    return edges


def test_the_sources_were_found() -> None:
    """The scan covers the daemon, the bus, the agent, the tools and fsm."""
    assert {"procmond.daemon.actor", "procmond.bus.redis", "procmond.agent.service"} <= set(MODULES)
    assert {"procmond.ctl", "fsm.lifecycle"} <= set(MODULES)


def test_no_import_cycle() -> None:
    """The module import graph (package __init__ modules included) has no cycle."""
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_name_is_imported_across_modules() -> None:
    """``from x import _name`` between our modules would couple them through internals."""
    strays = [
        f"{module_name(path)}:{line} imports {name} from {module}"
        for path in SOURCES
        for line, module, names in imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert strays == []


def test_no_module_is_over_about_400_lines() -> None:
    """Modules are split by responsibility before they pass ~400 lines."""
    long = {
        name: count
        for name, path in MODULES.items()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
