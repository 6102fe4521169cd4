"""Latency histograms, cheap enough to keep on for every request: log-linear buckets
(16 per power of two), so a percentile read from one is at most 6.25 % above the exact
value, never below; and the exact nearest rank of a sorted list, counted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

#: The percentiles every latency summary shows, in percent.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

#: Latency histograms: values below 2**(SUB_BITS + 1) get a bucket each; above, every
#: power of two is split into 2**SUB_BITS buckets, so a bucket's width is at most
#: 1/16 of its lower bound (the relative error of a percentile).
SUB_BITS = 4
_SUB_COUNT = 1 << SUB_BITS
_EXACT = 1 << (SUB_BITS + 1)  # 32: values below are counted exactly
_SHIFT_BASE = SUB_BITS + 1
#: Index of the bucket of the largest 64-bit value, plus one.
BUCKETS = ((64 - _SHIFT_BASE) << SUB_BITS) + _EXACT


def bucket_index(value: int) -> int:
    """The bucket *value* (>= 0, below 2**64) is counted in."""
    if value < _EXACT:
        return max(value, 0)
    shift = value.bit_length() - _SHIFT_BASE
    return (shift << SUB_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value counted in bucket *index* (both inclusive)."""
    if index < _EXACT:
        return index, index
    shift = (index >> SUB_BITS) - 1
    mantissa = (index & (_SUB_COUNT - 1)) + _SUB_COUNT
    return mantissa << shift, ((mantissa + 1) << shift) - 1


def _rank(q: float, count: int) -> int:
    """The nearest rank (1-based) of percentile *q* among *count* values.

    Computed exactly (99.9 % of 1000 is rank 999, not 1000 through a rounding error).
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100]: {q}")
    return max(1, math.ceil(Fraction(str(q)) * count / 100))


def nearest_rank(ordered: Sequence[int], q: float) -> int:
    """Percentile *q* (0 < q <= 100) of the ascending *ordered* values, exactly: the
    nearest rank, as `Histogram.percentile` counts it (0 if there are none)."""
    return ordered[_rank(q, len(ordered)) - 1] if ordered else 0


def _percentile(buckets: Iterable[tuple[int, int]], count: int, maximum: int, q: float) -> int:
    """Percentile *q* of a histogram given as ascending (index, count) pairs."""
    rank = _rank(q, count)
    if not count:
        return 0
    seen = 0
    for index, bucket_count in buckets:
        seen += bucket_count
        if seen >= rank:
            return min(bucket_bounds(index)[1], maximum)
    return maximum


class Histogram:
    """Latencies (any non-negative integers, here nanoseconds), cheap enough to keep on.

    `record` is a few integer operations and a list increment. `percentile` returns the
    upper bound of the bucket holding the exact nearest-rank percentile, clamped to the
    largest value recorded: never below the exact value, at most 6.25 % above it.
    """

    __slots__ = ("_counts", "count", "max", "total")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        #: Values recorded, their sum (for the mean) and the largest.
        self.count = 0
        self.total = 0
        self.max = 0

    def record(self, value: int) -> None:
        """Count *value* (>= 0; a negative value is counted as 0)."""
        # bucket_index, inlined: this runs once per FUSE request.
        if value < _EXACT:
            if value < 0:  # noqa: PLR1730  (an if costs less than a max() call)
                value = 0
            self._counts[value] += 1
        else:
            shift = value.bit_length() - _SHIFT_BASE
            self._counts[(shift << SUB_BITS) + (value >> shift)] += 1
        self.count += 1
        self.total += value
        if value > self.max:  # noqa: PLR1730
            self.max = value

    def percentile(self, q: float) -> int:
        """Percentile *q* (in percent, 0 < q <= 100) of the values recorded; 0 if none."""
        return _percentile(self._buckets(), self.count, self.max, q)

    def _buckets(self) -> list[tuple[int, int]]:
        return [(index, count) for index, count in enumerate(self._counts) if count]

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(
            buckets=tuple(self._buckets()), count=self.count, total=self.total, max=self.max
        )


@dataclass(frozen=True)
class HistogramSnapshot:
    """A frozen `Histogram`: the non-empty buckets as ascending (index, count) pairs.

    ``newer - older`` is the histogram of the values recorded between two snapshots of
    the same histogram; its `max` is an estimate (the upper bound of its highest
    bucket, clamped to the newer maximum), since a histogram does not remember when
    its maximum was recorded.
    """

    buckets: tuple[tuple[int, int], ...] = ()
    count: int = 0
    #: Sum of the values (for the mean).
    total: int = 0
    max: int = 0
    #: 0, or n when each run of 2**n neighbouring buckets (within a power of two) was
    #: merged into its highest one to make the snapshot smaller (see `coarsened`).
    coarseness: int = 0

    def percentile(self, q: float) -> int:
        """Percentile *q* (in percent, 0 < q <= 100); 0 if the histogram is empty."""
        return _percentile(self.buckets, self.count, self.max, q)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentiles(self) -> dict[str, float]:
        """p50, p90, p99, p99.9, max and mean, in the unit of the values recorded."""
        summary: dict[str, float] = {f"p{q:g}": self.percentile(q) for q in PERCENTILES}
        summary["max"] = self.max
        summary["mean"] = self.mean
        return summary

    def coarsened(self, bits: int) -> HistogramSnapshot:
        """This histogram with each run of 2**bits buckets merged into its highest.

        Percentiles stay upper bounds of the exact ones, with up to 2**bits times the
        error. Used to fit a snapshot into the 64 KiB an xattr may hold.
        """
        bits = max(bits, self.coarseness)
        if bits == self.coarseness:
            return self
        if not 0 <= bits <= SUB_BITS:
            raise ValueError(f"coarseness must be within 0..{SUB_BITS}: {bits}")
        mask = (1 << bits) - 1
        counts: dict[int, int] = {}
        for index, count in self.buckets:
            merged = index | mask if index >= _EXACT else index
            counts[merged] = counts.get(merged, 0) + count
        return HistogramSnapshot(
            buckets=tuple(sorted(counts.items())),
            count=self.count,
            total=self.total,
            max=self.max,
            coarseness=bits,
        )

    def __sub__(self, older: HistogramSnapshot) -> HistogramSnapshot:
        if self.coarseness != older.coarseness:
            bits = max(self.coarseness, older.coarseness)
            return self.coarsened(bits) - older.coarsened(bits)
        counts = dict(self.buckets)
        for index, count in older.buckets:
            counts[index] = counts.get(index, 0) - count
        if any(count < 0 for count in counts.values()) or older.count > self.count:
            raise ValueError("histogram snapshots are not of the same histogram, in order")
        buckets = tuple(sorted((i, c) for i, c in counts.items() if c))
        maximum = min(bucket_bounds(buckets[-1][0])[1], self.max) if buckets else 0
        return HistogramSnapshot(
            buckets=buckets,
            count=self.count - older.count,
            total=self.total - older.total,
            max=maximum,
            coarseness=self.coarseness,
        )
