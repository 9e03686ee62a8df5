"""`secretivex client` and `secretivex bench` command lines: output and exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import verify_ssh_signature
from test_bench_engine import KEY, FakeAgent
from test_bench_report import sample_report
from typer.testing import CliRunner

from secretivex.cli.main import app
from secretivex.metrics import MetricsRecorder, write_snapshot_atomic

SECRETIVEX = str(Path(sys.executable).with_name("secretivex"))
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def snapshot_file(tmp_path: Path, waits: list[int], age_ms: int = 0) -> Path:
    captured = int(time.time() * 1000) - age_ms
    rec = MetricsRecorder("balanced", clock_ms=lambda: captured, cpus=4)
    for ns in waits:
        rec.on_queue_wait(ns)
    rec.on_request("sign", "ok", 1000)
    path = tmp_path / "metrics.json"
    write_snapshot_atomic(path, rec.snapshot("periodic"))
    return path


# -- metrics --------------------------------------------------------------------------


def test_metrics_summary(tmp_path: Path) -> None:
    code, out, _ = invoke("client", "metrics", str(snapshot_file(tmp_path, [1000, 2000])))
    assert code == 0
    assert "queue wait: 2 waits" in out and "suggested guardrail (balanced)" in out


def test_metrics_guardrail_pass_and_fail(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path, [1_000] * 90 + [50_000_000] * 10)
    code, out, _ = invoke(
        "client", "metrics", str(path), "--queue-wait-tail-ns", "10000000",
        "--queue-wait-tail-max-ratio", "0.2",
    )  # fmt: skip
    assert code == 0 and "guardrail: PASS" in out
    code, out, _ = invoke(
        "client", "metrics", str(path), "--queue-wait-tail-ns", "10000000",
        "--queue-wait-tail-max-ratio", "0.05",
    )  # fmt: skip
    assert code == 3 and "guardrail: FAIL" in out
    code, out, _ = invoke("client", "metrics", str(path), "--queue-wait-tail-profile", "pssh")
    assert code == 3


def test_metrics_stale_snapshot_exits_3(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path, [1], age_ms=60_000)
    code, out, _ = invoke("client", "metrics", str(path), "--queue-wait-max-age-ms", "5000")
    assert code == 3 and "stale" in out
    code, _, _ = invoke("client", "metrics", str(path), "--queue-wait-max-age-ms", "120000")
    assert code == 0


def test_metrics_json(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path, [5])
    code, out, _ = invoke(
        "client", "metrics", str(path), "--json", "--queue-wait-tail-profile", "balanced"
    )
    assert code == 0
    data = json.loads(out)
    assert data["guardrail"]["ok"] is True and data["schema_problems"] == []
    assert data["guardrail"]["source"] == "profile:balanced"


@pytest.mark.parametrize(
    ("content", "message"),
    [("{broken", "not valid JSON"), ("[]", "JSON object"), ("{}", "no meta.schema_version")],
)
def test_metrics_malformed_snapshot_exits_1(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    code, _, err = invoke("client", "metrics", str(path))
    assert code == 1 and message in err and "Traceback" not in err


def test_metrics_missing_file_exits_1(tmp_path: Path) -> None:
    code, _, err = invoke("client", "metrics", str(tmp_path / "none.json"))
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--queue-wait-tail-ns", "5"],
        ["--queue-wait-tail-max-ratio", "0.1"],
        ["--queue-wait-tail-profile", "balanced", "--queue-wait-tail-ns", "5"],
        ["--queue-wait-tail-profile", "turbo"],
        ["--queue-wait-tail-ns", "5", "--queue-wait-tail-max-ratio", "2"],
    ],
)
def test_metrics_bad_guardrail_flags_exit_2(tmp_path: Path, flags: list[str]) -> None:
    code, _, _ = invoke("client", "metrics", str(snapshot_file(tmp_path, [1])), *flags)
    assert code == 2


def test_guardrail_flags_without_a_file_exit_2() -> None:
    code, _, _ = invoke("client", "metrics", "--queue-wait-tail-profile", "balanced")
    assert code == 2


# -- agent commands -------------------------------------------------------------------


def test_list_sign_health_against_a_fake_agent(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    data = tmp_path / "data"
    data.write_bytes(b"payload")
    with FakeAgent(sock):
        code, out, _ = invoke("client", "list", "--socket", str(sock))
        assert code == 0 and out.strip() == f"{KEY.fingerprint} ssh-ed25519 fake-key"
        code, out, _ = invoke("client", "list", "--socket", str(sock), "--json", "-f", "nope*")
        assert code == 0 and json.loads(out) == []
        code, out, _ = invoke(
            "client", "sign", "--socket", str(sock), "--key", KEY.fingerprint, "--data", str(data)
        )
        assert code == 0
        # Checked with cryptography, not the package's own verifier.
        verify_ssh_signature(KEY.public_blob, b"payload", base64.b64decode(out))
        sig_file = tmp_path / "sig"
        code, _, _ = invoke(
            "client", "sign", "--socket", str(sock), "--comment", "fake*",
            "--data", str(data), "--out", str(sig_file),
        )  # fmt: skip
        assert code == 0
        verify_ssh_signature(KEY.public_blob, b"payload", sig_file.read_bytes())
        code, _, err = invoke(
            "client", "sign", "--socket", str(sock), "--comment", "other", "--data", str(data)
        )
        assert code == 1 and "no key" in err
        code, out, _ = invoke("client", "health", "--socket", str(sock))
        assert code == 0 and "store detail unavailable" in out
        code, out, _ = invoke("client", "wait-ready", "--socket", str(sock))
        assert code == 0 and out.startswith("ready:")


@pytest.mark.parametrize(
    "args",
    [
        ["client", "sign", "--data", "/dev/null"],
        ["client", "sign", "--data", "/dev/null", "--key", "x", "--comment", "y"],
        ["client", "sign", "--data", "/dev/null", "--key", "not-a-fingerprint"],
        ["client", "sign", "--data", "/dev/null", "--comment", "x", "--flags", "sha3"],
        ["client", "list", "--filter", "SHA256:bad"],
        ["bench", "run", "--workload", "verify"],
        ["bench", "run", "--requests", "1", "--duration", "1"],
        ["bench", "run", "--duration", "soon"],
        ["bench", "run", "--json", "--csv"],
        ["bench", "run", "--concurrency", "0"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    code, _, err = invoke(*args, *(["--socket", str(tmp_path / "none")] if args[0] else []))
    assert code == 2, err
    assert "Traceback" not in err


def test_unreachable_agent_exits_1_without_traceback(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sock")
    for args in (
        ["client", "list", "--socket", missing],
        ["client", "health", "--socket", missing],
        ["client", "wait-ready", "--socket", missing, "--timeout-ms", "100"],
        ["bench", "run", "--socket", missing, "-n", "1"],
    ):
        proc = subprocess.run([SECRETIVEX, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "cannot connect to the agent" in proc.stderr


# -- bench report commands ------------------------------------------------------------


def test_bench_schema_and_validate(tmp_path: Path) -> None:
    code, out, _ = invoke("bench", "schema")
    assert code == 0 and json.loads(out)["title"] == "secretivex bench report"
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sample_report()))
    assert invoke("bench", "validate", str(good))[:2] == (0, "OK\n")
    bad = tmp_path / "bad.json"
    broken = sample_report()
    broken["results"]["rps"] = "fast"
    bad.write_text(json.dumps(broken))
    code, _, err = invoke("bench", "validate", str(good), str(bad))
    assert code == 2 and "results/rps" in err
    code, _, err = invoke("bench", "validate", str(tmp_path / "none.json"))
    assert code == 2 and "no such file" in err


def test_bench_check_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(sample_report()))
    code, out, _ = invoke("bench", "check", str(path), "--min-rps", "100")
    assert code == 0 and "gate: PASS" in out
    code, out, _ = invoke("bench", "check", str(path), "--max-failure-rate", "0")
    assert code == 3 and "FAIL failure_rate" in out
    zero = sample_report()
    zero["results"].update(attempted=0, ok=0, failed=0, failure_rate=None, success_rate=None)
    zero["results"]["failures"]["request_failures"] = 0
    path.write_text(json.dumps(zero))
    code, out, _ = invoke("bench", "check", str(path), "--min-rps", "100")
    assert code == 3 and out.startswith("attempted=0")
    assert "rps" not in out.split("gate:")[0].split("\n", 1)[1]


def test_bench_trend_and_compare(tmp_path: Path) -> None:
    current = tmp_path / "c.json"
    current.write_text(json.dumps(sample_report()))
    code, out, _ = invoke("bench", "trend", str(current), "--budget", "0.2")
    assert code == 0 and "no previous report" in out
    code, _, _ = invoke("bench", "trend", str(current), "--budget", "0.05")
    assert code == 3
    runs = tmp_path / "runs"
    runs.mkdir()
    for agent in ("openssh", "secretivex"):
        (runs / f"ed25519__{agent}__0.json").write_text(json.dumps(sample_report()))
    code, out, _ = invoke("bench", "compare", str(runs), "--targets", "ed25519=5", "--enforce")
    assert code == 3 and "1.00x" in out
    code, _, _ = invoke("bench", "compare", str(runs), "--targets", "ed25519")
    assert code == 2


def test_bench_run_json_and_csv(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    out_file = tmp_path / "report.json"
    with FakeAgent(sock):
        code, out, _ = invoke(
            "bench", "run", "--socket", str(sock), "-c", "2", "-n", "3", "--json",
            "--out", str(out_file), "--no-progress",
        )  # fmt: skip
        assert code == 0
        assert json.loads(out)["results"]["ok"] == 6
        assert json.loads(out_file.read_text())["results"]["ok"] == 6
        code, out, _ = invoke(
            "bench", "run", "--socket", str(sock), "-c", "1", "-n", "2", "--csv", "--workload",
            "list",
        )  # fmt: skip
        assert code == 0 and out.count("\n") == 2
        code, out, _ = invoke("bench", "run", "--socket", str(sock), "-c", "1", "-d", "200ms")
        assert code == 0 and "bench: sign x1 0.2 s persistent" in out


def test_bench_idle_holds_connections(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    ready = tmp_path / "ready"
    with FakeAgent(sock) as agent:
        code, out, _ = invoke(
            "bench", "idle", "--socket", str(sock), "--connections", "5", "--hold", "100ms",
            "--ready-file", str(ready), "--json",
        )  # fmt: skip
        assert code == 0, out
        assert json.loads(out)["opened"] == 5 and ready.exists()
        assert agent.connections == 5
    code, _, _ = invoke("bench", "idle", "--socket", str(sock), "--connections", "2", "--hold", "0")
    assert code == 3  # nothing listening: not every connection opened


def test_health_duplicates_stores_and_strict(tmp_path: Path) -> None:
    from test_client_unit import HealthAgent

    from secretivex.protocol import IdentitiesAnswer, RequestIdentities, encode_response, frame
    from secretivex.protocol import parse_request as parse

    class DuplicatingAgent(HealthAgent):
        def _answer(self, payload: bytes) -> bytes | None:
            if isinstance(parse(payload), RequestIdentities):
                twice = ((KEY.public_blob, "one"), (KEY.public_blob, "two"))
                return frame(encode_response(IdentitiesAnswer(twice)))
            return super()._answer(payload)

    document = {
        "version": "9.9",
        "locked": False,
        "stores": [
            {"name": "file-0", "kind": "file", "state": "ok", "keys": 2, "last_error": None},
            {"name": "tok", "kind": "pkcs11", "state": "degraded", "keys": 0,
             "last_error": "token removed", "detail": {}},
        ],
        "listeners": [{"socket": "/run/x.sock"}],
    }  # fmt: skip
    sock = tmp_path / "a.sock"
    with DuplicatingAgent(sock, json.dumps(document).encode()):
        code, out, _ = invoke("client", "health", "--socket", str(sock))
        assert code == 0
        assert "agent: " in out and "(secretivex 9.9)" in out
        assert "identities: 2 (duplicates: 1)" in out
        assert "duplicate " + KEY.fingerprint + " x2: one, two" in out
        assert "tok (pkcs11): degraded, 0 keys  last error: token removed" in out
        assert "/run/x.sock" in out
        code, out, _ = invoke("client", "health", "--socket", str(sock), "--strict", "--json")
        assert code == 3
        data = json.loads(out)
        assert data["store_detail"] == "available"
        assert data["duplicates"][0]["count"] == 2
        assert data["problems"] == ["1 key(s) listed more than once", "store tok is degraded"]
