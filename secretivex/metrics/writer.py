"""Writing snapshots: atomic files and the agent's periodic writer task."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from secretivex.metrics.recorder import MetricsRecorder

__all__ = [
    "load_snapshot",
    "run_metrics_writer",
    "write_metrics_files",
    "write_now",
    "write_snapshot_atomic",
]

log = logging.getLogger("secretivex.metrics")

#: A failing write (full disk, a directory gone) is warned about at most this often.
WARN_INTERVAL_S = 60.0


class _WriteFailures:
    """Rate-limits the warning for failed writes: the first failure is logged, then at
    most one line per ``WARN_INTERVAL_S`` with the count, and one line on recovery. A
    write every ``interval_ms`` must not become a log line every ``interval_ms``."""

    def __init__(self) -> None:
        self.count = 0
        self.unreported = 0
        self.last_warned = float("-inf")

    def failed(self, exc: OSError) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last_warned < WARN_INTERVAL_S:
            self.unreported += 1
            return
        also = f" ({self.unreported} more failed writes not logged)" if self.unreported else ""
        log.warning("could not write metrics: %s%s", exc, also)
        self.last_warned = now
        self.unreported = 0

    def succeeded(self) -> None:
        if self.count:
            log.info("metrics written again after %d failed writes", self.count)
        self.count = 0
        self.unreported = 0
        self.last_warned = float("-inf")


def _encode(data: Mapping[str, Any] | bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    import orjson  # on the first write (in the writer's thread), not at start

    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def write_snapshot_atomic(
    path: str | os.PathLike[str],
    data: Mapping[str, Any] | bytes | str,
    mode: int = 0o644,
) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a
    partial one: a temp file in the same directory, fsync, chmod ``mode``, ``os.replace``,
    then fsync of the directory. Mappings are written as JSON. On error the temp file is
    removed and the exception propagates.
    """
    target = Path(path)
    payload = _encode(data)
    directory = target.parent
    # What tempfile.mkstemp does, without importing tempfile (shutil, bz2, lzma:
    # 0.65 MiB of the agent's memory): a fresh name, created exclusively, never followed.
    fd, tmp_name = _create_temp(directory, target.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        Path(tmp_name).replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp_name).unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _create_temp(directory: Path, name: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp_name = str(directory / f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp_name, flags, 0o600), tmp_name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {directory}")


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot file. Raises ``OSError`` or ``ValueError`` (not JSON / not an object)."""
    import orjson

    raw = Path(path).read_bytes()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a metrics snapshot must be a JSON object")
    return data


#: Mode of directories the writer creates: readers of the ``0644`` files must reach them.
DIRECTORY_MODE = 0o755


def _make_parents(path: Path) -> None:
    """Create the missing directories above ``path`` with ``DIRECTORY_MODE`` whatever the
    umask (the packaged units' ``UMask=0177`` made them ``0600``: no one, the agent
    included, could then create a file in them)."""
    missing = []
    directory = path.parent
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # not ours: left as it is
        # through a handle that cannot be a symlink someone swapped in meanwhile
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, DIRECTORY_MODE)
        finally:
            os.close(fd)


def write_metrics_files(
    snapshot: Mapping[str, Any],
    path: str | os.PathLike[str] | None,
    prometheus_textfile: str | os.PathLike[str] | None = None,
) -> None:
    """Write the JSON snapshot and, if configured, the Prometheus textfile (blocking)."""
    if path is not None:
        _make_parents(Path(path))
        write_snapshot_atomic(path, snapshot)
    if prometheus_textfile is not None:
        from secretivex.metrics.prometheus import render_prometheus

        _make_parents(Path(prometheus_textfile))
        write_snapshot_atomic(prometheus_textfile, render_prometheus(snapshot))


async def write_now(
    recorder: MetricsRecorder,
    path: str | os.PathLike[str] | None,
    prometheus_textfile: str | os.PathLike[str] | None = None,
    kind: str = "snapshot",
    failures: _WriteFailures | None = None,
) -> dict[str, Any]:
    """Take a snapshot on the event loop, write it from a worker thread; returns it.

    ``kind="reset"`` zeroes the counters first. Write errors are logged, not raised:
    metrics must never take the agent down.
    """
    if kind == "reset":
        recorder.reset()
    snapshot = recorder.snapshot(kind)
    failures = failures or _WriteFailures()
    try:
        await anyio.to_thread.run_sync(write_metrics_files, snapshot, path, prometheus_textfile)
    except OSError as exc:
        failures.failed(exc)
    else:
        failures.succeeded()
    return snapshot


class _Wakeup:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = anyio.Event()

    def set(self) -> None:
        self.event.set()


async def run_metrics_writer(
    recorder: MetricsRecorder,
    path: str | os.PathLike[str] | None,
    interval_ms: int,
    prometheus_textfile: str | os.PathLike[str] | None = None,
    *,
    health: Callable[[], Sequence[Any]] | None = None,
) -> None:
    """Write a ``periodic`` snapshot every ``interval_ms`` until cancelled.

    Runs in the agent's task group. ``recorder.request_write("snapshot")`` (SIGUSR1) or
    ``recorder.request_write("reset")`` (SIGUSR2), called on the event-loop thread,
    wake it for an immediate write of that kind. ``interval_ms <= 0`` writes only on
    request. On cancellation a final ``interval`` snapshot is written (shielded).
    ``health``, when given, is called before every write and its ``StoreHealth`` list
    recorded with ``set_store_health``.
    """
    if path is None and prometheus_textfile is None:
        return
    wakeup = _Wakeup()
    failures = _WriteFailures()
    recorder._wake = wakeup.set
    timeout = interval_ms / 1000 if interval_ms > 0 else None

    def refresh() -> None:
        if health is not None:
            try:
                recorder.set_store_health(health())
            except Exception as exc:  # a store bug must not stop metrics
                log.warning("could not collect store health: %s", exc)

    try:
        refresh()
        await write_now(recorder, path, prometheus_textfile, "periodic", failures)
        while True:
            with anyio.move_on_after(timeout):
                await wakeup.event.wait()
            if wakeup.event.is_set():
                wakeup.event = anyio.Event()
            kind = recorder._pending_kind or "periodic"
            recorder._pending_kind = None
            refresh()
            # A reset was already applied by request_write; only the kind is written.
            snapshot = recorder.snapshot(kind)
            try:
                await anyio.to_thread.run_sync(
                    write_metrics_files, snapshot, path, prometheus_textfile
                )
            except OSError as exc:
                failures.failed(exc)
            else:
                failures.succeeded()
    finally:
        recorder._wake = None
        with anyio.CancelScope(shield=True):
            refresh()
            snapshot = recorder.snapshot("interval")
            try:
                await anyio.to_thread.run_sync(
                    write_metrics_files, snapshot, path, prometheus_textfile
                )
            except OSError as exc:  # pragma: no cover - best effort at shutdown
                log.warning("could not write final metrics: %s", exc)
