"""`secretivex install-units --user`: a socket-activated user service in one step.

The units are the packaged ones (``packaging/systemd/user``, shipped in the wheel as
``secretivex/units``) with ``ExecStart`` pointed at the executable that is running
now, so a pip or pipx install works without editing anything.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import typer

UNIT_NAMES = ("secretivex.socket", "secretivex.service")
MARKER = "# Written by `secretivex install-units --user`"
SOCKET_LINE = 'export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/secretivex/agent.sock"'


class InstallError(Exception):
    """One line for the user; exit status 1."""


def unit_templates() -> dict[str, str]:
    """The packaged unit files, by name."""
    here = Path(__file__).resolve().parent.parent / "units"
    try:
        return {name: (here / name).read_text(encoding="utf-8") for name in UNIT_NAMES}
    except OSError as exc:
        raise InstallError(f"unit templates missing from the package ({here}): {exc}") from None


def installed_executable() -> list[str]:
    """argv that starts this same installation: the console script when there is one."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "secretivex" and script.exists():
        return [str(script.resolve())]
    beside = Path(sys.executable).with_name("secretivex")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "secretivex"]


def _systemd_quote(word: str) -> str:
    if word and not any(c in word for c in " \t\"'\\$%;"):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def render_units(executable: list[str]) -> dict[str, str]:
    """The templates with ExecStart at ``executable`` and a header saying where from."""
    exe = " ".join(_systemd_quote(part) for part in executable)
    out = {}
    for name, text in unit_templates().items():
        lines = []
        for line in text.splitlines():
            if line.startswith("ExecStart=/usr/bin/secretivex "):
                line = "ExecStart=" + exe + line[len("ExecStart=/usr/bin/secretivex") :]
            lines.append(line)
        header = f"{MARKER} from the packaged unit; rerun it after moving secretivex.\n"
        out[name] = header + "\n".join(lines) + "\n"
    return out


def user_unit_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    config_home = env.get("XDG_CONFIG_HOME") or ""
    base = Path(config_home) if os.path.isabs(config_home) else Path.home() / ".config"
    return base / "systemd" / "user"


def write_units(directory: Path, units: dict[str, str], *, force: bool) -> list[Path]:
    """Write the units; a file someone else wrote is replaced only with ``--force``.

    Each file is written to a fresh name (created exclusively, never through a symlink)
    and renamed into place, so a reader never sees half a unit and a name planted in the
    directory is never followed. The directory must be the caller's (or root's) and not
    writable by others: run by root with another user's ``HOME`` (``sudo -E``), it would
    otherwise write into a directory that user controls.
    """
    # Before reading or creating anything: a name in someone else's directory could
    # lead anywhere (a FIFO, a symlink into /etc), and a directory made in theirs could
    # be swapped for a symlink before the units go in.
    existing = directory
    while not existing.is_dir() and existing.parent != existing:
        existing = existing.parent
    _check_directory(existing, existing.stat())
    for name in units:
        path = directory / name
        if path.exists() and not force:
            current = path.read_text(encoding="utf-8", errors="replace")
            if not current.startswith(MARKER):
                raise InstallError(
                    f"{path} exists and was not written by install-units; "
                    "pass --force to replace it"
                )
    directory.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_directory(directory, os.fstat(dir_fd))
        written = []
        for name, text in units.items():
            _replace_at(dir_fd, name, text.encode("utf-8"))
            written.append(directory / name)
    finally:
        os.close(dir_fd)
    return written


def _check_directory(directory: Path, st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise InstallError(
            f"{directory} belongs to uid {st.st_uid}, not to you (uid {me}): run "
            "install-units as that user (did sudo keep HOME or XDG_CONFIG_HOME?)"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise InstallError(
            f"{directory} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}), who "
            "could replace the units: chmod go-w it"
        )


def _replace_at(dir_fd: int, name: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def enable_socket() -> None:
    """``systemctl --user daemon-reload`` then ``enable --now secretivex.socket``."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise InstallError(
            "systemctl not found: the units are written but not enabled; on a systemd "
            "host run: systemctl --user enable --now secretivex.socket"
        )
    for args in (["daemon-reload"], ["enable", "--now", "secretivex.socket"]):
        proc = subprocess.run(
            [systemctl, "--user", *args], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
            raise InstallError(
                f"systemctl --user {' '.join(args)} failed: {reason} (is there a user "
                "session? `loginctl enable-linger $USER` starts one without a login); "
                "the units are written: once it runs, `secretivex install-units --user` "
                "again enables them"
            )


#: What to do instead, for the mode this command does not install.
SYSTEM_MODE_HINT = (
    "install-units installs user units only; for one shared agent (system mode) install "
    "packaging/systemd/system/ and packaging/systemd/sysusers.d/ from the source tree as "
    'docs/quickstart.md "A shared host (system mode)" shows (NixOS: services.secretivex.mode '
    '= "system", docs/nixos.md)'
)
USAGE_HINT = (
    "install-units needs --user (an agent per user; every user of the machine: "
    'docs/quickstart.md "One agent per user"; a shared agent: --system says how)'
)


def install_units(
    user: bool = typer.Option(
        False, "--user", help="Install for the current user (the only mode; required)."
    ),
    no_enable: bool = typer.Option(
        False, "--no-enable", help="Only write the unit files; do not call systemctl."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace unit files that install-units did not write."
    ),
    system: bool = typer.Option(
        False,
        "--system",
        help="Not supported: says where the system-mode (shared host) units are.",
    ),
) -> None:
    """Write the systemd user units (socket-activated, ExecStart at this installation),
    enable the socket, and print the SSH_AUTH_SOCK line for your shell profile."""
    if system or not user:
        typer.echo(
            f"secretivex: {SYSTEM_MODE_HINT if system else USAGE_HINT}",
            err=True,
        )
        raise typer.Exit(2)
    try:
        units = render_units(installed_executable())
        directory = user_unit_dir()
        for path in write_units(directory, units, force=force):
            typer.echo(f"wrote {path}", err=True)
        if not no_enable:
            enable_socket()
            typer.echo("enabled and started secretivex.socket", err=True)
    except InstallError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"secretivex: cannot write units: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("add this line to your shell profile (~/.profile, ~/.bashrc):", err=True)
    typer.echo(SOCKET_LINE)


def register(app: typer.Typer) -> None:
    app.command("install-units")(install_units)
