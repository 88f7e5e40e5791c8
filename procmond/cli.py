"""Command-line interface (the only module that imports click)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from procmond import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procmond")
def main() -> None:
    """procmond: process-monitor collector daemon."""


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("diagrams"),
    show_default=True,
    help="Directory the diagrams are written to.",
)
@click.option("--check", is_flag=True, help="Exit 1 when the files differ from a fresh render.")
def diagram(out_dir: Path, check: bool) -> None:
    """Render the lifecycle state machine (Mermaid, SVG, acceptance table)."""
    from procmond.diagram import render_diagrams

    sys.exit(render_diagrams(out_dir, check=check))


if __name__ == "__main__":  # pragma: no cover
    main()
