"""Atomic snapshot files and the periodic writer task."""

from __future__ import annotations

import json
import os
import stat
import threading
from functools import partial
from pathlib import Path

import anyio
import pytest

from secretivex.metrics import (
    MetricsRecorder,
    load_snapshot,
    run_metrics_writer,
    write_now,
    write_snapshot_atomic,
)
from secretivex.stores.base import StoreHealth, StoreState


def test_atomic_write_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    for i in range(5):
        write_snapshot_atomic(target, {"n": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert json.loads(target.read_text()) == {"n": 4}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_text_and_bytes_are_written_verbatim(tmp_path: Path) -> None:
    write_snapshot_atomic(tmp_path / "a.prom", "x 1\n")
    write_snapshot_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.prom").read_text() == "x 1\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_failed_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.json"
    write_snapshot_atomic(target, {"generation": 1})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_snapshot_atomic(target, {"generation": 2})
    assert json.loads(target.read_text()) == {"generation": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_missing_directory_raises_without_leftovers(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_snapshot_atomic(tmp_path / "nope" / "m.json", {})
    assert list(tmp_path.iterdir()) == []


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    big = {"payload": "x" * 200_000}
    write_snapshot_atomic(target, {**big, "n": -1})
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(target.read_bytes())["n"])
            except ValueError as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(60):
            write_snapshot_atomic(target, {**big, "n": n})
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen, "the reader never ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_load_snapshot_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_snapshot(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_snapshot(bad)
    with pytest.raises(FileNotFoundError):
        load_snapshot(tmp_path / "missing.json")


def test_write_now_writes_json_and_prometheus(tmp_path: Path) -> None:
    rec = MetricsRecorder()
    rec.on_request("sign", "ok", 1000)

    async def main() -> None:
        await write_now(rec, tmp_path / "m.json", tmp_path / "prom" / "m.prom", "snapshot")

    anyio.run(main)
    snap = load_snapshot(tmp_path / "m.json")
    assert snap["meta"]["kind"] == "snapshot"
    assert "secretivex_requests_total" in (tmp_path / "prom" / "m.prom").read_text()


def test_write_now_reset_kind_zeroes_first(tmp_path: Path) -> None:
    rec = MetricsRecorder()
    rec.on_sign("file")

    async def main() -> None:
        await write_now(rec, tmp_path / "m.json", None, "reset")

    anyio.run(main)
    snap = load_snapshot(tmp_path / "m.json")
    assert snap["meta"]["kind"] == "reset"
    assert snap["signs"]["total"] == 0


def test_write_errors_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    async def main() -> None:
        await write_now(MetricsRecorder(), blocker / "m.json")

    anyio.run(main)
    assert "could not write metrics" in caplog.text


def test_writer_loop_periodic_signal_reset_and_final(tmp_path: Path) -> None:
    rec = MetricsRecorder()
    path = tmp_path / "m.json"
    kinds: list[str] = []
    health_calls: list[int] = []

    def health() -> list[StoreHealth]:
        health_calls.append(1)
        return [StoreHealth("file", "file", StoreState.OK, len(health_calls))]

    async def wait_for(kind: str) -> dict[str, object]:
        with anyio.fail_after(10):
            while True:
                if path.exists():
                    snap = load_snapshot(path)
                    if snap["meta"]["kind"] == kind:
                        kinds.append(kind)
                        return snap
                await anyio.sleep(0.01)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_metrics_writer, health=health), rec, path, 50, None)
            await wait_for("periodic")
            rec.on_sign("file")
            rec.request_write("snapshot")
            snap = await wait_for("snapshot")
            assert snap["signs"]["total"] == 1  # type: ignore[index]
            rec.request_write("reset")
            snap = await wait_for("reset")
            assert snap["signs"]["total"] == 0  # type: ignore[index]
            tg.cancel_scope.cancel()
        final = load_snapshot(path)
        assert final["meta"]["kind"] == "interval"
        assert final["stores"][0]["keys"] >= 3

    anyio.run(main)
    assert kinds == ["periodic", "snapshot", "reset"]
    assert rec._wake is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_writer_without_outputs_returns_at_once() -> None:
    async def main() -> None:
        with anyio.fail_after(2):
            await run_metrics_writer(MetricsRecorder(), None, 10, None)

    anyio.run(main)
