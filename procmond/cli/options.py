"""Options shared by the commands that talk to a running collector's Redis
(``procmond ctl ...`` and ``procmond watch``), and how they find that Redis."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["REDIS_OPTIONS", "resolve_redis_url", "with_redis_options"]


def resolve_redis_url(redis_url: str | None, data_dir: str | None) -> str:
    """The URL given, or the embedded one of a local ``procmond run``; else exit 6."""
    from procmond.ctl import EXIT_NO_REDIS
    from procmond.discovery import NO_REDIS_MESSAGE, discover_redis_url

    if redis_url:
        return redis_url
    found = discover_redis_url(Path(data_dir) if data_dir else None)
    if found is None:
        click.echo(f"procmond: {NO_REDIS_MESSAGE}", err=True)
        sys.exit(EXIT_NO_REDIS)
    return found


REDIS_OPTIONS = [
    click.option(
        "--redis-url",
        envvar="PROCMOND_REDIS_URL",
        help="Redis URL (default: the embedded Redis of a local `procmond run`).",
    ),
    click.option(
        "--data-dir",
        envvar="PROCMOND_DATA_DIR",
        type=click.Path(file_okay=False),
        help="Data directory of the local `procmond run` (to find its embedded Redis).",
    ),
]


def with_redis_options(func: Any) -> Any:
    for option in reversed(REDIS_OPTIONS):
        func = option(func)
    return func
