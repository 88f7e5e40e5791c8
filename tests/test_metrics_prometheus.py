"""The metrics against a real Prometheus server (Debian's ``prometheus``; ``make test``
installs it): the test starts one on a private port with a generated scrape config
(every 1 s) and a temporary storage directory, lets it scrape ``procmond run`` and
``procmond agent``, and reads the values back through its HTTP query API.

Also: ``promtool check metrics`` on both expositions, ``promtool check rules`` and
``promtool test rules`` on docs/prometheus-alerts.yml, and every metric that the docs,
the alert rules and the Grafana dashboard name exists. A missing ``prometheus`` FAILS
(like a missing redis-server): a skip would hide a broken setup.

Every wait polls the query API with a bound; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import churn_child, daemon, new_id, poll

from procmond.embedded import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
INSTALL_HINT = "prometheus is required: apt-get install prometheus (make system-deps does)"
#: The collector's heartbeat interval in this test: failed after 3 of them (the agent's rule).
HEARTBEAT_MS = 200


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def free_port() -> int:
    """A port nobody listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return str(reply.read().decode())


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, jobs: dict[str, str]) -> Iterator[str]:
    """A private Prometheus scraping ``jobs`` (name: host:port) every second; its base URL."""
    binary = tool("prometheus")
    port = free_port()
    scrape = "\n".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['{target}']"
        for name, target in jobs.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n{scrape}\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def query(base: str, expr: str) -> list[float]:
    """The values of an instant query (empty: no series, or the server is not up yet)."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        document = json.loads(await asyncio.to_thread(http_get, url))
    except OSError:
        return []
    assert document["status"] == "success", document
    return [float(item["value"][1]) for item in document["data"]["result"]]


async def until(base: str, expr: str, ok: Callable[[float], bool], timeout: float = 20.0) -> float:
    """Poll ``expr`` until it has one value and ``ok(value)``; that value."""
    values = await poll(
        lambda: query(base, expr), lambda v: len(v) == 1 and ok(v[0]), timeout=timeout, every=0.2
    )
    return values[0]


def promtool_check_metrics(text: str) -> str:
    """``promtool check metrics`` on an exposition; its complaints (empty when clean)."""
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def metric_names(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")} | {
        re.split(r"[{ ]", line)[0] for line in exposition.splitlines() if line[:1].isalpha()
    }


@contextlib.contextmanager
def agent_process(url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``procmond agent --metrics-listen`` as an operator runs it, keeping the collector's
    own short interval (an agent may assign no less than 1 s, protocol section 7)."""
    command = [sys.executable, "-m", "procmond.cli", "agent", "--redis-url", url, "--json",
               "--metrics-listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_prometheus_scrapes_the_collector_and_the_agent(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """Events published rise after a process starts; a SIGSTOPped collector is failed, then not."""
    cid = new_id()
    daemon_port, agent_port = free_port(), free_port()
    daemon_args = ("--metrics-listen", f"127.0.0.1:{daemon_port}",
                   "--heartbeat-interval-ms", str(HEARTBEAT_MS))  # fmt: skip
    jobs = {"procmond": f"127.0.0.1:{daemon_port}", "procmond-agent": f"127.0.0.1:{agent_port}"}
    with (
        agent_process(fresh_redis.url, agent_port),
        daemon(tmp_path, fresh_redis.url, cid, extra_args=daemon_args) as proc,
        running_prometheus(tmp_path, jobs) as prom,
    ):
        await scraped_and_read_back(prom, jobs, cid, proc.pid)


async def scraped_and_read_back(prom: str, jobs: dict[str, str], cid: str, pid: int) -> None:
    """The assertions of the test above, against the running Prometheus ``prom``."""
    ready = 'procmond_lifecycle_state{state="ready",job="procmond"}'
    await until(prom, ready, lambda v: v == 1, timeout=30)
    await until(prom, 'procmond_agent_collectors{state="ready"}', lambda v: v == 1)

    # Both expositions pass promtool's lint, and every documented name is exposed.
    texts = [
        await asyncio.to_thread(http_get, f"http://{target}/metrics") for target in jobs.values()
    ]
    for text in texts:
        promtool_check_metrics(text)
    exposed = set().union(*(metric_names(text) for text in texts))
    assert documented_metric_names() - exposed == set()

    published = "procmond_events_published_total"
    before = await until(prom, published, lambda v: v >= 0)
    with churn_child(f"metrics-{cid}"):
        await until(prom, published, lambda v: v > before)

    os.kill(pid, signal.SIGSTOP)
    try:
        await until(prom, 'procmond_agent_collectors{state="failed"}', lambda v: v == 1)
        age = f'procmond_agent_heartbeat_age_seconds{{collector_id="{cid}"}}'
        await until(prom, age, lambda v: v > 3 * HEARTBEAT_MS / 1000)
    finally:
        os.kill(pid, signal.SIGCONT)
    await until(prom, 'procmond_agent_collectors{state="failed"}', lambda v: v == 0)
    lost = await until(prom, "procmond_agent_heartbeats_lost_total", lambda v: v >= 0)
    assert lost == 0  # a paused collector numbers no heartbeats: no gap


def documented_metric_names() -> set[str]:
    """procmond metric names in docs/operations.md, the alert rules and the dashboard."""
    pattern = re.compile(r"\bprocmond_[a-z_]+")
    names: set[str] = set()
    for path in ("operations.md", "prometheus-alerts.yml", "grafana-dashboard.json"):
        names |= set(pattern.findall((DOCS / path).read_text()))
    # Histogram series and the info metric's family name are derived names.
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names} - {"procmond_"}


def test_the_alert_rules_pass_promtool() -> None:
    """docs/prometheus-alerts.yml is valid and its unit tests (docs/*.test.yml) pass."""
    promtool = tool("promtool")
    for command in (
        [promtool, "check", "rules", "prometheus-alerts.yml"],
        [promtool, "test", "rules", "prometheus-alerts.test.yml"],
    ):
        done = subprocess.run(
            command, cwd=DOCS, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_dashboard_is_json_with_queries() -> None:
    """docs/grafana-dashboard.json parses and every panel queries a procmond metric."""
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert panels
    for panel in panels:
        assert any("procmond_" in t["expr"] for t in panel["targets"]), panel["title"]
