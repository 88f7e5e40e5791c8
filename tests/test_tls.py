"""procmond over TLS (``rediss://``) with an ACL user, end to end.

A private redis-server listens on a unix socket (for the test's own setup)
and on a TLS port whose certificate is signed by a CA made here with the
``openssl`` command. procmond and the test's agent reach it only through
``rediss://user:password@127.0.0.1:PORT?ssl_ca_certs=...``: the URL form
docs/operations.md gives for a fleet.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_agent import seq_report
from e2e_support import daemon, new_id, poll, running_agent
from redis import Redis
from redis_fixtures import running_redis, short_dir

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PASSWORD = "tls-test-secret"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates: apt-get install openssl")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=procmond test CA",
        "-keyout", str(files["ca-key"]), "-out", str(files["ca"]),
    )  # fmt: skip
    csr = directory / "server.csr"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["key"]), "-out", str(csr),
    )  # fmt: skip
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(files["cert"]),
    )  # fmt: skip
    return files


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls_redis() -> Iterator[tuple[RedisServer, int, dict[str, Path]]]:
    """A redis-server with a TLS port and an ACL user ``collector``."""
    directory = short_dir("pmd-tls-")  # the certificates
    try:
        certs = make_certificates(directory)
        port = free_port()
        tls = (
            "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
            "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
        )  # fmt: skip
        with running_redis(extra_args=tls) as server:
            admin = Redis(unix_socket_path=str(server.socket_path))
            admin.acl_setuser(
                "collector",
                enabled=True,
                passwords=[f"+{PASSWORD}"],
                keys=["events.process.*"],
                channels=["control.*"],
                commands=["+@all"],
            )
            admin.close()
            yield server, port, certs
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_full_session_over_tls_with_an_acl_user(
    tmp_path: Path, tls_redis: tuple[RedisServer, int, dict[str, Path]]
) -> None:
    """Register, ready, HealthCheck (Connected), events in the streams, GracefulShutdown,
    exit 0, all over rediss:// as an ACL user limited to its keys and channels; the
    password is masked in the output. (The agent is another principal: the
    default user, over TLS too.)"""
    _, port, certs = tls_redis
    url = f"rediss://collector:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}"
    agent_url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}"  # the default user
    cid = new_id("tls")
    async with running_agent(agent_url) as agent:
        with daemon(tmp_path, url, cid) as proc:
            await agent.wait_for_state(cid, "ready", timeout=15)
            health = await poll(
                lambda: agent.call(cid, "HealthCheck", None),
                lambda h: h["payload"]["metrics"]["events_published"] > 0,
                timeout=20,
            )
            assert health["status"] == "Success"
            assert health["payload"]["connection_status"] == "Connected"
            answer = await agent.call(cid, "GracefulShutdown", {"reason": "tls test"}, timeout=20)
            assert answer["status"] == "Success", answer
            assert await proc.wait_async(20) == 0
            await agent.wait_for_state(cid, "deregistered", timeout=10)
            entries = await agent.read_events(cid)
            output = proc.stderr_text()
    report = seq_report(entries)
    assert report.first == 1
    assert report.missing == []
    assert PASSWORD not in output
    assert "rediss://collector:***@127.0.0.1" in output


async def test_untrusted_certificate_is_reported_not_fatal(
    tmp_path: Path, tls_redis: tuple[RedisServer, int, dict[str, Path]]
) -> None:
    """Without the CA, the TLS handshake fails: procmond keeps running and collecting
    into its log, says why (certificate verify failed), and SIGTERM drains it (the
    drain waits its --shutdown-timeout-ms for Redis, then exits 0 with the events
    left in the log)."""
    _, port, _ = tls_redis
    url = f"rediss://collector:{PASSWORD}@127.0.0.1:{port}/0"
    cid = new_id("tls")
    with daemon(tmp_path, url, cid, extra_args=("--shutdown-timeout-ms", "1000")) as proc:
        line = await proc.wait_for_output("certificate verify failed", timeout=20)
        assert proc.returncode is None, line
        proc.signal(signal.SIGTERM)
        assert await proc.wait_async(20) == 0, proc.tail()
        last = await proc.wait_for_output("exited cleanly", timeout=5)
        assert PASSWORD not in proc.stderr_text()
    left = int(last.split(", ")[1].split()[0])  # "N left in the log"
    assert left > 0, last
