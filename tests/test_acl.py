"""``procmond acl``: the users it builds, the naming rules, the passwords (no Redis here).

The same users are loaded into a real redis-server in tests/test_acl_redis.py.
"""

from __future__ import annotations

import hashlib
import stat
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_light_imports import heavy, imported_by

from procmond.acl import (
    CTL_CLIENT_PREFIX,
    AclError,
    Password,
    agent_user,
    collector_user,
    ctl_user,
    load_or_create_password,
    stream_keys,
    watch_user,
)
from procmond.cli import main
from procmond.client import new_client_id
from procmond.topics import EVENT_STREAMS

NOPASS = Password(None)


def selector(rules: list[str], command: str) -> str:
    """The one selector rule that grants ``command``."""
    (found,) = [r for r in rules if r.startswith("(") and f" {command} " in r]
    return found


def test_a_collector_subscribes_publishes_and_adds_with_separate_rights() -> None:
    """Subscribe, publish and XADD are three selectors, each with only its own channels or keys."""
    rules = collector_user("web-01", NOPASS).rules()
    assert rules[:6] == ["reset", "on", "nopass", "resetchannels", "resetkeys", "-@all"]
    root = [r for r in rules[6:] if not r.startswith("(")]
    assert root == ["+hello", "+auth", "+ping", "+client|setname", "+unsubscribe"]
    assert selector(rules, "+subscribe") == (
        "(resetchannels resetkeys +subscribe &control.collector.web-01 "
        "&control.rpc.response.web-01)"
    )
    assert selector(rules, "+publish") == (
        "(resetchannels resetkeys +publish &control.registration.web-01 "
        "&control.health.status.web-01 &control.health.heartbeat.web-01 "
        "&control.rpc.response.ctl-* &control.rpc.response.agent)"
    )
    assert selector(rules, "+xadd") == (
        "(resetchannels resetkeys +xadd " + " ".join(f"%W~{k}" for k in EVENT_STREAMS) + ")"
    )


def test_operator_client_ids_carry_the_prefix_collectors_may_answer() -> None:
    """procmond ctl's client ids start with ctl-, the prefix of the collectors' answer rule."""
    assert new_client_id().startswith(CTL_CLIENT_PREFIX)


@pytest.mark.parametrize(
    ("collector_id", "agent_id", "why"),
    [
        ("web-01\n", "agent", "not an identifier"),
        ("Web-01", "agent", "not an identifier"),
        ("web.01", "agent", "not an identifier"),
        ("web-*", "agent", "not an identifier"),
        ("x" * 64, "agent", "not an identifier"),
        ("ctl-web", "agent", "prefix of operator clients"),
        ("agent", "agent", "the agent's id"),
        ("boss", "boss", "the agent's id"),
        ("web-01", "ctl-agent", "must not start with"),
    ],
)
def test_ids_that_would_open_an_answer_topic_are_refused(
    collector_id: str, agent_id: str, why: str
) -> None:
    """Bad identifiers, and names that would let every collector write a topic, raise AclError."""
    with pytest.raises(AclError, match=why):
        collector_user(collector_id, NOPASS, agent_id=agent_id)


def test_sharded_streams_give_a_collector_its_own_shard_only() -> None:
    """With S shards the collector may write the four keys of shard crc32(id) mod S only."""
    shard = zlib.crc32(b"web-01") % 16
    assert stream_keys("web-01", 16) == tuple(f"{k}.{{{shard}}}" for k in EVENT_STREAMS)
    assert stream_keys("web-01") == EVENT_STREAMS
    with pytest.raises(AclError):
        stream_keys("web-01", 0)


def test_the_agent_listens_to_its_patterns_and_publishes_answers_only() -> None:
    """The agent: PSUBSCRIBE its three patterns, PUBLISH on answer topics, nothing else."""
    rules = agent_user(NOPASS, "agent-1").rules()
    assert selector(rules, "+psubscribe") == (
        "(resetchannels resetkeys +psubscribe &control.registration.* "
        "&control.health.status.* &control.health.heartbeat.*)"
    )
    assert selector(rules, "+publish") == (
        "(resetchannels resetkeys +publish &control.rpc.response.*)"
    )
    assert not any("~" in r for r in rules)


def test_an_operator_may_be_limited_to_some_collectors() -> None:
    """--ctl with --collector: requests to those collectors only; answers on ctl-* topics."""
    rules = ctl_user("ops", NOPASS, ["web-01", "web-02"]).rules()
    assert "+pubsub|numsub" in rules
    assert selector(rules, "+subscribe").endswith("&control.rpc.response.ctl-*)")
    assert selector(rules, "+publish").endswith(
        "&control.collector.web-01 &control.collector.web-02)"
    )
    assert selector(ctl_user("ops", NOPASS).rules(), "+publish").endswith("&control.collector.*)")


def test_the_watcher_reads_without_writing() -> None:
    """--watch: PSUBSCRIBE control.*, XREVRANGE/XREAD on every stream and shard, read only."""
    rules = watch_user("eyes", NOPASS).rules()
    assert selector(rules, "+psubscribe") == "(resetchannels resetkeys +psubscribe &control.*)"
    assert selector(rules, "+xread") == (
        "(resetchannels resetkeys +xrevrange +xread %R~events.process.*)"
    )
    assert not any("publish" in r or "%W~" in r for r in rules)


def test_a_password_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    """A missing file gets a new 0600 password; the next call reads the same one back."""
    path = tmp_path / "web-01.password"
    password, created = load_or_create_password(path)
    assert created
    assert len(password) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_password(path) == (password, False)
    assert Password(password).rule() == "#" + hashlib.sha256(password.encode()).hexdigest()
    assert Password(password, show=True).rule() == ">" + password


@pytest.mark.parametrize("content", ["", "two words\n", "tab\there", "bell\x07"])
def test_an_unusable_password_file_is_refused(tmp_path: Path, content: str) -> None:
    """An empty password, or one with whitespace or control characters, is an error."""
    path = tmp_path / "pw"
    path.write_text(content)
    with pytest.raises(AclError):
        load_or_create_password(path)


def test_the_command_never_prints_the_password_unless_asked(tmp_path: Path) -> None:
    """Both formats carry the SHA-256 only; --show-password prints it; --nopass is explicit."""
    runner = CliRunner()
    path = tmp_path / "pw"
    result = runner.invoke(main, ["acl", "web-01", "--password-file", str(path)])
    assert result.exit_code == 0, result.output
    password = path.read_text().strip()
    digest = hashlib.sha256(password.encode()).hexdigest()
    assert result.stdout.startswith("ACL SETUSER web-01 reset on #" + digest)
    assert password not in result.stdout
    assert f"new password written to {path}" in result.stderr
    as_file = runner.invoke(
        main, ["acl", "web-01", "--password-file", str(path), "--format", "acl-file"]
    )
    assert as_file.stdout.startswith("user web-01 reset on #" + digest)
    assert password not in as_file.stdout
    assert as_file.stderr == ""
    shown = runner.invoke(main, ["acl", "web-01", "--password-file", str(path), "--show-password"])
    assert f" >{password} " in shown.stdout
    refused = runner.invoke(main, ["acl", "web-01"])
    assert refused.exit_code == 2
    assert "--password-file PATH or --nopass" in refused.output
    assert " nopass " in runner.invoke(main, ["acl", "web-01", "--nopass"]).stdout


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["--agent"], "ACL SETUSER agent "),
        (["--agent", "boss"], "ACL SETUSER boss "),
        (["--ctl", "ops"], "ACL SETUSER ops "),
        (["--watch", "eyes"], "ACL SETUSER eyes "),
    ],
)
def test_the_command_prints_the_agent_and_operator_users(args: list[str], first: str) -> None:
    """--agent [NAME] and --ctl NAME name the user they print."""
    result = CliRunner().invoke(main, ["acl", *args, "--nopass"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(first)


@pytest.mark.parametrize(
    "args",
    [
        ["web-01\n", "--nopass"],
        ["ctl-web", "--nopass"],
        ["web-01", "--agent", "--nopass"],
        [],
        ["--ctl", "Ops", "--nopass"],
        ["--ctl", "ops", "--watch", "eyes", "--nopass"],
    ],
)
def test_the_command_refuses_bad_or_ambiguous_names(args: list[str]) -> None:
    """A bad identifier, a forbidden prefix, or not exactly one role: exit 2, nothing on stdout."""
    result = CliRunner().invoke(main, ["acl", *args])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_the_acl_module_imports_light() -> None:
    """procmond.acl (an operator tool) loads no daemon, storage, collection, redis or pydantic."""
    modules = imported_by("procmond.acl")
    assert heavy(modules) == []
    assert not {"redis", "pydantic", "psutil"} & set(modules)
