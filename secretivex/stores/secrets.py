"""PINs and passphrases named by the config (``*_env`` or ``*_file``), read one way for
every store.

An environment variable is taken out of the environment the first time a store is built
with it: its value moves into this process's memory (made non-dumpable by
``agent/hardening.py``), so confirm hooks and other children never inherit it and
``/proc/PID/environ`` no longer shows it, while SIGHUP reloads and PKCS#11 re-logins
after a token fault still find it. A file is read each time it is needed (first line,
so a rotated PIN file is picked up on reload); a file readable by group or others is
warned about once, naming the file, never its content. So is the packaged user unit's
environment file (``~/.config/secretivex/env``) when a variable is taken.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from secretivex.stores.base import StoreError

log = logging.getLogger(__name__)

#: Values taken out of the environment, by variable name (process-wide, so a store
#: rebuilt by a reload finds what an earlier one took).
_TAKEN: dict[str, bytes] = {}
#: The packaged systemd user unit's ``EnvironmentFile=-%h/.config/secretivex/env``.
UNIT_ENVIRONMENT_FILE = Path("~/.config/secretivex/env")
#: (path, mode) pairs already warned about, so reloads do not repeat the warning.
_WARNED: set[tuple[str, int]] = set()


class SecretUnavailable(StoreError):
    """The named variable is unset or the named file cannot be read (says which, never
    the value)."""


def _scrub_initial_environment(name: str) -> None:
    """Overwrite the value in the process's initial environment block (what
    ``/proc/PID/environ`` shows, even to root) before unsetting it; best effort."""
    import ctypes.util  # shutil, subprocess, tempfile: only when a secret is taken

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        pointer = libc.getenv(os.fsencode(name))
        if pointer:
            ctypes.memset(pointer, 0, len(ctypes.string_at(pointer)))
    except (OSError, AttributeError):  # no libc: unsetting below is still done
        pass


def take_from_environment(name: str) -> bytes | None:
    """The variable's value, removed from ``os.environ`` (and the C environment) on the
    first call; later calls return the remembered value."""
    value = os.environb.get(os.fsencode(name))
    if value is not None:
        _TAKEN[name] = bytes(value)
        _scrub_initial_environment(name)
        os.environ.pop(name, None)
    return _TAKEN.get(name)


def warn_if_exposed(path: Path, what: str) -> None:
    """Warn once when a secret or key file is readable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) or not mode & 0o044:
        return
    marker = (str(path), stat.S_IMODE(mode))
    if marker in _WARNED:
        return
    _WARNED.add(marker)
    log.warning(
        "%s %s is readable by %s (mode %04o); %s",
        what,
        path,
        "group and others" if mode & 0o044 == 0o044 else "group" if mode & 0o040 else "others",
        stat.S_IMODE(mode),
        _READ_ONLY_ADVICE if _on_read_only_mount(path) else "chmod go-rwx it",
    )


#: What to do about a file no chmod can change (a Kubernetes Secret, a Docker secret).
_READ_ONLY_ADVICE = (
    "it is on a read-only mount, so set its mode where it is mounted (a Kubernetes "
    "Secret's defaultMode: 0400, or 0440 with the pod's fsGroup, which only the pod's "
    "containers have)"
)


def _on_read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class SecretSource:
    """A PIN or passphrase from an environment variable or a file's first line.

    Calling it returns the bytes or raises ``SecretUnavailable``; its repr never shows
    the value. Building it takes an environment variable out of the environment.
    """

    __slots__ = ("env", "file", "what")

    def __init__(
        self, *, env: str | None = None, file: str | os.PathLike[str] | None = None, what: str
    ) -> None:
        self.env = env or None
        self.file = Path(os.path.expanduser(os.fspath(file))) if file else None
        self.what = what
        if self.env:
            take_from_environment(self.env)
            # The packaged user unit loads it from this file (EnvironmentFile=): created
            # with the usual umask it is 0644, the PIN readable by every local user.
            warn_if_exposed(UNIT_ENVIRONMENT_FILE.expanduser(), "environment file")

    def __call__(self) -> bytes:
        if self.env:
            value = take_from_environment(self.env)
            if value is None:
                raise SecretUnavailable(f"{self.what} environment variable {self.env} is not set")
            return value
        if self.file is not None:
            warn_if_exposed(self.file, f"{self.what} file")
            try:
                data = self.file.read_bytes()
            except OSError as exc:
                raise SecretUnavailable(
                    f"cannot read {self.what} file {self.file}: {exc.strerror or exc}"
                ) from None
            return data.splitlines()[0] if data else b""
        raise SecretUnavailable(f"no {self.what} configured")

    def __repr__(self) -> str:
        source = f"env {self.env}" if self.env else f"file {self.file}"
        return f"<{self.what} from {source}, value hidden>"


def secret_reader(
    env_name: str | None, file_name: str | None, what: str = "passphrase"
) -> Callable[[], bytes | None]:
    """For the file store: None when nothing is configured or it cannot be read (logged)."""
    if not env_name and not file_name:
        return lambda: None
    source = SecretSource(env=env_name, file=file_name, what=what)

    def read() -> bytes | None:
        try:
            return source()
        except SecretUnavailable as exc:
            log.warning("%s", exc)
            return None

    return read
