"""Command-line interface: the ``procmond`` command group (this package is the only
place that imports click).

The group is assembled here from its commands, by responsibility:
:mod:`~procmond.cli.daemon` (``run``), :mod:`~procmond.cli.control` (``ctl``),
:mod:`~procmond.cli.tools` (``demo``, ``watch``, ``agent``, ``diagram``),
:mod:`~procmond.cli.acl` (``acl``), with the Redis options they share in
:mod:`~procmond.cli.options`. The console script is ``procmond.cli:main``;
``python -m procmond.cli`` runs the same group.
"""

from __future__ import annotations

import click

from procmond import __version__
from procmond.cli.acl import acl_command
from procmond.cli.control import ctl, ctl_config, ctl_health, ctl_shutdown
from procmond.cli.daemon import run
from procmond.cli.tools import agent_command, demo_command, diagram, watch_command

__all__ = [
    "acl_command",
    "agent_command",
    "ctl",
    "ctl_config",
    "ctl_health",
    "ctl_shutdown",
    "demo_command",
    "diagram",
    "main",
    "run",
    "watch_command",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="procmond")
def main() -> None:
    """procmond: process-monitor collector daemon."""


main.add_command(run)
main.add_command(ctl)
main.add_command(demo_command)
main.add_command(watch_command)
main.add_command(agent_command)
main.add_command(diagram)
main.add_command(acl_command)
