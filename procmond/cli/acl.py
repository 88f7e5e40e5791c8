"""``procmond acl``: print the Redis ACL user of a collector, the agent or an operator."""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["acl_command"]


@click.command("acl")
@click.argument("collector_id", required=False)
@click.option(
    "--agent",
    "agent_name",
    is_flag=False,
    flag_value="agent",
    default=None,
    metavar="[NAME]",
    help="The agent's user instead (NAME: its --service-id, default agent).",
)
@click.option("--ctl", "ctl_name", metavar="NAME", help="An operator's user for procmond ctl.")
@click.option(
    "--watch", "watch_name", metavar="NAME", help="An operator's user for procmond watch."
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["commands", "acl-file"]),
    default="commands",
    show_default=True,
    help="ACL SETUSER lines for redis-cli, or lines of a users.acl file.",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the password from this file; when it does not exist, generate one and write "
    "it there (mode 0600).",
)
@click.option(
    "--show-password",
    is_flag=True,
    help="Print the password itself (>password); by default only its SHA-256 (#hash).",
)
@click.option(
    "--nopass", is_flag=True, help="No password at all (anyone who can connect is this user)."
)
@click.option(
    "--agent-id",
    default="agent",
    show_default=True,
    help="For a collector: the agent's client id, whose answer topic it may publish on.",
)
@click.option(
    "--stream-shards",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="For a collector: the stream_shards setting (protocol section 11).",
)
@click.option(
    "--collector",
    "collectors",
    multiple=True,
    metavar="ID",
    help="For --ctl: only these collectors may be called (repeatable; default any).",
)
def acl_command(
    collector_id: str | None,
    agent_name: str | None,
    ctl_name: str | None,
    watch_name: str | None,
    output_format: str,
    password_file: Path | None,
    show_password: bool,
    nopass: bool,
    agent_id: str,
    stream_shards: int,
    collectors: tuple[str, ...],
) -> None:
    """Print the Redis 7 ACL user of collector COLLECTOR_ID (or --agent, --ctl, --watch).

    \b
    Each user gets only its own topics, with publishing and subscribing as
    separate rights (Redis 7 selectors); see docs/security.md. Naming rule:
    collector ids must not start with ctl- nor equal the agent's id.
    A password comes from --password-file (made there when missing; the
    output carries only its SHA-256 unless --show-password), or --nopass.
    Exit 2 on a bad id or missing password choice.
    """
    from procmond.acl import (
        AclError,
        Password,
        agent_user,
        collector_user,
        ctl_user,
        load_or_create_password,
        watch_user,
    )

    roles = [r for r in (collector_id, agent_name, ctl_name, watch_name) if r is not None]
    if len(roles) != 1:
        raise click.UsageError(
            "give exactly one of COLLECTOR_ID, --agent [NAME], --ctl NAME, --watch NAME"
        )
    if nopass == (password_file is not None):
        raise click.UsageError("give either --password-file PATH or --nopass")
    try:
        if password_file is not None:
            secret, created = load_or_create_password(password_file)
            if created:
                click.echo(f"procmond: new password written to {password_file}", err=True)
            password = Password(secret, show=show_password)
        else:
            password = Password(None)
        if collector_id is not None:
            user = collector_user(
                collector_id, password, agent_id=agent_id, stream_shards=stream_shards
            )
        elif agent_name is not None:
            user = agent_user(password, agent_name)
        elif ctl_name is not None:
            user = ctl_user(ctl_name, password, collectors)
        else:
            assert watch_name is not None
            user = watch_user(watch_name, password)
    except (AclError, OSError) as exc:
        click.echo(f"procmond: {exc}", err=True)
        sys.exit(2)
    if output_format == "acl-file":
        click.echo(user.acl_file_line())
    else:
        click.echo(user.setuser_command())
