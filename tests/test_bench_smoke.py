"""Every benchmark module imports and has a ``main`` (nothing is run)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# bench/ is not an installed package: import it from the checkout, as `python -m bench` does.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HELPERS = ["bench.common", "bench.wire", "bench.events", "bench.echo_responder"]
RUNNABLE = ["bench.__main__", *(f"bench.{p.stem}" for p in sorted(ROOT.glob("bench/bench_*.py")))]


@pytest.mark.parametrize("name", HELPERS)
def test_helper_module_imports(name: str) -> None:
    """A shared helper module imports cleanly."""
    importlib.import_module(name)


@pytest.mark.parametrize("name", RUNNABLE)
def test_benchmark_module_imports_and_has_main(name: str) -> None:
    """Each benchmark module (and the runner) imports and exposes main()."""
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None))
