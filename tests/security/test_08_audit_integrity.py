"""Issue 11 item 8: a full audit disk never stops signing and never leaves a torn line;
drops are visible (rate-limited WARNING, ``audit.dropped`` in the snapshot,
``secretivex_audit_dropped_total`` in Prometheus text); an unwritable audit path is a
config error (exit 2, one line naming audit.path) for the agent and for `config
validate`; a refused peer retrying in a loop is aggregated into a summary record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from harness import SECRETIVEX, keygen, require_tool, running_agent
from sec_a_helpers import NOBODY, as_uid, need_root_and_setpriv, python_for, wait_until

from secretivex.client import SyncAgentClient


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\n")[:-1]


def _verify(public: Ed25519PublicKey, signature_blob: bytes, data: bytes) -> None:
    # string "ssh-ed25519" || string signature
    name_len = int.from_bytes(signature_blob[:4], "big")
    sig_len = int.from_bytes(signature_blob[4 + name_len : 8 + name_len], "big")
    raw = signature_blob[8 + name_len : 8 + name_len + sig_len]
    public.verify(raw, data)  # raises InvalidSignature


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a 64 KiB tmpfs for the full-disk test needs root (as in CI)")
    mount_point = tmp_path / "audit-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_audit_disk_never_stops_signing_nor_tears_lines(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    require_tool("ssh-keygen")
    key = keygen(tmp_path, "id_ed25519", comment="audited")
    public = load_ssh_public_key(key.with_suffix(".pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    # Most of the disk is taken by a filler the test deletes later ("freeing space").
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * 40 * 1024)
    audit = small_tmpfs / "audit.jsonl"
    snapshot = tmp_path / "metrics.json"
    prom = tmp_path / "metrics.prom"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"audit:\n  path: {audit}\n"
        f"metrics:\n  path: {snapshot}\n  interval_ms: 200\n  prometheus_textfile: {prom}\n"
    )
    started = time.monotonic()
    with running_agent(tmp_path, "--config", str(config)) as agent:
        with SyncAgentClient.connect(str(agent.socket)) as client:
            blob = client.list_identities()[0].blob
            full_after = None
            for i in range(600):
                data = f"payload {i}".encode()
                _verify(public, client.sign(blob, data), data)  # every sign succeeds
                if full_after is None and i % 20 == 0:
                    # The disk is full once no new record lands.
                    before = audit.stat().st_size
                    data = b"probe"
                    _verify(public, client.sign(blob, data), data)
                    if audit.stat().st_size == before:
                        full_after = i
            assert full_after is not None, "the audit disk never filled up"
            full_lines = _lines(audit)
            filler.unlink()  # free space: records must appear again, on fresh lines
            for i in range(5):
                data = f"after {i}".encode()
                _verify(public, client.sign(blob, data), data)
        assert wait_until(
            lambda: (
                snapshot.exists()
                and json.loads(snapshot.read_text()).get("audit", {}).get("dropped", 0) > 0
            ),
            15,
        ), snapshot.read_text() if snapshot.exists() else "no snapshot"
        dropped = json.loads(snapshot.read_text())["audit"]["dropped"]
        assert wait_until(
            lambda: (
                prom.exists()
                and re.search(r"^secretivex_audit_dropped_total [1-9]", prom.read_text(), re.M)
            ),
            15,
        )
        log = agent.log()
    elapsed = time.monotonic() - started
    lines = _lines(audit)
    records = [json.loads(line) for line in lines]  # no torn line anywhere
    assert len(lines) > len(full_lines)
    assert lines[: len(full_lines)] == full_lines
    assert all(r["request"] == "sign" and r["outcome"] == "ok" for r in records[len(full_lines) :])
    assert dropped > 0
    warnings = [line for line in log.splitlines() if "WARNING" in line and "audit log" in line]
    # One warning per 10 s at most, plus the "writing again" notice.
    assert 1 <= len(warnings) <= 2 + int(elapsed // 10), warnings
    print(
        f"\nfull audit disk: {600 + 600 // 20 + 5 + 1} signs all verified, disk full after "
        f"~{full_after} signs, {len(lines)} whole JSON lines, dropped={dropped}, "
        f"{len(warnings)} warning line(s) in {elapsed:.1f} s"
    )


def _one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    output = (result.stdout + result.stderr).strip()  # validate reports on stdout
    lines = output.splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert "audit.path" in lines[0]
    return lines[0]


def test_unwritable_audit_path_is_a_config_error(tmp_path: Path) -> None:
    need_root_and_setpriv()
    exe, py_env = python_for(NOBODY)
    shared = Path(__import__("tempfile").mkdtemp(prefix="secretivex-sec-a-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        locked = shared / "root-only"
        locked.mkdir(mode=0o755)  # root's directory: nobody cannot create files in it
        config = shared / "c.yaml"
        config.write_text(f"stores: []\naudit:\n  path: {locked / 'audit.jsonl'}\n")
        config.chmod(0o644)
        env = {**py_env, "PATH": "/usr/bin:/bin", "HOME": str(shared)}
        validate = subprocess.run(
            as_uid(NOBODY, [exe, "-m", "secretivex", "config", "validate", str(config)]),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "not writable" in _one_line_exit_2(validate)
        agent = subprocess.run(
            as_uid(
                NOBODY,
                [
                    exe,
                    "-m",
                    "secretivex",
                    "agent",
                    "--config",
                    str(config),
                    "--socket",
                    str(shared / "a.sock"),
                ],
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "not writable" in _one_line_exit_2(agent)
        # validate's --no-path-checks (config for another machine) skips the check.
        skipped = subprocess.run(
            as_uid(
                NOBODY,
                [exe, "-m", "secretivex", "config", "validate", "--no-path-checks", str(config)],
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert skipped.returncode == 0, skipped.stderr
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)

    # As root: a directory is no audit file; a missing directory stops the agent at start,
    # and validate says so (AUDIT-REPORT F8: it used to pass it; systemd's LogsDirectory=
    # creates the directory before the agent starts, validate it then, or elsewhere with
    # --no-path-checks).
    as_dir = tmp_path / "dir.yaml"
    as_dir.write_text(f"stores: []\naudit:\n  path: {tmp_path}\n")
    for argv in (
        [SECRETIVEX, "config", "validate", str(as_dir)],
        [SECRETIVEX, "agent", "--config", str(as_dir), "--socket", str(tmp_path / "b.sock")],
    ):
        assert "is a directory" in _one_line_exit_2(
            subprocess.run(argv, capture_output=True, text=True, timeout=60)
        )
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"stores: []\naudit:\n  path: {tmp_path / 'nope' / 'audit.jsonl'}\n")
    for argv in (
        [SECRETIVEX, "config", "validate", str(missing)],
        [SECRETIVEX, "agent", "--config", str(missing), "--socket", str(tmp_path / "c.sock")],
    ):
        assert f"directory {tmp_path / 'nope'} does not exist" in _one_line_exit_2(
            subprocess.run(argv, capture_output=True, text=True, timeout=60)
        )


def test_repeated_peer_denied_records_are_aggregated(tmp_path: Path) -> None:
    need_root_and_setpriv()
    exe, _ = python_for(NOBODY)
    shared = Path(__import__("tempfile").mkdtemp(prefix="secretivex-sec-a-", dir="/tmp"))
    shared.chmod(0o755)
    listener = shared / "team.sock"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores: []\nlisteners:\n  - socket: {listener}\n    mode: '0666'\n"
        f"audit:\n  path: {audit}\n"
    )
    knock = (
        "import socket, sys\n"
        "for _ in range(50):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "    s.settimeout(10); s.recv(1); s.close()\n"
    )
    try:
        with running_agent(tmp_path, "--config", str(config)) as agent:
            result = subprocess.run(
                as_uid(NOBODY, [exe, "-c", knock, str(listener)]),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            agent.signal(signal.SIGTERM)
            assert agent.proc.wait(30) == 0
    finally:
        subprocess.run(["rm", "-rf", str(shared)], check=False)
    denied = [
        r
        for r in (json.loads(line) for line in audit.read_text().splitlines())
        if r["outcome"] == "peer_denied" and r["peer_uid"] == NOBODY
    ]
    # The first refusal as usual, then one summary for the other 49 (window 10 s; the
    # summary is written at exit at the latest).
    assert len(denied) == 2, denied
    first, summary = denied
    assert "count" not in first
    assert summary["aggregated"] is True and summary["count"] == 49
    assert summary["listener"] == first["listener"] and summary["first_time"] >= first["time"]


def test_aggregation_window_rolls_over() -> None:
    """In-process, with a stepped clock: after the window a summary is written before
    the next refusal opens a new window; other records pass through untouched."""
    from secretivex.agent.audit import AuditLog

    now = [0.0]
    path = Path(__import__("tempfile").mkdtemp()) / "audit.jsonl"
    log = AuditLog(str(path), clock=lambda: now[0])
    denied = {"request": "connect", "outcome": "peer_denied", "listener": "l", "peer_uid": 7}
    for _ in range(3):
        log.record(**denied)
    log.record(request="sign", outcome="ok", peer_uid=1000)
    now[0] = AuditLog.DENIED_WINDOW_S + 1
    log.record(**denied)
    log.record(**{**denied, "peer_uid": 8})
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    shape = [(r["outcome"], r["peer_uid"], r.get("count")) for r in records]
    assert shape == [
        ("peer_denied", 7, None),
        ("ok", 1000, None),
        ("peer_denied", 7, 2),
        ("peer_denied", 7, None),
        ("peer_denied", 8, None),
    ]
