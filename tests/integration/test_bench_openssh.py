"""The bench against real agents: OpenSSH's ssh-agent, and secretivex with metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import keygen, require_tool, running_agent
from test_client_openssh import KEYS, OpenSSHAgent, start_openssh_agent, stop

from secretivex.bench import BenchOptions, run_bench, validate_report

pytestmark = pytest.mark.openssh
SECRETIVEX = str(Path(sys.executable).with_name("secretivex"))


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("ssh-keygen")
    directory = tmp_path_factory.mktemp("bench-keys")
    for name, (kind, bits) in KEYS.items():
        keygen(directory, name, kind, bits, comment=f"it-{name}")
    return directory


@pytest.fixture
def agent(tmp_path: Path, keydir: Path) -> Iterator[OpenSSHAgent]:
    running = start_openssh_agent(tmp_path, keydir)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            stop(running)


def bench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SECRETIVEX, "bench", *args], capture_output=True, text=True, timeout=120)


def test_cli_report_validates(agent: OpenSSHAgent, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = bench_cli("run", "--socket", str(agent.socket), "-c", "4", "-n", "10",
                     "--key", "it-id_ed25519", "--json", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["results"]["attempted"] == report["results"]["ok"] == 40
    assert report["run"]["key"]["comment"] == "it-id_ed25519"
    assert bench_cli("validate", str(out)).stdout == "OK\n"
    check = bench_cli("check", str(out), "--min-rps", "1", "--max-failure-rate", "0")
    assert check.returncode == 0 and "gate: PASS" in check.stdout


@pytest.mark.parametrize(
    ("key", "flags", "reconnect"),
    [("it-id_ecdsa", 0, False), ("it-id_rsa", 4, False), ("it-id_ed25519", 0, True)],
)
def test_workloads(agent: OpenSSHAgent, key: str, flags: int, reconnect: bool) -> None:
    report = run_bench(
        BenchOptions(
            socket=str(agent.socket),
            concurrency=4,
            requests=5,
            key=key,
            flags=flags,
            reconnect=reconnect,
            processes=2,
        )
    )
    assert validate_report(report) == []
    assert report["results"]["ok"] == 20 and report["results"]["failed"] == 0


def test_duration_reconnect_with_zero_warmup(agent: OpenSSHAgent) -> None:
    report = run_bench(
        BenchOptions(socket=str(agent.socket), concurrency=16, duration_ms=500, reconnect=True)
    )
    assert validate_report(report) == []
    assert report["run"]["warmup_per_worker"] == 0
    assert report["results"]["attempted"] > 0
    assert report["results"]["failure_rate"] == 0.0


def test_list_workload(agent: OpenSSHAgent) -> None:
    report = run_bench(
        BenchOptions(socket=str(agent.socket), workload="list", concurrency=2, requests=20)
    )
    assert report["results"]["ok"] == 40 and report["run"]["payload_size"] == 0


def test_agent_dying_mid_run_is_counted_not_hung(agent: OpenSSHAgent) -> None:
    killer = threading.Timer(0.5, lambda: agent.proc.send_signal(signal.SIGKILL))
    killer.start()
    started = time.monotonic()
    try:
        report = run_bench(
            BenchOptions(socket=str(agent.socket), concurrency=8, duration_ms=1500,
                         reconnect=True, connect_timeout_ms=500, response_timeout_ms=500)
        )  # fmt: skip
    finally:
        killer.cancel()
    assert time.monotonic() - started < 30
    assert validate_report(report) == []
    results = report["results"]
    assert results["ok"] > 0
    assert results["failed"] > 0
    assert results["failures"]["connect_failures"] + results["failures"]["request_failures"] > 0


def test_queue_wait_from_secretivex_metrics(tmp_path: Path, keydir: Path) -> None:
    metrics = tmp_path / "metrics.json"
    config = tmp_path / "agent.yaml"
    config.write_text(f"metrics:\n  path: {metrics}\n  interval_ms: 100\n")
    with running_agent(
        tmp_path, "--key", str(keydir / "id_ed25519"), "--config", str(config)
    ) as sx:
        deadline = time.monotonic() + 10
        while not metrics.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        report = run_bench(
            BenchOptions(
                socket=str(sx.socket),
                concurrency=4,
                requests=25,
                metrics_file=str(metrics),
                metrics_wait_ms=3000,
            )
        )
    assert validate_report(report) == []
    queue_wait = report["queue_wait"]
    assert queue_wait["available"] and queue_wait["fresh"], queue_wait
    assert queue_wait["window"] == "delta"
    # Preflight sign + 4 warmup + 100 measured signs, nothing else.
    assert queue_wait["count"] == 105
