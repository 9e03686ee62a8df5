"""secretivex.agent.systemd: socket activation and sd_notify, against real sockets.

The socket-activation tests run the real ``systemd-socket-activate`` (no PID 1
needed); they skip when it is absent, and fail instead under SECRETIVEX_REQUIRE_ALL=1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretivex.agent import systemd
from secretivex.agent.systemd import SystemdError, parse_listen_env

REPO = Path(__file__).resolve().parents[2]


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian: apt-get install systemd)"
    if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
        pytest.fail(f"SECRETIVEX_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------- parsing


def test_parse_nothing_when_unset() -> None:
    assert parse_listen_env({}, pid=42) == []
    assert parse_listen_env({"LISTEN_FDS": "2"}, pid=42) == []


def test_parse_ignores_other_pid() -> None:
    assert parse_listen_env({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, pid=42) == []


def test_parse_counts_from_fd_3_with_names() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "agent:/run/x/ci.sock:"}
    assert parse_listen_env(env, pid=42) == [(3, "agent"), (4, "/run/x/ci.sock"), (5, None)]


def test_parse_without_names() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2"}
    assert parse_listen_env(env, pid=42) == [(3, None), (4, None)]


def test_parse_zero_fds() -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}
    assert parse_listen_env(env, pid=42) == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "LISTEN_PID"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "99999"}, "LISTEN_FDS"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "agent"}, "LISTEN_FDNAMES"),
        ({"LISTEN_PID": "42", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a\nb"}, "invalid name"),
    ],
)
def test_parse_rejects_malformed(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SystemdError, match=needle):
        parse_listen_env(env, pid=42)


def test_listen_fds_unsets_env_even_when_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "agent")
    assert systemd.listen_fds() == []
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert var not in os.environ


def test_listen_fds_keeps_env_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds(unset_env=False) == []
    assert os.environ["LISTEN_FDS"] == "1"


# ------------------------------------------------------------------ adoption (subprocess)

# Runs in the activated child: adopt the fds, then answer every announced socket's
# first connection with a JSON report, so the parent sees what arrived.
_CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from secretivex.agent.systemd import listen_fds
    env_before = {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")}
    items = listen_fds()
    leaked = subprocess.run(
        [sys.executable, "-c",
         "import os; print(sorted(k for k in os.environ if k.startswith('LISTEN_')))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    report = {
        "pid": os.getpid(),
        "env_before": env_before,
        "env_after": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "child_env": leaked,
        "items": [
            {"fd": i.fd, "name": i.name, "main": i.is_main, "path": i.path,
             "listening": i.listening, "inheritable": os.get_inheritable(i.fd),
             "type": int(i.socket.type)}
            for i in items
        ],
    }
    for index, item in enumerate(items):
        conn, _ = item.socket.accept()
        with conn:
            conn.sendall(json.dumps({"served_by": index, **report}).encode() + b"\\n")
    """
)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _connect(path: Path, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path("/tmp") / f"sxsd-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _activate(tool: str, sockets: list[Path], names: list[str] | None) -> subprocess.Popen[bytes]:
    cmd = [tool]
    for path in sockets:
        cmd += ["-l", str(path)]
    if names is not None:
        cmd.append("--fdname=" + ":".join(names))
    cmd += ["-E", f"PYTHONPATH={REPO}", "-E", "PATH", sys.executable, "-c", _CHILD]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _reports(proc: subprocess.Popen[bytes], sockets: list[Path]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    try:
        conns = [_connect(path, deadline) for path in sockets]
        out = []
        for conn in conns:
            conn.settimeout(20)
            with conn:
                out.append(json.loads(_recv_all(conn)))
        assert proc.wait(timeout=20) == 0
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        if proc.returncode not in (0, None, -9):
            print(err.decode(errors="replace"), file=sys.stderr)


def test_socket_activation_single_named_fd(short_tmp: Path) -> None:
    tool = _require_tool("systemd-socket-activate")
    sock = short_tmp / "agent.sock"
    proc = _activate(tool, [sock], ["agent"])
    (report,) = _reports(proc, [sock])
    assert report["env_before"] == {
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "agent",
        "LISTEN_PID": str(report["pid"]),
    }
    assert report["env_after"] == []
    assert report["child_env"] == "[]"
    assert report["items"] == [
        {
            "fd": 3,
            "name": "agent",
            "main": True,
            "path": str(sock),
            "listening": True,
            "inheritable": False,
            "type": int(socket.SOCK_STREAM),
        }
    ]


def test_socket_activation_two_fds_map_by_name(short_tmp: Path) -> None:
    tool = _require_tool("systemd-socket-activate")
    main, team = short_tmp / "agent.sock", short_tmp / "team.sock"
    proc = _activate(tool, [main, team], ["agent", str(team)])
    reports = _reports(proc, [main, team])
    assert [r["served_by"] for r in reports] == [0, 1]
    items = reports[0]["items"]
    assert isinstance(items, list)
    assert [(i["fd"], i["name"], i["main"], i["path"], i["listening"]) for i in items] == [
        (3, "agent", True, str(main), True),
        (4, str(team), False, str(team), True),
    ]


def test_socket_activation_unnamed_fd_is_main(short_tmp: Path) -> None:
    tool = _require_tool("systemd-socket-activate")
    sock = short_tmp / "agent.sock"
    proc = _activate(tool, [sock], None)
    (report,) = _reports(proc, [sock])
    items = report["items"]
    assert isinstance(items, list)
    (item,) = items
    assert item["fd"] == 3
    assert item["main"] is True
    assert item["listening"] is True


def test_listen_fds_without_the_tool(short_tmp: Path) -> None:
    """The same protocol by hand (dup2 to fd 3), so the logic is covered everywhere."""
    path = short_tmp / "hand.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    launcher = textwrap.dedent(
        f"""
        import os, sys
        fd = int(sys.argv[1])
        os.dup2(fd, 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="main")
        exec(compile({_CHILD!r}, "child", "exec"))
        """
    )
    with listener:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(listener.fileno())],
            pass_fds=[listener.fileno()],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        (report,) = _reports(proc, [path])
    items = report["items"]
    assert isinstance(items, list)
    assert items[0]["name"] == "main"
    assert items[0]["main"] is True
    assert items[0]["listening"] is True
    assert items[0]["inheritable"] is False


def test_listen_fds_rejects_a_closed_fd() -> None:
    code = textwrap.dedent(
        """
        import os
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        try:
            os.close(3)
        except OSError:
            pass
        from secretivex.agent.systemd import SystemdError, listen_fds
        try:
            listen_fds()
        except SystemdError as exc:
            print("ERR", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert out.startswith("ERR socket activation: fd 3 (unnamed) is not open")


# --------------------------------------------------------------------------- notify


@pytest.fixture
def notify_listener(short_tmp: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify.sock"))
    sock.settimeout(5)
    with sock:
        yield sock


def test_notify_ready_to_path_socket(
    notify_listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_listener.getsockname())
    assert systemd.notify("READY=1") is True
    assert notify_listener.recv(4096) == b"READY=1"
    assert systemd.notify("READY=1\nSTATUS=serving 3 keys") is True
    assert notify_listener.recv(4096) == b"READY=1\nSTATUS=serving 3 keys"


def test_notify_ready_to_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"secretivex-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"
        assert systemd.notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_reloading_carries_monotonic_usec(
    notify_listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_listener.getsockname())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.notify("RELOADING=1") is True
    lines = notify_listener.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    # a bare RELOADING=1 through notify() gets the timestamp too
    assert systemd.notify("RELOADING=1") is True
    assert notify_listener.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")


@pytest.mark.parametrize("value", [None, "", "relative/notify.sock", "vsock:2:1234"])
def test_notify_false_when_not_under_systemd(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False


def test_notify_never_raises_on_dead_socket(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone.sock"))
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@secretivex-nobody-listens-" + secrets.token_hex(8))
    assert systemd.notify("STOPPING=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/" + "x" * 200)  # too long for sockaddr_un
    assert systemd.notify("READY=1") is False


# ------------------------------------------------- MemoryDenyWriteExecute= emulation

# The units set MemoryDenyWriteExecute=yes. systemd implements it with a seccomp
# filter: mmap() with PROT_WRITE|PROT_EXEC, and mprotect()/pkey_mprotect() adding
# PROT_EXEC, fail with EPERM. This installs the same filter (raw BPF via ctypes, no
# libseccomp) in a child, proves it bites, then runs the agent's whole native stack.
_MDWE_CHILD = textwrap.dedent(
    r"""
    import ctypes, mmap, os, platform, struct, subprocess, sys

    ARCH = {"x86_64": (0xC000003E, 9, 10, 329), "aarch64": (0xC00000B7, 222, 226, 288)}
    audit_arch, nr_mmap, nr_mprotect, nr_pkey = ARCH[platform.machine()]
    ALLOW, DENY = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO|EPERM
    LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
    PROT_WX, PROT_X = 0x2 | 0x4, 0x4
    prog = [  # (code, jt-label, jf-label, k, label)
        (LD, None, None, 4, None),                 # arch
        (JEQ, None, "allow", audit_arch, None),
        (LD, None, None, 0, None),                 # syscall nr
        (JEQ, "mmap", None, nr_mmap, None),
        (JEQ, "x", None, nr_mprotect, None),
        (JEQ, "x", None, nr_pkey, None),
        (RET, None, None, ALLOW, None),
        (LD, None, None, 32, "mmap"),              # low word of args[2] (prot)
        (AND, None, None, PROT_WX, None),
        (JEQ, "deny", "allow", PROT_WX, None),
        (LD, None, None, 32, "x"),
        (JSET, "deny", "allow", PROT_X, None),
        (RET, None, None, ALLOW, "allow"),
        (RET, None, None, DENY, "deny"),
    ]
    labels = {ins[4]: i for i, ins in enumerate(prog) if ins[4]}
    def off(i, label):
        return 0 if label is None else labels[label] - i - 1
    raw = b"".join(
        struct.pack("HBBI", c, off(i, jt), off(i, jf), k)
        for i, (c, jt, jf, k, _) in enumerate(prog)
    )
    buf = ctypes.create_string_buffer(raw)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    libc.prctl.argtypes = [ctypes.c_int, ulong, ctypes.c_void_p, ulong, ulong]
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        print("SKIP no_new_privs", ctypes.get_errno()); sys.exit(0)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        print("SKIP seccomp", ctypes.get_errno()); sys.exit(0)

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        print("FAIL the W+X mapping was allowed"); sys.exit(1)

    # the agent's native stack, exercised
    import anyio, bcrypt, orjson, pkcs11, pydantic, yaml, jsonschema, rich, typer  # noqa
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    ed25519.Ed25519PrivateKey.generate().sign(b"x")
    ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
    rsa.generate_private_key(65537, 2048).sign(b"x", padding.PKCS1v15(), hashes.SHA512())
    bcrypt.kdf(b"pw", b"salt" * 4, 32, 1, ignore_few_rounds=True)
    orjson.loads(orjson.dumps({"a": [1, 2.5, None]}))
    class M(pydantic.BaseModel):
        a: int
    assert M.model_validate({"a": "3"}).a == 3
    yaml.safe_load("a: [1, 2]")
    async def tick():
        await anyio.sleep(0)
        return "ticked"
    assert anyio.run(tick) == "ticked"
    import secretivex.cli.main  # noqa: the CLI imports cleanly
    out = subprocess.run([sys.executable, "-m", "secretivex", "--version"],
                         capture_output=True, text=True)
    print("OK", out.returncode, out.stdout.strip(), out.stderr.strip()[-300:])
    """
)


def test_python_stack_runs_under_memory_deny_write_execute() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MDWE_CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out = proc.stdout.strip()
    if out.startswith("SKIP"):
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail(f"cannot install a seccomp filter here: {out}")
        pytest.skip(f"cannot install a seccomp filter here: {out}")
    assert proc.returncode == 0, proc.stderr[-2000:] + out
    assert out.startswith("OK 0 secretivex "), out


# ------------------------------------------------------ the agent, socket-activated


def _agent_under_activation(
    tool: str, base: Path
) -> tuple[subprocess.Popen[str], socket.socket, Path]:
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(base / "notify"))
    notify_sock.settimeout(20)
    path = base / "agent.sock"
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(base / "notify"),
        "HOME": str(base),
        "XDG_RUNTIME_DIR": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
    }
    env.pop("SSH_AUTH_SOCK", None)
    passed = ["NOTIFY_SOCKET", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "PATH"]
    cmd = [tool, "-l", str(path), "--fdname=agent"]
    for var in passed:
        cmd += ["-E", var]
    secretivex = Path(sys.executable).with_name("secretivex")
    cmd += [str(secretivex), "agent", "--socket", str(path)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    return proc, notify_sock, path


def test_agent_adopts_the_activated_socket_and_notifies(short_tmp: Path) -> None:
    """The whole path: systemd-socket-activate -> `secretivex agent` adopts fd 3 (same
    inode, not a re-bind), answers a request, and reports READY/RELOADING/STOPPING."""
    tool = _require_tool("systemd-socket-activate")
    proc, notify_sock, path = _agent_under_activation(tool, short_tmp)
    try:
        with notify_sock:
            deadline = time.monotonic() + 20
            conn = _connect(path, deadline)
            inode = path.stat().st_ino
            with conn:
                conn.settimeout(20)
                conn.sendall(b"\x00\x00\x00\x01\x0b")  # SSH_AGENTC_REQUEST_IDENTITIES
                reply = conn.recv(5)
            assert reply[4:5] == b"\x0c"  # SSH_AGENT_IDENTITIES_ANSWER
            assert notify_sock.recv(4096) == b"READY=1"
            assert path.stat().st_ino == inode  # still systemd's socket
            proc.send_signal(signal.SIGHUP)
            reloading = notify_sock.recv(4096).decode()
            assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading
            assert notify_sock.recv(4096) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert notify_sock.recv(4096) == b"STOPPING=1"
            assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_activated_socket_survives_agent_exit(short_tmp: Path) -> None:
    """systemd keeps listening after the service stops; the path must stay, or the next
    client gets ENOENT instead of starting the agent again."""
    tool = _require_tool("systemd-socket-activate")
    proc, notify_sock, path = _agent_under_activation(tool, short_tmp)
    try:
        with notify_sock:
            with _connect(path, time.monotonic() + 20) as conn:
                conn.settimeout(20)
                conn.sendall(b"\x00\x00\x00\x01\x0b")
                assert conn.recv(5)[4:5] == b"\x0c"  # serving: signal handling is up
            assert notify_sock.recv(4096) == b"READY=1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0  # a clean exit, not killed by the signal
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert path.is_socket()


def test_reload_right_after_ready_is_safe(short_tmp: Path) -> None:
    """systemd may run ExecReload (kill -HUP) the moment READY=1 arrives."""
    tool = _require_tool("systemd-socket-activate")
    for attempt in range(6):
        base = short_tmp / str(attempt)
        base.mkdir()
        proc, notify_sock, path = _agent_under_activation(tool, base)
        try:
            with notify_sock:
                _connect(path, time.monotonic() + 20).close()
                assert notify_sock.recv(4096) == b"READY=1"
                proc.send_signal(signal.SIGHUP)
                notify_sock.settimeout(3)  # a killed agent sends nothing more
                assert notify_sock.recv(4096).startswith(b"RELOADING=1")
                assert notify_sock.recv(4096) == b"READY=1"
                assert proc.poll() is None
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_take_inherited_matches_by_bound_path_before_name(tmp_path: Path) -> None:
    """FileDescriptorName= is only a label: a socket is found by the path it is bound
    to (even one with a ':' no fd name may hold), a label naming another listener
    cannot swap two sockets, and each socket is handed out once."""
    path = tmp_path / "a:b.sock"
    by_path = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    misnamed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        by_path.bind(str(path))
        misnamed.bind(str(tmp_path / "ci.sock"))
        # "listener-0" is the label of ci.sock, but listener-0 is the socket at `path`
        inherited = {"listener-7": by_path, "listener-0": misnamed, "team": unbound}
        assert systemd.take_inherited(inherited, "listener-0", str(path)) is by_path
        assert systemd.take_inherited(inherited, "listener-0", str(path)) is None
        # a socket without a readable path is matched by its name
        assert systemd.take_inherited(inherited, "team", "/run/x/team.sock") is unbound
        assert inherited == {"listener-0": misnamed}
        assert systemd.take_inherited(inherited, "ci", str(tmp_path / "ci.sock")) is misnamed
    finally:
        for s in (by_path, misnamed, unbound):
            s.close()


def _identities(path: Path) -> bytes:
    """The agent's answer to a listing on ``path`` (b"" when it closes at once)."""
    with _connect(path, time.monotonic() + 20) as conn:
        conn.settimeout(20)  # a hang fails here, not the suite
        head = b""
        try:
            conn.sendall(b"\x00\x00\x00\x01\x0b")  # SSH_AGENTC_REQUEST_IDENTITIES
            while len(head) < 5 and (chunk := conn.recv(5 - len(head))):
                head += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed before it read the request
        return head[4:5]


def test_a_passed_socket_no_listener_serves_is_refused_not_left_hanging(
    short_tmp: Path,
) -> None:
    """A socket unit enabled without its ``listeners:`` entry: systemd keeps it
    listening and never starts the (running) agent again, so unless the agent closes
    its connections, every client waits forever. Refused with a WARNING until a reload
    adds the listener; refused again when a reload removes it."""
    tool = _require_tool("systemd-socket-activate")
    main, ops = short_tmp / "agent.sock", short_tmp / "ops.sock"
    config = short_tmp / "agent.yaml"
    config.write_text("{}\n")
    with_ops = f"listeners:\n  - socket: {ops}\n"
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(short_tmp / "notify"))
    notify_sock.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "notify"), "HOME": str(short_tmp)}
    env["XDG_RUNTIME_DIR"] = env["XDG_CONFIG_HOME"] = str(short_tmp)
    env.pop("SSH_AUTH_SOCK", None)
    cmd = [tool, "-l", str(main), "-l", str(ops), "--fdname=agent:ops"]
    for var in ("NOTIFY_SOCKET", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "PATH"):
        cmd += ["-E", var]
    secretivex = Path(sys.executable).with_name("secretivex")
    cmd += [str(secretivex), "agent", "--socket", str(main), "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with notify_sock:
            assert _identities(main) == b"\x0c"
            assert notify_sock.recv(4096) == b"READY=1"
            assert _identities(ops) == b""  # closed at once: ssh-add fails, never hangs

            config.write_text(with_ops)
            proc.send_signal(signal.SIGHUP)
            assert notify_sock.recv(4096).startswith(b"RELOADING=1")
            assert notify_sock.recv(4096) == b"READY=1"
            assert _identities(ops) == b"\x0c"  # the reload's listener adopted it

            config.write_text("{}\n")
            proc.send_signal(signal.SIGHUP)
            assert notify_sock.recv(4096).startswith(b"RELOADING=1")
            assert notify_sock.recv(4096) == b"READY=1"
            assert _identities(ops) == b""  # removed again: refused, not hanging
            assert _identities(main) == b"\x0c"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    warnings = [line for line in err.splitlines() if "no listener in the config serves" in line]
    assert len(warnings) == 2, err
    assert f"add a listeners: entry with socket: {ops}" in warnings[0]
