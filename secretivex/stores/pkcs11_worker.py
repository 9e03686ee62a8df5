"""One thread per loaded PKCS#11 module: the only thread that ever calls into it.

python-pkcs11 initialises modules with ``C_Initialize(NULL)``, which tells the module
that the application will not call it from several threads at once (SoftHSM then
turns its own locking off). So every call into one module, for every token and
session of it, is serialised here, on one long-lived thread.

Why a dedicated thread rather than ``anyio.to_thread.run_sync(..., limiter=...)`` per
call: with a ``CapacityLimiter(1)`` the next queued call cannot start until the event
loop has seen the previous result, released the limiter, woken the next waiter and
handed its job to a worker thread. That round trip sits on the token's critical path
and halved Ed25519 throughput on SoftHSM (about 51% of a plain python-pkcs11 loop).
Here the thread takes the next job straight off a queue while the event loop is still
delivering the previous result, so the token stays busy; results come back through
``loop.call_soon_threadsafe``, in small batches while the queue is busy (see
``_run``). Measured on a loaded 2-core machine, 16 concurrent signers reach about 90%
of the raw loop's Ed25519 rate (80% for the much faster P-256). The event loop is
never blocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

log = logging.getLogger(__name__)

T = TypeVar("T")

#: (function, arguments, event loop or None, future to resolve)
_Job = tuple[Callable[..., Any], tuple[Any, ...], Any, Any]


#: Result delivery is batched while the queue is busy (see ``ModuleWorker._run``).
FLUSH_WHEN_QUEUE_BELOW = 4
FLUSH_AT_RESULTS = 8
FLUSH_AFTER_S = 0.001


def _deliver(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Runs on the event loop: hand results to the awaiting tasks (unless they gave up)."""
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class ModuleWorker:
    """The serial executor of one PKCS#11 module (shared by every store using it).

    ``generation`` counts ``C_Finalize``/``C_Initialize`` cycles: sessions opened in an
    older generation are dead, and the stores that hold them re-open.
    """

    _registry: dict[str, ModuleWorker] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.generation = 0
        self.lib: Any = None
        #: token lookups since the last C_Initialize: SoftHSM's view of its tokens is
        #: frozen at C_Initialize, so a token missing from an already-used module may
        #: still appear after re-initialising it.
        self.lookups = 0
        #: slot id -> how many sessions of this process are logged in to that token
        self.logins: dict[int, int] = {}
        self._users = 0
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ sharing

    @classmethod
    def acquire(cls, path: str) -> ModuleWorker:
        """The worker for ``path`` (a realpath), created and started on first use."""
        with cls._registry_lock:
            worker = cls._registry.get(path)
            if worker is None:
                worker = cls._registry[path] = ModuleWorker(path)
            worker._users += 1
            if worker._thread is None:
                worker._thread = threading.Thread(
                    target=worker._run,
                    name=f"pkcs11:{Path(path).name}",
                    daemon=True,
                )
                worker._thread.start()
            return worker

    def release(self) -> None:
        """Drop one user.

        The thread and the module stay for the life of the process: python-pkcs11
        caches the module per path, unloading a module other code may still hold is
        unsafe, and stopping then restarting the thread could let two threads drain
        the queue for a moment. An idle thread costs nothing.
        """
        with self._registry_lock:
            self._users -= 1

    # ------------------------------------------------------------ on the worker thread

    def load(self) -> Any:
        """The initialised python-pkcs11 ``lib`` (worker thread only)."""
        if self.lib is None:
            import pkcs11

            self.lib = pkcs11.lib(self.path)
        elif not self.lib.initialized:
            self.lib.initialize()
        return self.lib

    def reinitialize(self) -> None:
        """``C_Finalize`` + ``C_Initialize`` (worker thread only).

        Needed to see a token that was removed and re-created (SoftHSM) or after the
        module lost its state. Every session of every store on this module dies;
        those stores notice the new ``generation`` and re-open.
        """
        lib = self.load()
        self.generation += 1
        self.logins.clear()
        self.lookups = 0
        lib.reinitialize()

    # ------------------------------------------------------------ running jobs

    def _run(self) -> None:
        """Take jobs in order, run them, hand results back to their event loops.

        Waking an event loop costs a syscall and, worse, a thread switch that competes
        with this thread for the GIL and the CPU. So while many jobs are queued,
        results are handed back in small batches: at the latest when the queue runs
        low (the loop must refill it before this thread goes idle), when 8 results
        wait, or when the oldest waited 1 ms. An idle queue always flushes at once, so
        a lone request never waits for a batch.
        """
        queue_ = self._queue
        pending: dict[Any, list[tuple[Any, bool, Any]]] = {}
        waiting = 0
        oldest = 0.0
        while True:
            fn, args, loop, future = queue_.get()
            if not future.cancelled():  # else: e.g. a client gave up while queued
                try:
                    result, ok = fn(*args), True
                except BaseException as exc:
                    result, ok = exc, False
                if loop is None:
                    if ok:
                        future.set_result(result)
                    else:
                        future.set_exception(result)
                else:
                    if not waiting:
                        oldest = time.monotonic()
                    pending.setdefault(loop, []).append((future, ok, result))
                    waiting += 1
            if waiting and (
                queue_.qsize() < FLUSH_WHEN_QUEUE_BELOW
                or waiting >= FLUSH_AT_RESULTS
                or time.monotonic() - oldest >= FLUSH_AFTER_S
            ):
                for target, results in pending.items():
                    # A closed loop (agent shutting down) has nobody waiting any more.
                    with contextlib.suppress(RuntimeError):
                        target.call_soon_threadsafe(_deliver, results)
                pending = {}
                waiting = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this module's thread and return (or raise) its result."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return await self._call_portable(fn, args)
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, loop, future))
        return await future

    async def _call_portable(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """The same for event loops other than asyncio (trio): wait in a worker thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, args, None, future))
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
