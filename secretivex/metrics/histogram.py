"""A log2 histogram of nanosecond durations, cheap enough for the agent's hot path.

Bucket ``i`` counts values ``v`` with ``2**(i-1) < v <= 2**i`` (bucket 0 holds 0 and 1),
so its inclusive upper bound is ``2**i`` ns. Recording is one ``bit_length`` and one
list increment. Percentiles are estimated from the buckets: the estimate always lies in
the same bucket as the true nearest-rank value (so within a factor of two of it), is
interpolated linearly inside that bucket and never exceeds the largest value seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "NUM_BUCKETS",
    "PERCENTILES",
    "Log2Histogram",
    "bucket_bounds",
    "bucket_index",
    "exact_percentile",
    "percentile_from_buckets",
    "tail_ratio_from_buckets",
]

#: 2**64 ns is ~585 years: nothing a clock reports falls past the last bucket.
NUM_BUCKETS = 65

#: Percentiles published in snapshots and reports, as (label, quantile).
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
)


def bucket_index(value: int) -> int:
    """The bucket a value falls into (negative values count as 0)."""
    if value <= 1:
        return 0
    index = (value - 1).bit_length()
    return index if index < NUM_BUCKETS else NUM_BUCKETS - 1


def bucket_bounds(index: int) -> tuple[int, int]:
    """``(exclusive lower, inclusive upper)`` bounds of a bucket, in ns."""
    if index <= 0:
        return (-1, 1)
    return (1 << (index - 1), 1 << index)


class Log2Histogram:
    """Count, sum, max and log2 buckets of non-negative integer durations (ns)."""

    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.max = 0
        self.buckets = [0] * NUM_BUCKETS

    def record(self, value: int) -> None:
        if value <= 1:
            if value < 0:
                value = 0
            self.buckets[0] += 1
        else:
            index = (value - 1).bit_length()
            self.buckets[index if index < NUM_BUCKETS else NUM_BUCKETS - 1] += 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def reset(self) -> None:
        self.count = 0
        self.sum = 0
        self.max = 0
        self.buckets = [0] * NUM_BUCKETS

    def nonzero_buckets(self) -> list[dict[str, int]]:
        """Non-cumulative ``[{"le_ns": upper, "count": n}]`` for buckets that saw values."""
        return [
            {"le_ns": 1 << index, "count": count}
            for index, count in enumerate(self.buckets)
            if count
        ]

    def percentile(self, quantile: float) -> int | None:
        return percentile_from_buckets(self.nonzero_buckets(), quantile, self.max)

    def percentiles(self) -> dict[str, int | None]:
        pairs = self.nonzero_buckets()
        return {label: percentile_from_buckets(pairs, q, self.max) for label, q in PERCENTILES}

    def summary(self) -> dict[str, Any]:
        """The JSON shape used in metrics snapshots."""
        pairs = self.nonzero_buckets()
        return {
            "count": self.count,
            "sum_ns": self.sum,
            "max_ns": self.max,
            "avg_ns": (self.sum // self.count) if self.count else 0,
            "percentiles_ns": {
                label: percentile_from_buckets(pairs, q, self.max) for label, q in PERCENTILES
            },
            "buckets": pairs,
        }


def _normalise(buckets: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """``[(index, count)]`` sorted by bucket, from ``{"le_ns", "count"}`` records."""
    merged: dict[int, int] = {}
    for record in buckets:
        le = int(record["le_ns"])
        count = int(record["count"])
        if count <= 0:
            continue
        index = bucket_index(le)
        merged[index] = merged.get(index, 0) + count
    return sorted(merged.items())


def percentile_from_buckets(
    buckets: Iterable[Mapping[str, Any]],
    quantile: float,
    max_value: int | None = None,
) -> int | None:
    """Nearest-rank percentile estimate, interpolated inside its log2 bucket.

    ``quantile`` is in (0, 1]. Returns ``None`` when the buckets are empty.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    pairs = _normalise(buckets)
    total = sum(count for _, count in pairs)
    if total == 0:
        return None
    rank = max(1, _ceil(quantile * total))
    seen = 0
    for index, count in pairs:
        if seen + count >= rank:
            lower, upper = bucket_bounds(index)
            lower = max(lower, 0)
            if max_value is not None and lower < max_value < upper:
                upper = max_value  # the top bucket ends at the largest value seen
            within = rank - seen  # 1..count
            estimate = lower + ((upper - lower) * within + count - 1) // count
            if max_value is not None and max_value >= 0:
                estimate = min(estimate, max_value)
            return estimate
        seen += count
    return None  # pragma: no cover - unreachable: rank <= total


def tail_ratio_from_buckets(buckets: Iterable[Mapping[str, Any]], tail_ns: int) -> float | None:
    """Estimated fraction of values strictly above ``tail_ns`` (linear inside a bucket)."""
    pairs = _normalise(buckets)
    total = sum(count for _, count in pairs)
    if total == 0:
        return None
    above = 0.0
    for index, count in pairs:
        lower, upper = bucket_bounds(index)
        if lower >= tail_ns:
            above += count
        elif upper > tail_ns:
            above += count * (upper - tail_ns) / (upper - lower)
    return above / total


def _ceil(value: float) -> int:
    """Ceiling that forgives float noise (``0.95 * 20`` may be ``19.000000000000004``)."""
    return math.ceil(value - 1e-9)


def exact_percentile(sorted_values: Sequence[int], quantile: float) -> int | None:
    """Nearest-rank percentile of already sorted values (the reference the tests use)."""
    if not sorted_values:
        return None
    rank = max(1, _ceil(quantile * len(sorted_values)))
    return sorted_values[rank - 1]
