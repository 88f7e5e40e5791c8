"""The operator tools import light: no daemon, no storage, no collection, no psutil.

``procmond ctl`` is what an operator runs on a loaded host; importing the
actor, the write-ahead log or psutil would cost start-up time and memory for
nothing. Each check imports one tool in a fresh interpreter (this process has
long since imported everything) and reads back ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Packages none of the tools may load, nor anything under them.
HEAVY_PACKAGES = ("procmond.daemon", "procmond.store", "procmond.collect", "psutil")
#: Named for the error message: the modules most likely to sneak in.
HEAVY_MODULES = ("psutil", "procmond.daemon.actor", "procmond.store.wal")


def imported_by(module: str) -> list[str]:
    """Every module in ``sys.modules`` after ``import <module>`` in a fresh interpreter."""
    code = f"import {module}, sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return modules


def heavy(modules: list[str]) -> list[str]:
    """The loaded modules that are, or live under, a heavy package."""
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in HEAVY_PACKAGES)]


@pytest.mark.parametrize("module", ["procmond.ctl", "procmond.client", "procmond.watch"])
def test_an_operator_tool_imports_no_daemon_storage_collection_or_psutil(module: str) -> None:
    """Importing the tool loads nothing of procmond.daemon, .store, .collect, nor psutil."""
    modules = imported_by(module)
    assert module in modules
    assert heavy(modules) == []
    assert not set(HEAVY_MODULES) & set(modules)


def test_the_tools_take_topics_and_enums_from_the_light_modules() -> None:
    """ctl's topic names and protocol enums come from procmond.topics and procmond.protocol."""
    modules = imported_by("procmond.ctl")
    assert {"procmond.topics", "procmond.protocol"} <= set(modules)


def test_the_check_sees_a_heavy_import() -> None:
    """The check itself works: a heavy module and its submodules are reported, lookalikes not."""
    assert "procmond.daemon.actor" in heavy(imported_by("procmond.daemon.actor"))
    assert heavy(["procmond.topics", "psutil._common", "procmond.storefront"]) == ["psutil._common"]
