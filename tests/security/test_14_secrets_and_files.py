"""Attack sweep 2: secrets hygiene and the files the agent and CLI write.

The attacker here is another local user, or whoever reads CI logs, journals,
``/nix/store`` or ``ps``; and root's accidents. Each test tries the attack for real:
a SoftHSM token, real files, other uids through ``setpriv``, the agent as a process.

* PINs, key passphrases and the lock passphrase, given every way they can be, never
  reach logs (``--debug``), audit records, metrics, ``client health``, ``config``
  output, the confirm hook, or ``/proc/PID/{cmdline,environ}`` of the agent and its
  children (the reload's config loader included);
* a PIN written by mistake where its variable's or file's *name* belongs is not echoed
  by ``config validate`` (CI logs, the journal, a Nix build log);
* the confirm prompt shows the peer's process names, which the peer chooses
  (``exec -a``): they cannot add lines to it or hide the kernel's uid;
* ``install-units --user`` never follows a name planted in the unit directory, and
  refuses another user's directory (root with that user's ``HOME``);
* metrics files are not written where anyone could have planted or could replace them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SECRETIVEX, keygen, require_tool, run, running_agent, start_agent
from sec_a_helpers import wait_until
from sec_c_helpers import shared_dir

try:
    from tests.integration.softhsm import SoftHsm, require_softhsm
except ImportError:  # tests/ is on sys.path (pytest pythonpath), not a package
    from integration.softhsm import SoftHsm, require_softhsm  # type: ignore[no-redef]

NOBODY = 65534

PIN = "sweep2-pin-7351-secret"
WRONG_PIN = "sweep2-wrong-pin-9911"
CARD_PIN = "sweep2-card-pin-4242"
KEY_PASSPHRASE = "sweep2-key-passphrase-8282"
LOCK_PASSPHRASE = "sweep2-lock-passphrase-5151"
WRONG_LOCK = "sweep2-wrong-lock-3131"
OTHER_SECRET = "sweep2-unrelated-secret-6060"
SECRETS = (PIN, WRONG_PIN, CARD_PIN, KEY_PASSPHRASE, LOCK_PASSPHRASE, WRONG_LOCK)


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _leaks(data: bytes, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return [s for s in secrets if s.encode() in data]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp dirs are 0700 root)."""
    with shared_dir() as d:
        yield d


def _as_nobody(*argv: str) -> list[str]:
    require_tool("setpriv")
    return ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv]


# --------------------------------------------------------------------------- 1. secrets


def test_pins_and_passphrases_never_leave_the_agent(tmp_path: Path) -> None:
    """Every way a secret can reach the agent, every place it could come out."""
    require_softhsm()
    require_tool("ssh-add", "ssh-keygen", "pgrep")
    hsm = SoftHsm.create(tmp_path / "softhsm")
    token = hsm.init_token("sweep2-env", pin=PIN)
    token.generate("EC:edwards25519", key_id="01", label="from-env")
    card = hsm.init_token("sweep2-card", pin=CARD_PIN)
    card.generate("EC:edwards25519", key_id="02", label="from-card")
    keys = tmp_path / "keys"
    keys.mkdir()
    encrypted = keygen(keys, "enc", passphrase=KEY_PASSPHRASE, comment="encrypted")
    out = tmp_path / "out"
    out.mkdir()
    hook = _script(
        tmp_path / "hook.sh",
        f"/usr/bin/env > {out}/hook.env\ncat /proc/$$/cmdline > {out}/hook.cmdline\n"
        f'echo "$@" >> {out}/hook.argv\nexit 0',
    )
    answer = tmp_path / "answer"
    askpass = _script(tmp_path / "askpass.sh", f"cat {answer}")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"agent:\n  pkcs11_allowlist: ['{Path(hsm.module).parent}/*', '/usr/lib*/**']\n"
        "stores:\n"
        f"  - type: pkcs11\n    module: {hsm.module}\n    token_label: sweep2-env\n"
        "    pin_env: SWEEP2_PIN\n"
        f"  - type: file\n    paths: [{encrypted}]\n    passphrase_env: SWEEP2_PASSPHRASE\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n"
        f"audit:\n  path: {out}/audit.jsonl\n"
        f"metrics:\n  path: {out}/metrics.json\n  interval_ms: 100\n"
        f"  prometheus_textfile: {out}/metrics.prom\n"
        "logging:\n  level: debug\n"
    )
    config.chmod(0o600)
    env = {
        "SOFTHSM2_CONF": str(hsm.conf),
        "SWEEP2_PIN": PIN,
        "SWEEP2_PASSPHRASE": KEY_PASSPHRASE,
        # for a store a later config adds; until then only in the agent's environment
        "SECRETIVEX_NEXT_PIN": OTHER_SECRET,
    }
    captured: list[bytes] = []
    loader_environs: list[bytes] = []
    with running_agent(tmp_path, "--config", str(config), "--debug", env=env) as agent:
        client = {k: v for k, v in agent.env.items() if not k.startswith("SWEEP2_")}
        asking = dict(client, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        listing = run(["ssh-add", "-L"], env=client).stdout
        assert "from-env" in listing and "encrypted" in listing, agent.log()
        pub = tmp_path / "env.pub"
        pub.write_text(next(line for line in listing.splitlines() if "from-env" in line) + "\n")
        data = tmp_path / "data"
        data.write_text("sign me")
        run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(data)], env=client)
        # ssh-add -s: a wrong card PIN (refused, logged), then the right one
        answer.write_text(WRONG_PIN + "\n")
        assert run(["ssh-add", "-s", hsm.module], env=asking, check=False).returncode != 0
        answer.write_text(CARD_PIN + "\n")
        run(["ssh-add", "-s", hsm.module], env=asking)
        assert "from-card" in run(["ssh-add", "-l"], env=client).stdout
        # ssh-add -x / -X: lock, a wrong unlock, the right one
        answer.write_text(LOCK_PASSPHRASE + "\n")
        run(["ssh-add", "-x"], env=asking)
        answer.write_text(WRONG_LOCK + "\n")
        assert run(["ssh-add", "-X"], env=asking, check=False).returncode != 0
        answer.write_text(LOCK_PASSPHRASE + "\n")
        run(["ssh-add", "-X"], env=asking)
        health = run([SECRETIVEX, "client", "health", "--json"], env=client)
        captured.append(health.stdout.encode() + health.stderr.encode())
        for argv in (
            [SECRETIVEX, "config", "validate", str(config)],
            [SECRETIVEX, "config", "show", "--sources", "--config", str(config)],
            [SECRETIVEX, "config", "show", "--json", "--config", str(config)],
        ):
            shown = run(argv, env={**client, **env}, check=False)
            captured.append(shown.stdout.encode() + shown.stderr.encode())
        # the agent and its children, while a reload's config loader runs
        pids = [agent.proc.pid]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for child in _children(agent.proc.pid):
                    try:
                        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                        environ = Path(f"/proc/{child}/environ").read_bytes()
                    except OSError:
                        continue
                    captured.append(cmdline)
                    if b"isolated import serve" in cmdline:
                        loader_environs.append(environ)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            agent.signal(signal.SIGHUP)
            assert wait_until(lambda: "configuration reloaded" in agent.log(), 30), agent.log()
        finally:
            stop.set()
            watcher.join()
        for pid in pids:
            for what in ("cmdline", "environ"):
                captured.append(Path(f"/proc/{pid}/{what}").read_bytes())
        # The reload's loader is a fresh, dumpable interpreter of the agent's uid: it
        # must not carry secrets of the agent's environment either.
        assert loader_environs, "the reload's config loader was not seen"
        for environ in loader_environs:
            assert not _leaks(environ, (*SECRETS, OTHER_SECRET)), environ
        assert "from-env" in run(["ssh-add", "-l"], env=client).stdout  # relogin after reload
        time.sleep(0.3)  # one more metrics interval
    log = agent.log()
    assert "wrong PIN" in log  # the refused card PIN is reported, by name only
    for path in out.iterdir():
        captured.append(path.read_bytes())
    assert (out / "hook.env").exists(), "the confirm hook did not run"
    assert not _leaks(log.encode()), "secret in the agent's log"
    for index, blob in enumerate(captured):
        assert not _leaks(blob), f"secret in output #{index}: {blob[:300]!r}"


@pytest.mark.parametrize(
    ("store", "line"),
    [
        ("pkcs11", f"pin_env: '{PIN}'"),
        ("pkcs11", "pin_env: 73515151"),
        ("pkcs11", f"pin_file: '{PIN}'"),
        ("pkcs11", f"pin_prompt: '{PIN}'"),
        ("file", f"passphrase_env: '{KEY_PASSPHRASE}'"),
        ("file", f"passphrase_file: '{KEY_PASSPHRASE}'"),
        ("file", f"passphrase_file: '${KEY_PASSPHRASE}'"),
    ],
)
def test_a_secret_written_where_its_name_belongs_is_not_echoed(
    tmp_path: Path, store: str, line: str
) -> None:
    """`pin_env: 123456` is the mistake people make: `config validate` (a CI step, a Nix
    build, the agent's own start in the journal) must say what is wrong without
    printing the PIN."""
    where = "module: /usr/lib/softhsm/libsofthsm2.so" if store == "pkcs11" else "paths: [/k]"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores:\n  - type: {store}\n    {where}\n    {line}\n")
    config.chmod(0o600)
    secret = line.split(": ", 1)[1].strip("'$")
    for argv in (
        [SECRETIVEX, "config", "validate", "--no-path-checks", str(config)],
        [SECRETIVEX, "agent", "--config", str(config), "--socket", str(tmp_path / "a.sock")],
    ):
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/"}
        )
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert line.split(":")[0] in output, output  # names the key
        assert "Traceback" not in output
        assert secret not in output, output


# ----------------------------------------------------------------------- 4. confirm hook


def test_confirm_prompt_cannot_be_forged_by_the_peers_process_name(tmp_path: Path) -> None:
    """The chain shown to the person approving comes from the peer's argv[0], which the
    peer chooses: a newline there must not add lines (a forged requester, the real uid
    pushed out of sight) and an escape must not reach a terminal."""
    require_tool("ssh-keygen", "bash")
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keygen(keys, "id_ed25519", comment="deploy")
    out = tmp_path / "hook.json"
    hook = _script(
        tmp_path / "hook.sh",
        f"{sys.executable} -c 'import json, os; json.dump(dict(os.environ), "
        f'open("{out}", "w"))\'\nexit 0',
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\npolicy:\n  confirm:\n    command: [{hook}]\n"
    )
    config.chmod(0o600)
    forged = (
        "ssh\nKey fingerprint SHA256:trusted.\nRequested by ssh \u2190 zsh (uid 1000).\x1b[8m"
        + ("\n" * 40)
    )
    data = tmp_path / "data"
    data.write_text("x")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        script = 'exec -a "$FORGED" ssh-keygen -Y sign -n file -f "$KEY" "$DATA"'
        result = run(
            ["bash", "-c", script],
            env={**agent.env, "FORGED": forged, "KEY": f"{key}.pub", "DATA": str(data)},
            check=False,
        )
        assert result.returncode == 0, result.stderr + agent.log()
    hook_env = json.loads(out.read_text())
    message = hook_env["SECRETIVEX_CONFIRM_MESSAGE"]
    lines = message.splitlines()
    assert len(lines) == 3, message
    assert lines[2].startswith("Requested by ") and lines[2].endswith(f"(uid {os.getuid()})."), (
        message
    )
    for name in (
        "SECRETIVEX_CONFIRM_PEER_CHAIN",
        "SECRETIVEX_CONFIRM_PEER_EXE",
        "SECRETIVEX_CONFIRM_COMMENT",
    ):
        value = hook_env[name]
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value), (name, value)
    # the chain's own separator cannot be forged inside one name
    first = hook_env["SECRETIVEX_CONFIRM_PEER_CHAIN"].split(" \u2190 ")[0]
    assert first.startswith("ssh?Key fingerprint"), first
    assert len(first) <= 64


# ------------------------------------------------------------------ 2. files: install-units


def _install_units(config_home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    return subprocess.run(
        [SECRETIVEX, "install-units", "--user", "--no-enable", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_install_units_never_follows_a_planted_name(tmp_path: Path, shared_tmp: Path) -> None:
    """Root running `install-units --user` with a user's XDG_CONFIG_HOME (`sudo -E`)
    writes into a directory that user controls: the user plants
    `.secretivex.service.tmp -> /etc/...` and root truncated and overwrote the target.
    Now the directory is refused (exit 1, one line), and a name planted in one's own
    directory is never followed either."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to be the root who makes the mistake)")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    user_home = shared_tmp / "home"
    unit_dir = user_home / ".config" / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    for d in (user_home, user_home / ".config", user_home / ".config" / "systemd", unit_dir):
        os.chown(d, NOBODY, NOBODY)
    for name in ("secretivex.service", "secretivex.socket"):
        subprocess.run(
            _as_nobody("ln", "-s", str(victim), str(unit_dir / f".{name}.tmp")), check=True
        )
    result = _install_units(user_home / ".config")
    assert victim.read_text() == "precious\n"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"belongs to uid {NOBODY}" in result.stderr, result.stderr
    assert not (unit_dir / "secretivex.service").exists()

    # Not there yet: root would create it inside the user's ~/.config, where the user
    # could swap it for a symlink (to /etc/systemd/system) before the units go in.
    shutil.rmtree(user_home / ".config" / "systemd")
    result = _install_units(user_home / ".config")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{user_home / '.config'} belongs to uid {NOBODY}" in result.stderr, result.stderr
    assert not (user_home / ".config" / "systemd").exists()

    # One's own directory, with a stale symlink at the old fixed temporary name.
    own = tmp_path / "config"
    own_units = own / "systemd" / "user"
    own_units.mkdir(parents=True)
    (own_units / ".secretivex.service.tmp").symlink_to(victim)
    result = _install_units(own)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    unit = own_units / "secretivex.service"
    assert not unit.is_symlink() and "ExecStart=" in unit.read_text()
    assert (unit.stat().st_mode & 0o777) == 0o644
    leftovers = [p.name for p in own_units.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [".secretivex.service.tmp"], leftovers  # only the planted one


# ------------------------------------------------------------------------ 2. files: metrics


def test_metrics_files_where_others_can_plant_or_replace_them_are_refused(
    tmp_path: Path, shared_tmp: Path
) -> None:
    """A metrics file another uid created first in a sticky directory can never be
    replaced by the agent (every interval logged a warning, forever) and readers
    (`client metrics`, node_exporter) took the planted numbers for the agent's; in a
    world-writable directory without the sticky bit anyone can swap it. Refused at
    start and by `config validate`, one line naming the path."""
    if os.geteuid() != 0:
        pytest.skip("needs root (setpriv to plant files as another uid)")
    sticky = shared_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    subprocess.run(
        _as_nobody("sh", "-c", f"echo '{{\"planted\": true}}' > {sticky}/metrics.json"),
        check=True,
    )
    open_dir = shared_tmp / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    # made first by another uid inside /tmp: sticky, but the sticky bit does not bind
    # the directory's owner
    theirs = sticky / "secretivex"
    subprocess.run(_as_nobody("mkdir", "-m", "1777", str(theirs)), check=True)
    cases = [
        (f"path: {theirs}/m.json", f"directory {theirs} is owned by uid {NOBODY}"),
        (f"path: {sticky}/metrics.json", f"{sticky}/metrics.json is owned by uid {NOBODY}"),
        (f"prometheus_textfile: {open_dir}/m.prom", f"directory {open_dir} is writable by every"),
        (f"path: {open_dir}/new/m.json", f"directory {open_dir} is writable by every"),
    ]
    for line, expected in cases:
        config = tmp_path / "c.yaml"
        config.write_text(f"metrics:\n  {line}\n")
        config.chmod(0o600)
        validate = run([SECRETIVEX, "config", "validate", str(config)], check=False)
        assert validate.returncode == 2, validate.stdout + validate.stderr
        assert expected in validate.stdout + validate.stderr
        agent = start_agent(tmp_path, "--config", str(config), wait=False)
        try:
            code = agent.proc.wait(30)
        finally:
            agent.stop()
        log = agent.log()
        assert code == 2, log
        assert expected in log and "Traceback" not in log, log
    assert json.loads((sticky / "metrics.json").read_text()) == {"planted": True}
    assert not (open_dir / "new").exists()
    # the agent's own file in a sticky directory, and a directory it creates, are fine
    config = tmp_path / "c.yaml"
    config.write_text(
        f"metrics:\n  path: {sticky}/own.json\n  interval_ms: 100\n"
        f"  prometheus_textfile: {tmp_path}/made/here/m.prom\n"
    )
    with running_agent(tmp_path, "--config", str(config)):
        assert wait_until(lambda: (sticky / "own.json").exists(), 10)
        assert wait_until(lambda: (tmp_path / "made/here/m.prom").exists(), 10)


def test_a_failing_metrics_write_is_not_a_log_line_every_interval(tmp_path: Path) -> None:
    """A metrics write that keeps failing (a full disk, the directory gone) warned on
    every interval: with `interval_ms: 100`, ten lines a second into the journal for as
    long as the agent runs. Now the first failure, then one line a minute."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(f"metrics:\n  path: {directory}/m.json\n  interval_ms: 100\n")
    config.chmod(0o600)
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert wait_until(lambda: (directory / "m.json").exists(), 10)
        shutil.rmtree(directory)
        directory.write_text("not a directory any more\n")
        assert wait_until(lambda: "could not write metrics" in agent.log(), 10)
        time.sleep(2.0)  # twenty more intervals
        failures = [line for line in agent.log().splitlines() if "could not write metrics" in line]
        assert len(failures) == 1, failures
        directory.unlink()
        assert wait_until(lambda: "metrics written again" in agent.log(), 10), agent.log()


def test_metrics_directories_get_their_documented_modes_under_the_units_umask(
    tmp_path: Path,
) -> None:
    """The packaged units run the agent with `UMask=0177`: the directories the metrics
    writer created were `0600` (no search bit), so no one could create a file in them
    and node_exporter could not reach the `0644` files. Now `0755`, whatever the umask;
    the files stay `0644`, the temporary files never outlive a write."""
    base = tmp_path / "state"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"metrics:\n  path: {base}/json/m.json\n  interval_ms: 100\n"
        f"  prometheus_textfile: {base}/prom/m.prom\n"
    )
    config.chmod(0o600)
    umask = ("sh", "-c", 'umask 0177; exec "$0" "$@"')
    with running_agent(tmp_path, "--config", str(config), prefix=umask):
        assert wait_until(lambda: (base / "prom" / "m.prom").exists(), 10)
    for directory in (base, base / "json", base / "prom"):
        assert oct(directory.stat().st_mode & 0o7777) == oct(0o755), directory
    for name in ("json/m.json", "prom/m.prom"):
        assert oct((base / name).stat().st_mode & 0o7777) == oct(0o644), name
    assert not [p for p in base.rglob("*.tmp")]


def test_a_readable_unit_environment_file_is_warned_about(tmp_path: Path) -> None:
    """The packaged user unit reads PINs from `~/.config/secretivex/env`
    (`EnvironmentFile=`); made with the usual umask it is `0644`, the PIN readable by
    every local user (home directories are often `0755`). The agent cannot refuse a
    file systemd read, but it says so, naming the file, never its content."""
    require_tool("ssh-keygen", "ssh-add")
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keygen(keys, "enc", passphrase=KEY_PASSPHRASE, comment="enc")
    home = tmp_path / "home"
    env_file = home / ".config" / "secretivex" / "env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"SWEEP2_PASSPHRASE={KEY_PASSPHRASE}\n")
    env_file.chmod(0o644)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n    passphrase_env: SWEEP2_PASSPHRASE\n"
    )
    config.chmod(0o600)
    env = {"SWEEP2_PASSPHRASE": KEY_PASSPHRASE}
    with running_agent(tmp_path, "--config", str(config), env=env) as agent:
        assert "enc" in agent.ssh_add("-l").stdout
    log = agent.log()
    warnings = [line for line in log.splitlines() if "WARNING" in line and str(env_file) in line]
    assert len(warnings) == 1 and "readable by" in warnings[0], log
    assert KEY_PASSPHRASE not in log
    env_file.chmod(0o600)
    with running_agent(tmp_path, "--config", str(config), env=env) as agent:
        assert "enc" in agent.ssh_add("-l").stdout
    assert str(env_file) not in agent.log()
