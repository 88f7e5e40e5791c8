"""Redis 7 ACL users that give each party of the protocol only its own topics and keys.

Theory of operation: a Redis channel permission (``&pattern``) grants PUBLISH
and SUBSCRIBE alike, so one flat rule list cannot let a collector publish its
heartbeats without also letting it listen to them, nor let it answer an
operator without also letting it read the operator's answers. Redis 7
*selectors* fix that: a command is allowed when the user's root permissions,
or any one selector on its own, allow the command together with every channel
and key it names. So each user here is built from

- root permissions: only the connection commands (``HELLO``, ``AUTH``,
  ``PING``, ``CLIENT SETNAME``, ``UNSUBSCRIBE``/``PUNSUBSCRIBE``), no channel
  and no key;
- one selector per right: ``+subscribe`` with the channels the party may
  listen to, ``+publish`` with the channels it may send on, ``+xadd`` with
  write-only (``%W~``) access to the exact event stream keys.

What ACLs can close depends on names, hence two naming rules that
:func:`collector_user` enforces: every operator client id starts with
``ctl-`` (what :func:`procmond.client.new_client_id` makes) and the agent has
one fixed client id (default ``agent``); no collector id may start with
``ctl-`` or equal the agent's id. A collector then publishes on
``control.rpc.response.ctl-*`` and ``control.rpc.response.{agent_id}`` only,
so collector ``web-02`` cannot answer on ``control.rpc.response.web-01``.
What names cannot express (a collector answering an operator with a made-up
answer, an XADD that claims another collector's id or trims the shared stream
with ``MAXLEN 0``) is left to signatures (protocol section 10); see
docs/security.md.

Only the standard library and the light protocol modules are imported: this is
an operator tool.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from procmond.protocol import IDENTIFIER
from procmond.topics import (
    EVENT_KINDS,
    HEARTBEAT_PATTERN,
    REGISTRATION_PATTERN,
    STATUS_PATTERN,
    collector_topic,
    heartbeat_topic,
    registration_topic,
    response_topic,
    status_topic,
    stream_key,
)

__all__ = [
    "CTL_CLIENT_PREFIX",
    "DEFAULT_AGENT_ID",
    "AclError",
    "AclUser",
    "Password",
    "agent_user",
    "collector_user",
    "ctl_user",
    "load_or_create_password",
    "stream_keys",
    "watch_user",
]

#: Every ``procmond ctl`` client id starts with this (``ctl-{pid}-{hex}``,
#: :func:`procmond.client.new_client_id`); collectors may answer these.
CTL_CLIENT_PREFIX: Final = "ctl-"
#: The reference agent's id (``procmond agent --service-id``).
DEFAULT_AGENT_ID: Final = "agent"
#: What redis-py 8 sends on every connection (``HELLO 3`` with ``AUTH`` inside,
#: ``CLIENT SETNAME``), what procmond's liveness checks send (``PING``), and the
#: unsubscribe commands, which name no channel Redis checks. ``CLIENT SETINFO``
#: (Redis 7.2+) is not listed: Redis 7.0 refuses the rule, and redis-py ignores
#: a refused SETINFO.
CONNECTION_COMMANDS: Final = ("+hello", "+auth", "+ping", "+client|setname")
#: What ``procmond watch`` pattern-subscribes by default (Redis matches a
#: PSUBSCRIBE pattern literally against the allowed ones).
WATCH_PATTERN: Final = "control.*"
#: Every event stream key, sharded ones included (read-only for the watcher).
EVENT_KEY_PATTERN: Final = "events.process.*"
#: Bytes of a generated password before base64 (256 bits).
PASSWORD_BYTES: Final = 32


class AclError(ValueError):
    """A name or a password that cannot make a safe ACL user."""


def _identifier(value: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise AclError(
            f"{what} {value!r} is not an identifier (protocol section 1: "
            "^[a-z0-9][a-z0-9_-]{0,62}$, the whole string)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Password:
    """How a user authenticates: a password (shown or as its SHA-256), or none at all."""

    secret: str | None
    show: bool = False

    def rule(self) -> str:
        """``nopass``, ``>password`` (only when asked to show it) or ``#sha256``."""
        if self.secret is None:
            return "nopass"
        if self.show:
            return f">{self.secret}"
        return "#" + hashlib.sha256(self.secret.encode()).hexdigest()


def load_or_create_password(path: Path) -> tuple[str, bool]:
    """The password in ``path``, or a new one written there (mode 0600); (password, created).

    The file holds the password alone (one trailing newline is ignored). A
    password with whitespace or control characters is refused: it could not
    be written on one ACL line.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_password(path), False
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(password + "\n")
    return password, True


def _read_password(path: Path) -> str:
    text = path.read_text(encoding="utf-8").removesuffix("\n")
    if not text:
        raise AclError(f"{path} is empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise AclError(f"the password in {path} has whitespace or control characters")
    return text


@dataclass(frozen=True, slots=True)
class AclUser:
    """One Redis user: root permissions plus selectors, renderable both ways."""

    name: str
    password: Password
    root: tuple[str, ...]
    selectors: tuple[tuple[str, ...], ...]

    def rules(self) -> list[str]:
        """The ACL rules in order; each selector is one ``(...)`` rule."""
        head = ["reset", "on", self.password.rule(), "resetchannels", "resetkeys", "-@all"]
        return [
            *head,
            *self.root,
            *("(" + " ".join(("resetchannels", "resetkeys", *s)) + ")" for s in self.selectors),
        ]

    def acl_file_line(self) -> str:
        """A line of a ``users.acl`` file (``aclfile`` in redis.conf, ``ACL LOAD``)."""
        return " ".join(["user", self.name, *self.rules()])

    def setuser_command(self) -> str:
        """An ``ACL SETUSER`` line for ``redis-cli`` (selectors double-quoted)."""
        quoted = [f'"{r}"' if r.startswith("(") else r for r in self.rules()]
        return " ".join(["ACL", "SETUSER", self.name, *quoted])

    def setuser_args(self) -> list[str]:
        """The arguments of ``ACL SETUSER`` as a client library sends them."""
        return ["ACL", "SETUSER", self.name, *self.rules()]


def _channels(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"&{name}" for name in names)


def stream_keys(collector_id: str, stream_shards: int = 1) -> tuple[str, ...]:
    """The stream keys ``collector_id`` writes (protocol sections 8 and 11).

    One shard: the four ``events.process.{kind}`` keys. S shards: the keys of
    this collector's own shard ``n = crc32(collector_id) mod S``,
    ``events.process.{kind}.{n}`` with literal braces (Redis ACL globs treat
    braces as ordinary characters).
    """
    if stream_shards < 1:
        raise AclError(f"stream_shards must be at least 1, not {stream_shards}")
    if stream_shards == 1:
        return tuple(stream_key(kind) for kind in EVENT_KINDS)
    shard = zlib.crc32(collector_id.encode()) % stream_shards
    return tuple(f"{stream_key(kind)}.{{{shard}}}" for kind in EVENT_KINDS)


def collector_user(
    collector_id: str,
    password: Password,
    *,
    agent_id: str = DEFAULT_AGENT_ID,
    stream_shards: int = 1,
) -> AclUser:
    """The user of one collector: its own topics, the callers' answers, XADD to the streams.

    Raises :class:`AclError` when an id breaks the naming rules (module
    docstring): such a collector's answer topic could be written by others.
    """
    _identifier(collector_id, "collector id")
    _identifier(agent_id, "agent id")
    if agent_id.startswith(CTL_CLIENT_PREFIX):
        raise AclError(f"the agent id must not start with {CTL_CLIENT_PREFIX!r}")
    if collector_id.startswith(CTL_CLIENT_PREFIX):
        raise AclError(
            f"collector id {collector_id!r} starts with {CTL_CLIENT_PREFIX!r}, the prefix of "
            "operator clients: every collector could publish on its answer topic"
        )
    if collector_id == agent_id:
        raise AclError(
            f"collector id {collector_id!r} is the agent's id: every collector could "
            "publish on its answer topic"
        )
    subscribe = (
        "+subscribe",
        *_channels([collector_topic(collector_id), response_topic(collector_id)]),
    )
    publish = (
        "+publish",
        *_channels(
            [
                registration_topic(collector_id),
                status_topic(collector_id),
                heartbeat_topic(collector_id),
                response_topic(CTL_CLIENT_PREFIX + "*"),
                response_topic(agent_id),
            ]
        ),
    )
    xadd = ("+xadd", *(f"%W~{key}" for key in stream_keys(collector_id, stream_shards)))
    return AclUser(
        collector_id, password, (*CONNECTION_COMMANDS, "+unsubscribe"), (subscribe, publish, xadd)
    )


def agent_user(password: Password, agent_id: str = DEFAULT_AGENT_ID) -> AclUser:
    """The reference agent's user: PSUBSCRIBE its three patterns, PUBLISH answers to collectors.

    Redis matches a PSUBSCRIBE pattern literally against the allowed ones, so
    the agent can listen to exactly these patterns and nothing narrower or
    wider; it cannot publish on any collector's own topics.
    """
    _identifier(agent_id, "agent id")
    if agent_id.startswith(CTL_CLIENT_PREFIX):
        raise AclError(f"the agent id must not start with {CTL_CLIENT_PREFIX!r}")
    patterns = (REGISTRATION_PATTERN, STATUS_PATTERN, HEARTBEAT_PATTERN)
    psubscribe = ("+psubscribe", *_channels(patterns))
    publish = ("+publish", *_channels([response_topic("*")]))
    return AclUser(
        agent_id, password, (*CONNECTION_COMMANDS, "+punsubscribe"), (psubscribe, publish)
    )


def ctl_user(name: str, password: Password, collectors: Sequence[str] = ()) -> AclUser:
    """An operator's user for ``procmond ctl``: requests to collectors, answers to ``ctl-*``.

    ``collectors`` limits the requests to those collectors (default: any).
    ``PUBSUB NUMSUB`` (ctl asks it before reporting a collector as listening)
    names no channel Redis checks, so it is a root permission.
    """
    _identifier(name, "user name")
    targets = [collector_topic(_identifier(c, "collector id")) for c in collectors]
    subscribe = ("+subscribe", *_channels([response_topic(CTL_CLIENT_PREFIX + "*")]))
    publish = ("+publish", *_channels(targets or [collector_topic("*")]))
    root = (*CONNECTION_COMMANDS, "+unsubscribe", "+pubsub|numsub")
    return AclUser(name, password, root, (subscribe, publish))


def watch_user(name: str, password: Password) -> AclUser:
    """An operator's user for ``procmond watch``: every control message, the streams read-only.

    Its default pattern ``control.*`` only (a PSUBSCRIBE pattern is matched
    literally), and XREVRANGE / XREAD on the event streams, their shards
    included, read-only (``%R~``). It publishes nothing.
    """
    _identifier(name, "user name")
    psubscribe = ("+psubscribe", *_channels([WATCH_PATTERN]))
    read = ("+xrevrange", "+xread", f"%R~{EVENT_KEY_PATTERN}")
    return AclUser(name, password, (*CONNECTION_COMMANDS, "+punsubscribe"), (psubscribe, read))
