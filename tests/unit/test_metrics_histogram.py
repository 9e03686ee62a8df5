"""Log2 histogram: bucket layout, percentiles vs a sorted-list reference, tail ratios."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secretivex.metrics.histogram import (
    NUM_BUCKETS,
    Log2Histogram,
    bucket_bounds,
    bucket_index,
    percentile_from_buckets,
    tail_ratio_from_buckets,
)

values = st.lists(st.integers(min_value=0, max_value=2**45), min_size=1, max_size=400)
quantiles = st.sampled_from([0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])


def reference_percentile(data: list[int], quantile: float) -> int:
    """Nearest rank, computed independently of the module under test."""
    ordered = sorted(data)
    rank = max(1, math.ceil(quantile * len(ordered) - 1e-9))
    return ordered[rank - 1]


def test_bucket_bounds_are_powers_of_two() -> None:
    assert bucket_index(0) == 0
    assert bucket_index(1) == 0
    assert bucket_index(2) == 1
    assert bucket_index(3) == 2
    assert bucket_index(4) == 2
    assert bucket_index(5) == 3
    assert bucket_index(1024) == 10
    assert bucket_index(1025) == 11
    assert bucket_index(-7) == 0
    assert bucket_index(2**80) == NUM_BUCKETS - 1
    for index in range(1, 40):
        lower, upper = bucket_bounds(index)
        assert upper == 2 * lower == 2**index
        assert bucket_index(upper) == index
        assert bucket_index(lower + 1) == index


@given(values, quantiles)
@settings(max_examples=300, deadline=None)
def test_percentile_lies_in_the_reference_bucket(data: list[int], quantile: float) -> None:
    hist = Log2Histogram()
    for value in data:
        hist.record(value)
    estimate = hist.percentile(quantile)
    expected = reference_percentile(data, quantile)
    assert estimate is not None
    assert bucket_index(estimate) == bucket_index(expected)
    assert estimate <= max(data)
    # Within a factor of two of the truth (log2 buckets), both ways.
    if expected >= 2:
        assert expected / 2 <= estimate <= expected * 2


@given(values)
@settings(max_examples=200, deadline=None)
def test_count_sum_max_and_buckets_are_exact(data: list[int]) -> None:
    hist = Log2Histogram()
    for value in data:
        hist.record(value)
    assert hist.count == len(data)
    assert hist.sum == sum(data)
    assert hist.max == max(data)
    buckets = hist.nonzero_buckets()
    assert sum(b["count"] for b in buckets) == len(data)
    for record in buckets:
        members = [v for v in data if bucket_index(v) == bucket_index(record["le_ns"])]
        assert len(members) == record["count"]
        assert all(v <= record["le_ns"] for v in members)


@given(values, st.integers(min_value=0, max_value=2**45))
@settings(max_examples=300, deadline=None)
def test_tail_ratio_is_exact_up_to_the_straddling_bucket(data: list[int], tail: int) -> None:
    hist = Log2Histogram()
    for value in data:
        hist.record(value)
    estimate = tail_ratio_from_buckets(hist.nonzero_buckets(), tail)
    assert estimate is not None
    truth = sum(1 for v in data if v > tail) / len(data)
    straddling = sum(1 for v in data if bucket_index(v) == bucket_index(tail)) / len(data)
    assert abs(estimate - truth) <= straddling + 1e-9
    assert 0.0 <= estimate <= 1.0


def test_empty_histogram_has_no_percentiles() -> None:
    hist = Log2Histogram()
    assert hist.percentile(0.5) is None
    assert hist.percentiles() == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert tail_ratio_from_buckets([], 10) is None
    summary = hist.summary()
    assert summary["count"] == 0 and summary["avg_ns"] == 0 and summary["buckets"] == []


def test_quantile_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile_from_buckets([{"le_ns": 2, "count": 1}], 0.0)
    with pytest.raises(ValueError):
        percentile_from_buckets([{"le_ns": 2, "count": 1}], 1.5)


def test_reset_clears_everything() -> None:
    hist = Log2Histogram()
    for value in (5, 500, 5_000_000):
        hist.record(value)
    hist.reset()
    assert (hist.count, hist.sum, hist.max) == (0, 0, 0)
    assert hist.nonzero_buckets() == []


def test_percentiles_of_a_known_distribution() -> None:
    hist = Log2Histogram()
    for value in range(1, 1001):
        hist.record(value * 1000)  # 1 us .. 1 ms
    p50 = hist.percentile(0.5)
    p99 = hist.percentile(0.99)
    assert p50 is not None and p99 is not None
    assert 262_144 < p50 <= 524_288  # the bucket holding 500 us
    assert 524_288 < p99 <= 1_000_000  # top bucket, capped by the max seen
