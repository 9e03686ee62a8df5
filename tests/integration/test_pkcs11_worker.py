"""``pkcs11_worker.ModuleWorker``: serial, batched calls through ``anyio.to_thread``.

Most of these drive a worker with plain Python functions (no token needed); the last
ones check, against SoftHSM, that a store leaves no thread of its own behind.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

try:
    from tests.integration.softhsm import SoftHsm, require_softhsm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import SoftHsm, require_softhsm  # type: ignore[no-redef]

from secretivex.stores.pkcs11 import Pkcs11Store
from secretivex.stores.pkcs11 import worker as pkcs11_worker
from secretivex.stores.pkcs11.worker import ModuleWorker

ANYIO_WORKER = "AnyIO worker thread"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "trio":
        pytest.importorskip("trio")
    return str(request.param)


class Recorder:
    """Jobs that note which thread ran them and check that none overlap."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.threads: dict[str, int] = {}
        self.active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def job(
        self,
        name: str,
        result: Any = None,
        *,
        wait: threading.Event | None = None,
        started: threading.Event | None = None,
        raises: BaseException | None = None,
        pause: float = 0.0,
    ) -> Callable[[], Any]:
        def run() -> Any:
            with self._lock:
                self.active += 1
                self.overlaps += self.active > 1
            try:
                self.ran.append(name)
                self.threads[name] = threading.get_ident()
                if started is not None:
                    started.set()
                if wait is not None:
                    assert wait.wait(10), "test gate never opened"
                if pause:
                    time.sleep(pause)
                if raises is not None:
                    raise raises
                return result
            finally:
                with self._lock:
                    self.active -= 1

        return run


async def wait_for(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.001)


def queued(worker: ModuleWorker) -> int:
    return sum(len(lane.jobs) for lane in worker._lanes.values())


# --------------------------------------------------------------------------- unit


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the agent's loop; trio may hop twice
async def test_queued_jobs_run_in_the_drainers_thread_hop() -> None:
    worker = ModuleWorker("test-batch")
    rec = Recorder()
    gate, started = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    async def call(name: str, fn: Callable[[], Any]) -> None:
        results[name] = await worker.call(fn)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first", rec.job("first", 0, wait=gate, started=started))
        await wait_for(started.is_set)
        for i in range(1, 6):
            tg.start_soon(call, f"j{i}", rec.job(f"j{i}", i))
        await wait_for(lambda: queued(worker) == 5)
        gate.set()
    assert results == {"first": 0, "j1": 1, "j2": 2, "j3": 3, "j4": 4, "j5": 5}
    assert rec.ran[0] == "first"
    assert sorted(rec.ran[1:]) == ["j1", "j2", "j3", "j4", "j5"]  # (trio starts tasks in any order)
    assert len(set(rec.threads.values())) == 1  # one to_thread hop for the whole batch
    assert rec.overlaps == 0
    assert worker._lanes and all(lane.idle() for lane in worker._lanes.values())


@pytest.mark.anyio
@pytest.mark.parametrize("cancel_drainer", [False, True], ids=["waiter", "drainer"])
async def test_cancelled_caller_does_not_lose_other_results(cancel_drainer: bool) -> None:
    worker = ModuleWorker("test-cancel")
    rec = Recorder()
    gate, started = threading.Event(), threading.Event()
    results: dict[str, Any] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def call(name: str, fn: Callable[[], Any]) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            results[name] = await worker.call(fn)
        if scope.cancelled_caught:
            results[name] = "cancelled"

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "drainer", rec.job("drainer", "d", wait=gate, started=started))
        await wait_for(started.is_set)
        for name in ("a", "gone", "b"):
            tg.start_soon(call, name, rec.job(name, name.upper()))
        await wait_for(lambda: queued(worker) == 3)
        scopes["gone"].cancel()
        if cancel_drainer:
            scopes["drainer"].cancel()
        await wait_for(lambda: results.get("gone") == "cancelled")
        assert "drainer" not in results  # its job still runs in the thread
        gate.set()

    assert results["a"] == "A"
    assert results["b"] == "B"
    assert results["gone"] == "cancelled"
    assert "gone" not in rec.ran  # cancelled before it started: skipped
    assert rec.ran[0] == "drainer"
    assert sorted(rec.ran[1:]) == ["a", "b"]
    # The drain is shielded: a cancelled drainer finishes it (and may get its result).
    assert results["drainer"] in ("d", "cancelled")
    assert all(lane.idle() for lane in worker._lanes.values())


@pytest.mark.anyio
async def test_caller_cancelled_before_its_thread_started() -> None:
    worker = ModuleWorker("test-precancel")
    rec = Recorder()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await worker.call(rec.job("never"))
    assert scope.cancelled_caught
    assert rec.ran == []
    assert all(lane.idle() for lane in worker._lanes.values())
    assert await worker.call(rec.job("next", 2)) == 2


@pytest.mark.anyio
async def test_exception_reaches_only_its_caller() -> None:
    worker = ModuleWorker("test-errors")
    rec = Recorder()
    gate, started = threading.Event(), threading.Event()
    outcomes: dict[int, Any] = {}

    class JobError(Exception):
        pass

    async def call(i: int, fn: Callable[[], Any]) -> None:
        try:
            outcomes[i] = ("ok", await worker.call(fn))
        except JobError as exc:
            outcomes[i] = ("error", exc.args[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0, rec.job("0", 0, wait=gate, started=started, raises=JobError(0)))
        await wait_for(started.is_set)
        for i in range(1, 20):
            raises = JobError(i) if i % 3 == 0 else None
            tg.start_soon(call, i, rec.job(str(i), i, raises=raises))
        await wait_for(lambda: queued(worker) == 19)
        gate.set()
    assert outcomes == {i: ("error" if i % 3 == 0 else "ok", i) for i in range(20)}
    # A later lone call is unaffected.
    assert await worker.call(rec.job("after", "fine")) == "fine"
    assert rec.overlaps == 0


@pytest.mark.anyio
async def test_handoffs_and_cancellations_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every drain hands on after one job; callers give up at random moments."""
    monkeypatch.setattr(pkcs11_worker, "DRAIN_BUDGET_S", 0.0)
    worker = ModuleWorker("test-stress")
    rec = Recorder()
    rng = random.Random(5)
    done = given_up = 0

    async def caller(n: int) -> None:
        nonlocal done, given_up
        for i in range(40):
            expected = (n, i)
            with anyio.move_on_after(rng.choice([0, 0.0005, 0.002, 0.01, 5, 5])) as scope:
                got = await worker.call(rec.job(f"{n}.{i}", expected, pause=0.0001))
                assert got == expected
                done += 1
            given_up += scope.cancelled_caught

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(24):
                tg.start_soon(caller, n)
    assert done + given_up == 24 * 40
    print(f"{done} calls returned, {given_up} gave up")
    assert done > 0 and given_up > 0
    assert rec.overlaps == 0
    assert all(lane.idle() for lane in worker._lanes.values())
    assert await worker.call(rec.job("last", 1)) == 1


# --------------------------------------------------------------------------- threads


def pkcs11_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pkcs11")]


@pytest.fixture
def store_args() -> Iterator[tuple[str, Any]]:
    require_softhsm()
    hsm = SoftHsm.shared()
    tok = hsm.init_token()
    tok.generate("EC:edwards25519", key_id="01", label="ed")
    yield hsm.module, tok


async def sign_a_lot(module: str, tok: Any) -> set[str]:
    """Open a store, sign concurrently, close it; the names of threads new meanwhile."""
    before = set(threading.enumerate())
    store = Pkcs11Store("hsm", module, token_label=tok.label, pin=lambda: tok.pin)
    await store.open()
    try:
        (ident,) = await store.identities()
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                for _ in range(10):
                    tg.start_soon(store.sign, ident.blob, os.urandom(64), 0)
        assert not pkcs11_threads()
    finally:
        await store.aclose()
    assert not pkcs11_threads()
    return {t.name for t in set(threading.enumerate()) - before}


@pytest.mark.softhsm
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_store_starts_no_thread_of_its_own(store_args: tuple[str, Any]) -> None:
    new = await sign_a_lot(*store_args)
    assert new <= {ANYIO_WORKER}  # at most anyio's idle worker pool


@pytest.mark.softhsm
def test_no_thread_outlives_the_event_loop(store_args: tuple[str, Any]) -> None:
    before = set(threading.enumerate())
    new = anyio.run(sign_a_lot, *store_args)
    assert new <= {ANYIO_WORKER}
    # anyio stops its worker threads with the event loop; nothing of ours is left.
    deadline = time.monotonic() + 10
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, [t.name for t in left]
