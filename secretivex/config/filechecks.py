"""Who else could write a file the agent writes or reads its orders from.

Three rules, shared by everything that opens such a file (stdlib only: the running
agent imports this module, never the config models):

* a **directory** the agent creates or replaces files in (socket directory, audit log,
  ``--log-file``) is owned by the agent's euid or root and is not group/other-writable
  unless it has the sticky bit (then nobody else can rename or remove our files);
* a **file the agent appends to** (``audit.path``, ``--log-file``) is opened without
  following a symlink in its last component (``O_NOFOLLOW``) and must then be a regular
  file owned by the agent's euid, not group/other-writable, with one link: no name
  another uid planted can make the agent write somewhere else;
* a **file the agent replaces** (``metrics.path``, ``metrics.prometheus_textfile``:
  written to a fresh temporary name, then renamed over) must not sit in a directory
  every user can write without the sticky bit (the nearest existing one, when the agent
  is to create the rest), and an existing file of that name must be the agent's own: a
  file another uid planted first in a sticky directory could never be replaced, and
  readers would take it for the agent's. A group-writable or other-owned directory is
  the administrator's choice of who shares it (node_exporter's textfile directory);
* a **config file** is refused when group or others can write it (as ssh refuses such a
  ``~/.ssh/config``), and reported when another uid (not root) owns it.

:func:`check_append` answers what :func:`open_append` would refuse, without creating
or changing anything (``config validate``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

__all__ = [
    "UnsafePathError",
    "check_append",
    "check_replace",
    "config_file_owner_problem",
    "config_file_write_problem",
    "directory_problem",
    "open_append",
    "private_file_problem",
]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class UnsafePathError(Exception):
    """A file or directory fails these rules; the message names the path and why."""


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _kind(st: os.stat_result) -> str:
    return next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")


def directory_problem(st: os.stat_result, euid: int | None = None) -> str | None:
    """Why someone other than this agent (or root) could replace files in the directory
    ``st`` describes; None when nobody can. Phrased to follow the directory's name."""
    me = os.geteuid() if euid is None else euid
    if st.st_uid not in (me, 0):
        return f"is owned by uid {st.st_uid}, not by this agent's uid {me} or root"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"is group/other-writable (mode {_mode(st)}) without the sticky bit"
    return None


def private_file_problem(st: os.stat_result, euid: int | None = None) -> str | None:
    """Why the agent must not append to the file ``st`` describes (None: it may).
    Phrased to follow the file's name."""
    me = os.geteuid() if euid is None else euid
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st)}, not a regular file"
    if st.st_uid != me:
        return f"is owned by uid {st.st_uid}, not by this agent's uid {me}"
    if st.st_mode & 0o022:
        return f"is group/other-writable (mode {_mode(st)}): chmod go-w it"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links (it may be another file under a second name)"
    return None


def config_file_write_problem(st: os.stat_result, name: str) -> str | None:
    """Why config file ``name`` must be refused: others can rewrite what the agent runs
    (``policy.confirm.command``) and whom it serves. None when only its owner can."""
    if st.st_mode & 0o022:
        who = {0o020: "its group", 0o002: "other users"}.get(
            st.st_mode & 0o022, "its group and other users"
        )
        what = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        return (
            f"{what} is writable by {who} (mode {_mode(st)}), who could then decide what "
            f"the agent runs and whom it serves: refusing it; fix: chmod go-w {name}"
        )
    return None


def config_file_owner_problem(st: os.stat_result, euid: int | None = None) -> str | None:
    """Worth a warning, not a refusal (containers bind-mount host files with other
    owners): a config file owned by a uid other than this agent's and root's."""
    me = os.geteuid() if euid is None else euid
    if st.st_uid not in (me, 0):
        return (
            f"file is owned by uid {st.st_uid}, not by this agent's uid {me} or root: that "
            "uid decides what the agent runs and whom it serves (fine for a container's "
            "bind mount of a host file you trust)"
        )
    return None


# --------------------------------------------------------------------------- appending

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK


def _open_parent(path: Path) -> int:
    """The directory ``path`` lives in (a symlinked directory is judged by what it
    points at: the checks run on the opened directory, which is the one used)."""
    parent = path.parent
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnsafePathError(f"directory {parent} does not exist") from None
    except OSError as exc:
        raise UnsafePathError(f"directory {parent}: {_reason(exc)}") from None


def _check_parent(path: Path, dir_fd: int) -> None:
    problem = directory_problem(os.fstat(dir_fd))
    if problem:
        raise UnsafePathError(
            f"directory {path.parent} {problem}: others could replace {path.name} there"
        )


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _refuse_symlink_or_special(path: Path, dir_fd: int) -> bool:
    """Refuse a symlink or non-regular file before opening it (opening a device or FIFO
    can block or act); True when the name exists."""
    try:
        st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink: refusing to follow it")
    problem = private_file_problem(st)
    if problem:
        raise UnsafePathError(f"{path} {problem}")
    return True


def open_append(path: Path | str) -> int:
    """Open ``path`` for appending (created 0600 if missing), under the rules above.

    Raises ``UnsafePathError`` with a message naming the path and the reason.
    """
    path = Path(os.path.expanduser(path))
    dir_fd = _open_parent(path)
    try:
        _check_parent(path, dir_fd)
        _refuse_symlink_or_special(path, dir_fd)
        try:
            fd = os.open(path.name, _APPEND | os.O_CREAT, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{path} is a symlink: refusing to follow it") from None
            raise UnsafePathError(f"cannot open {path} for appending: {_reason(exc)}") from None
    finally:
        os.close(dir_fd)
    try:
        problem = private_file_problem(os.fstat(fd))
        if problem:
            raise UnsafePathError(f"{path} {problem}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_append(path: Path | str) -> str | None:
    """What :func:`open_append` would refuse, as a message; None when it would open.
    Creates nothing: a missing file is judged by its directory."""
    path = Path(os.path.expanduser(path))
    try:
        dir_fd = _open_parent(path)
    except UnsafePathError as exc:
        return str(exc)
    try:
        _check_parent(path, dir_fd)
        if not _refuse_symlink_or_special(path, dir_fd):
            if not os.access(path.parent, os.W_OK | os.X_OK, effective_ids=_effective()):
                return f"directory {path.parent} is not writable by this user"
            return None
        try:
            fd = os.open(path.name, _APPEND, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{path} is a symlink: refusing to follow it"
            return f"cannot open {path} for appending: {_reason(exc)}"
        try:
            problem = private_file_problem(os.fstat(fd))
        finally:
            os.close(fd)
        return f"{path} {problem}" if problem else None
    except UnsafePathError as exc:
        return str(exc)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- replacing


def _nearest_existing(directory: Path) -> os.stat_result | str | None:
    """``directory``'s stat, None when it does not exist, or why it cannot be read."""
    try:
        return os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"directory {directory}: {_reason(exc)}"


def check_replace(path: Path | str) -> str | None:
    """Why the agent must not write ``path`` by renaming a new file over it (None: it
    may). Creates nothing."""
    path = Path(os.path.expanduser(path))
    directory = path.parent
    st = _nearest_existing(directory)
    while st is None and directory.parent != directory:
        directory = directory.parent
        st = _nearest_existing(directory)
    if st is None:
        return None
    if isinstance(st, str):
        return st
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is {_kind(st)}, not a directory"
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        return (
            f"directory {directory} is writable by every user (mode {_mode(st)}) without the "
            f"sticky bit: anyone could replace {path.name} there"
        )
    if st.st_mode & 0o002 and st.st_uid not in (os.geteuid(), 0):
        # The sticky bit does not bind the directory's owner (e.g. one made in /tmp).
        return (
            f"directory {directory} is owned by uid {st.st_uid} and writable by every user: "
            f"that uid could replace {path.name} there"
        )
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=_effective()):
        return f"directory {directory} is not writable by this user"
    if directory != path.parent:
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {_reason(exc)}"
    if st.st_uid != os.geteuid():
        return (
            f"{path} is owned by uid {st.st_uid}, not by this agent's uid {os.geteuid()}: "
            "someone else put it there"
        )
    return None


def _effective() -> bool:
    return os.access in os.supports_effective_ids
