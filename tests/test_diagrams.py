"""The committed diagrams and generated docs blocks match a fresh render of the lifecycle."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import fsm.lifecycle
from fsm import TRANSITIONS, State, Trigger, mermaid
from procmond.cli import main
from procmond.diagram import (
    DOCS_FILE,
    MERMAID_FILE,
    REGENERATE_HINT,
    SVG_FILE,
    TABLES_FILE,
    render_diagrams,
)

ROOT = Path(__file__).resolve().parents[1]
DIAGRAMS = ROOT / "diagrams"

EDGE = re.compile(r"^\s*(\w+) --> (\w+): (\w+)(?: \[([\w, ]+)\])?$")


def edited_transitions() -> tuple[fsm.vocabulary.TransitionSpec, ...]:
    """The declared table with bus_restored sent back to unregistered instead."""
    return tuple(
        dataclasses.replace(spec, dest=State.UNREGISTERED)
        if spec.trigger is Trigger.BUS_RESTORED
        else spec
        for spec in TRANSITIONS
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A scratch copy of diagrams/ and docs/lifecycle.md; returns its diagrams dir."""
    shutil.copytree(DIAGRAMS, tmp_path / "diagrams")
    (tmp_path / DOCS_FILE).parent.mkdir()
    shutil.copy(ROOT / DOCS_FILE, tmp_path / DOCS_FILE)
    return tmp_path / "diagrams"


def test_check_passes_on_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    """`render_diagrams(check=True)` returns 0 for the committed files and writes nothing."""
    before = {p: p.read_bytes() for p in [*DIAGRAMS.iterdir(), ROOT / DOCS_FILE]}
    assert render_diagrams(DIAGRAMS, check=True) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before


def test_cli_check_passes_on_committed_files() -> None:
    """`procmond diagram --check` exits 0 on the committed files."""
    result = CliRunner().invoke(main, ["diagram", "--check", "--out", str(DIAGRAMS)])
    assert result.exit_code == 0, result.output


def test_edited_transition_fails_the_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changing a transition without regenerating makes the check fail and name each stale file."""
    monkeypatch.setattr(fsm.lifecycle, "TRANSITIONS", edited_transitions())
    assert render_diagrams(DIAGRAMS, check=True) == 1
    err = capsys.readouterr().err
    for name in (MERMAID_FILE, TABLES_FILE):
        assert f"{DIAGRAMS / name}: differs from a fresh render" in err
    assert f"{ROOT / DOCS_FILE}: differs from a fresh render" in err
    assert "+  ready --> unregistered: bus_restored" in err
    assert REGENERATE_HINT in err


def test_edited_machine_config_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine built from a different config than the table shows in the Mermaid check."""
    original = fsm.lifecycle.machine_config

    def edited() -> dict[str, Any]:
        config = original()
        config["transitions"] = [t for t in config["transitions"] if t["trigger"] != "bus_restored"]
        return config

    monkeypatch.setattr(fsm.lifecycle, "machine_config", edited)
    assert render_diagrams(DIAGRAMS, check=True) == 1


def test_regenerate_then_check_round_trips(
    repo_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an edit, writing makes the check pass again and keeps the docs' prose intact."""
    docs = repo_copy.parent / DOCS_FILE
    prose_before = re.sub(r"(?s)BEGIN GENERATED.*?END GENERATED", "", docs.read_text())
    monkeypatch.setattr(fsm.lifecycle, "TRANSITIONS", edited_transitions())
    assert render_diagrams(repo_copy, check=True) == 1
    assert render_diagrams(repo_copy, check=False) == 0
    assert render_diagrams(repo_copy, check=True) == 0
    assert "ready --> unregistered: bus_restored" in (repo_copy / MERMAID_FILE).read_text()
    assert "ready --> unregistered: bus_restored" in docs.read_text()
    prose_after = re.sub(r"(?s)BEGIN GENERATED.*?END GENERATED", "", docs.read_text())
    assert prose_after == prose_before
    capsys.readouterr()


def test_missing_file_fails_the_check(repo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted diagram is reported missing and fails the check."""
    (repo_copy / TABLES_FILE).unlink()
    assert render_diagrams(repo_copy, check=True) == 1
    assert f"{repo_copy / TABLES_FILE}: missing" in capsys.readouterr().err


def test_missing_svg_is_reported_but_not_compared(
    repo_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the SVG the check still passes and says the SVG is missing."""
    (repo_copy / SVG_FILE).unlink(missing_ok=True)
    assert render_diagrams(repo_copy, check=True) == 0
    assert f"{repo_copy / SVG_FILE} is missing" in capsys.readouterr().err


def test_hand_edited_generated_block_fails_the_check(
    repo_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing inside a generated block of the docs is caught by the check."""
    docs = repo_copy.parent / DOCS_FILE
    docs.write_text(docs.read_text().replace("| HealthCheck | yes |", "| HealthCheck | no |", 1))
    assert render_diagrams(repo_copy, check=True) == 1
    assert f"{docs}: differs from a fresh render" in capsys.readouterr().err


def test_missing_markers_fail_both_modes(
    repo_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A docs page without a block's markers fails the check and is not written."""
    docs = repo_copy.parent / DOCS_FILE
    broken = docs.read_text().replace("<!-- END GENERATED: states -->", "")
    docs.write_text(broken)
    assert render_diagrams(repo_copy, check=True) == 1
    assert render_diagrams(repo_copy, check=False) == 1
    assert docs.read_text() == broken
    assert "BEGIN GENERATED: states" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_write_draws_the_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Writing into an empty directory produces the Mermaid, the tables and an SVG."""
    out = tmp_path / "diagrams"
    assert render_diagrams(out, check=False) == 0
    assert (out / MERMAID_FILE).read_text() == mermaid()
    assert (out / SVG_FILE).read_text().lstrip().startswith("<?xml")
    assert "not found; its generated blocks were skipped" in capsys.readouterr().err


def test_mermaid_has_every_declared_transition() -> None:
    """The Mermaid text has one edge line per declared (source, transition) with guards, no more."""
    edges = {
        (m[1], m[2], m[3], m[4] or "") for line in mermaid().splitlines() if (m := EDGE.match(line))
    }
    declared = {
        (
            source.value,
            spec.dest.value,
            spec.trigger.value,
            ", ".join(g.__name__ for g in spec.guards),
        )
        for spec in TRANSITIONS
        for source in spec.sources
    }
    assert edges == declared
    assert "[*] --> unregistered" in mermaid()


def test_mermaid_is_stable_and_titled() -> None:
    """Two renders are identical, start with a titled front matter and have no trailing spaces."""
    text = mermaid()
    assert text == mermaid()
    assert text.startswith("---\ntitle: procmond lifecycle\n---\nstateDiagram-v2\n")
    assert all(line == line.rstrip() for line in text.splitlines())
