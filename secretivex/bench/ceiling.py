"""This machine's signing ceiling: in-process signatures per second per algorithm.

For every algorithm the agent signs in software, in alternating rounds (so load drift
from other processes hits every variant alike):

* ``one_core``: one thread signing back to back;
* ``two_threads`` (or N = CPUs): N threads signing at once (cryptography releases the
  GIL while it signs, so this is the most the agent could get from a pool);
* ``inline_loop``: 16 anyio tasks signing on the event loop (how the agent signs inline);
* ``pool_loop``: the same 16 tasks through ``anyio.to_thread`` with a ``CapacityLimiter``
  sized to the CPUs (how the agent signs in its pool).

``pool_loop / inline_loop`` is what moving an algorithm to the pool buys (or costs: the
thread hop), measured in one run; ``secretivex/keys/signing.py`` keeps the decision.
Ratios, never absolute numbers, are comparable across runs on a shared machine.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALGORITHMS", "CeilingResult", "measure_ceiling", "render_ceiling"]

#: Name -> key factory. Generated fresh: nothing here is secret or kept.
ALGORITHMS: tuple[str, ...] = (
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
)
VARIANTS: tuple[str, ...] = ("one_core", "threads", "inline_loop", "pool_loop")


def _make_key(name: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from secretivex.keys.software import SoftwareKey

    if name == "ed25519":
        private: Any = ed25519.Ed25519PrivateKey.generate()
    elif name.startswith("ecdsa-p"):
        curve = {"256": ec.SECP256R1(), "384": ec.SECP384R1(), "521": ec.SECP521R1()}
        private = ec.generate_private_key(curve[name.removeprefix("ecdsa-p")])
    else:
        private = rsa.generate_private_key(65537, int(name.removeprefix("rsa-")))
    return SoftwareKey(private, f"ceiling-{name}")


@dataclass(slots=True)
class CeilingResult:
    algorithm: str
    #: variant -> signatures/s of each round
    rounds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        return statistics.median(self.rounds[variant])

    def ratio(self, variant: str, base: str) -> float:
        """Median of the per-round ratios (same round, so drift cancels)."""
        pairs = zip(self.rounds[variant], self.rounds[base], strict=True)
        return statistics.median(a / b for a, b in pairs if b)


def _flags(name: str) -> int:
    return 4 if name.startswith("rsa") else 0  # rsa-sha2-512 for RSA


def _one_core(sign: Callable[[], object], seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(4):
            sign()
        n += 4
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def _threads(sign: Callable[[], object], seconds: float, count: int) -> float:
    counts = [0] * count
    go = threading.Barrier(count + 1)
    stop = threading.Event()

    def work(index: int) -> None:
        go.wait()
        while not stop.is_set():
            sign()
            counts[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    go.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - t0)


def _loop(sign: Callable[[], object], seconds: float, pool: bool, cpus: int) -> float:
    import anyio
    import anyio.to_thread

    async def main() -> float:
        limiter = anyio.CapacityLimiter(cpus)
        done = 0
        end = time.perf_counter() + seconds

        async def task() -> None:
            nonlocal done
            while time.perf_counter() < end:
                if pool:
                    await anyio.to_thread.run_sync(sign, limiter=limiter)
                else:
                    sign()
                    await anyio.lowlevel.checkpoint()
                done += 1

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(task)
        return done / (time.perf_counter() - t0)

    return float(anyio.run(main))


def measure_ceiling(
    algorithms: tuple[str, ...] = ALGORITHMS,
    seconds: float = 0.5,
    rounds: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[CeilingResult]:
    """Signatures/s per algorithm and variant, ``rounds`` alternating rounds each."""
    try:
        cpus = max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    results = []
    for name in algorithms:
        key = _make_key(name)
        data = os.urandom(128)
        flags = _flags(name)

        def sign(key: Any = key, data: bytes = data, flags: int = flags) -> object:
            return key.sign(data, flags)

        sign()  # warm caches (blinding, precomputation)
        result = CeilingResult(name, {variant: [] for variant in VARIANTS})
        for round_no in range(rounds):
            order = VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                if variant == "one_core":
                    value = _one_core(sign, seconds)
                elif variant == "threads":
                    value = _threads(sign, seconds, cpus)
                else:
                    value = _loop(sign, seconds, variant == "pool_loop", cpus)
                result.rounds[variant].append(value)
        if progress is not None:
            progress(f"{name}: done")
        results.append(result)
    return results


def render_ceiling(results: list[CeilingResult], cpus: int, load: str) -> str:
    """A Markdown table: medians, the per-round spread of the pool gain, the decision."""
    from secretivex.keys.signing import signs_in_pool_by_name

    lines = [
        f"In-process signatures/s on this host ({cpus} CPUs; load average at start {load}); "
        "medians of alternating rounds, the pool/inline spread is min-max over rounds.",
        "",
        f"| algorithm | 1 thread | {cpus} threads | {cpus} threads / 1 | 16 tasks inline "
        "| 16 tasks via to_thread pool | pool / inline (spread) | agent signs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        pairs = [
            a / b for a, b in zip(r.rounds["pool_loop"], r.rounds["inline_loop"], strict=True) if b
        ]
        lines.append(
            f"| {r.algorithm} | {r.median('one_core'):,.0f} | {r.median('threads'):,.0f} | "
            f"{r.ratio('threads', 'one_core'):.2f}x | {r.median('inline_loop'):,.0f} | "
            f"{r.median('pool_loop'):,.0f} | {r.ratio('pool_loop', 'inline_loop'):.2f}x "
            f"({min(pairs):.2f}-{max(pairs):.2f}) | "
            f"{'pool' if signs_in_pool_by_name(r.algorithm) else 'inline'} |"
        )
    return "\n".join(lines)
