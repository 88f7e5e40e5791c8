"""A private redis-server with the users of ``procmond acl`` loaded, and an attacker's moves.

The users are made by the real command: collectors, the agent and the
watcher as lines of
a ``users.acl`` file the server loads at start (``--format acl-file``), the
operator with ``ACL SETUSER`` lines piped through the real ``redis-cli``
(``--format commands``). The ``default`` user stays the test's administrator
(the socket is private to the test). ``OLD_RECIPE`` is the per-collector line
docs/topic-hierarchy.md documented before issue 11, for web-02: the moves it
let through are marked, so each test of those moves is known to fail against
it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis_fixtures import running_redis

from procmond.embedded import RedisServer

PROCMOND = [sys.executable, "-m", "procmond.cli"]
COLLECTORS = ("web-01", "web-02", "web-03")
AGENT = "agent"
OPERATOR = "ops"
WATCHER = "eyes"
#: docs/topic-hierarchy.md before issue 11, for collector web-02 (user name old-web-02).
OLD_RECIPE = (
    "on >old-secret resetchannels resetkeys -@all +ping +hello +auth +client|setname "
    "+subscribe +unsubscribe +publish +xadd %W~events.process.* &control.collector.web-02 "
    "&control.rpc.response.* &control.registration.web-02 &control.health.status.web-02 "
    "&control.health.heartbeat.web-02"
)


def acl_lines(*args: str) -> str:
    """stdout of ``procmond acl ARGS`` (exit 0 asserted)."""
    result = subprocess.run(
        [*PROCMOND, "acl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class AclRedis:
    """The server and each user's URL."""

    server: RedisServer
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        """``unix://user:password@/path`` for one of the users."""
        password = quote(self.passwords[user], safe="")
        return f"unix://{user}:{password}@{self.server.socket_path}"

    def admin(self) -> redis.Redis:
        """The test's own client (the default user)."""
        return redis.Redis(unix_socket_path=str(self.server.socket_path))

    def client(self, user: str) -> redis.Redis:
        """A client authenticated as ``user``, RESP3 as procmond's."""
        return redis.Redis.from_url(self.url(user), protocol=3)

    def acl_log_users(self) -> set[str]:
        """The users ``ACL LOG`` has refused something to so far (128 entries at most)."""
        entries: Any = self.admin().acl_log(count=128)
        found = set()
        for entry in entries:
            name = entry["username"]
            found.add(name.decode() if isinstance(name, bytes) else str(name))
        return found


@contextmanager
def acl_redis(directory: Path) -> Iterator[AclRedis]:
    """A private server with web-01..03, agent, ops, eyes (new recipe), old-web-02 (old one)."""
    users = [*COLLECTORS, AGENT, OPERATOR, WATCHER]
    files = {user: directory / f"{user}.password" for user in users}
    lines = [
        acl_lines(cid, "--password-file", str(files[cid]), "--format", "acl-file")
        for cid in COLLECTORS
    ]
    lines.append(acl_lines("--agent", "--password-file", str(files[AGENT]), "--format", "acl-file"))
    lines.append(
        acl_lines(
            "--watch", WATCHER, "--password-file", str(files[WATCHER]), "--format", "acl-file"
        )
    )
    aclfile = directory / "users.acl"
    aclfile.write_text("".join(lines))
    with running_redis(extra_args=["--aclfile", str(aclfile)], prefix="pmd-acl-") as server:
        commands = acl_lines("--ctl", OPERATOR, "--password-file", str(files[OPERATOR]))
        piped = subprocess.run(
            ["redis-cli", "-s", str(server.socket_path)],
            input=commands,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert piped.stdout.strip() == "OK", piped.stdout + piped.stderr
        passwords = {user: path.read_text().strip() for user, path in files.items()}
        admin = redis.Redis(unix_socket_path=str(server.socket_path))
        admin.execute_command("ACL", "SETUSER", "old-web-02", *OLD_RECIPE.split())  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        passwords["old-web-02"] = "old-secret"
        yield AclRedis(server, passwords)


def next_message(pubsub: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The next message of a redis-py pub/sub (a reply refused by Redis raises); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is not None:
            return dict(message)
    raise TimeoutError(f"no pub/sub message within {timeout} s")


@dataclass(frozen=True)
class Move:
    """One thing an attacker tries: a Redis command, a subscription or a publish."""

    issue: str  # the move of issue 11 it belongs to
    kind: str  # "command", "subscribe", "psubscribe"
    args: tuple[str, ...]
    old_allowed: bool = False  # what the old recipe let web-02 do

    @property
    def label(self) -> str:
        """For the test ids."""
        return f"{self.kind} {' '.join(a[:40] for a in self.args)}"


def attempt(client: redis.Redis, move: Move) -> str:
    """``"NOPERM"`` when Redis refused the move for lack of permission, else ``"allowed"``."""
    try:
        if move.kind == "command":
            client.execute_command(*move.args)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        else:
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            try:
                getattr(pubsub, move.kind)(*move.args)
                next_message(pubsub)  # the confirmation, or the refusal raised
            finally:
                pubsub.close()
    except redis.exceptions.NoPermissionError:
        return "NOPERM"
    finally:
        client.close()
    return "allowed"
