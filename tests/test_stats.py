"""The statistics layer: histogram accuracy, the recorder's counters, snapshots and JSON."""

from __future__ import annotations

import math
import random
from dataclasses import fields, replace
from fractions import Fraction

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from iofs.backends.base import EngineStatistics
from iofs.histogram import PERCENTILES, Histogram, HistogramSnapshot, bucket_bounds, bucket_index
from iofs.intervals import diff
from iofs.stats import DATA_OPERATIONS, OperationSnapshot, ProcessSnapshot, Recorder, Snapshot

#: Largest relative error of a percentile: one bucket is at most 1/16 of its lower bound.
RELATIVE_ERROR = Fraction(1, 16)

latencies = st.integers(min_value=0, max_value=10**11)  # up to 100 s in ns
quantiles = st.sampled_from(PERCENTILES) | st.floats(min_value=0.001, max_value=100)


def histogram_of(values: list[int]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram


def exact_percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile: the smallest value with at least q % at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered) / 100))
    return ordered[rank - 1]


# -- buckets and histograms ------------------------------------------------------------
def test_buckets_tile_every_64_bit_value_without_gaps() -> None:
    expected_low = 0
    index = 0
    while expected_low < 2**64:
        low, high = bucket_bounds(index)
        assert low == expected_low and high >= low
        assert (high - low + 1) * 16 <= max(16, low)  # width <= low / 16 (or 1)
        assert bucket_index(low) == bucket_index(high) == index
        expected_low = high + 1
        index += 1
    assert bucket_bounds(index - 1)[1] == 2**64 - 1
    histogram = Histogram()
    histogram.record(2**64 - 1)  # the largest value fits
    assert histogram.percentile(100) == 2**64 - 1


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_a_value_lies_in_its_bucket(value: int) -> None:
    low, high = bucket_bounds(bucket_index(value))
    assert low <= value <= high


@given(st.lists(latencies, min_size=1, max_size=300), quantiles)
def test_percentiles_are_never_below_and_at_most_a_sixteenth_above_exact(
    values: list[int], q: float
) -> None:
    histogram = histogram_of(values)
    exact = exact_percentile(values, q)
    estimate = histogram.percentile(q)
    assert exact <= estimate <= exact + exact * RELATIVE_ERROR
    assert estimate <= max(values)
    # What a percentile promises: at least q % of the values are at or below it.
    assert sum(v <= estimate for v in values) * 100 >= q * len(values)


@given(st.lists(latencies, max_size=200))
def test_count_total_max_and_mean_are_exact(values: list[int]) -> None:
    snapshot = histogram_of(values).snapshot()
    assert snapshot.count == len(values)
    assert snapshot.total == sum(values)
    assert snapshot.max == max(values, default=0)
    summary = snapshot.percentiles()
    assert list(summary) == ["p50", "p90", "p99", "p99.9", "max", "mean"]
    assert summary["mean"] == pytest.approx(sum(values) / len(values) if values else 0.0)
    assert summary["max"] == max(values, default=0)


def test_small_values_are_exact_and_negatives_count_as_zero() -> None:
    histogram = histogram_of([-5, 0, 1, 31])
    assert histogram.snapshot().buckets == ((0, 2), (1, 1), (31, 1))
    assert histogram.percentile(50) == 0 and histogram.percentile(75) == 1
    assert Histogram().percentile(99) == 0  # empty


def test_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="percentile"):
        Histogram().percentile(0)
    with pytest.raises(ValueError, match="percentile"):
        Histogram().percentile(100.1)


@given(st.lists(latencies, max_size=150), st.lists(latencies, min_size=1, max_size=150), quantiles)
def test_subtracting_snapshots_gives_the_interval_histogram(
    before: list[int], during: list[int], q: float
) -> None:
    histogram = histogram_of(before)
    older = histogram.snapshot()
    for value in during:
        histogram.record(value)
    interval = histogram.snapshot() - older
    alone = histogram_of(during).snapshot()
    assert (interval.buckets, interval.count, interval.total) == (
        alone.buckets,
        alone.count,
        alone.total,
    )
    # The interval's max is estimated from its top bucket: within that bucket's bounds.
    high = bucket_bounds(bucket_index(alone.max))[1]
    assert alone.max <= interval.max <= high
    exact = exact_percentile(during, q)
    assert exact <= interval.percentile(q) <= exact + exact * RELATIVE_ERROR


def test_subtracting_in_the_wrong_order_is_refused() -> None:
    older = histogram_of([1, 2, 3]).snapshot()
    newer = histogram_of([1, 2, 3, 1000]).snapshot()
    assert (newer - older).count == 1
    with pytest.raises(ValueError, match="not of the same histogram"):
        older - newer


# -- the recorder ------------------------------------------------------------------------
def fake_process() -> ProcessSnapshot:
    return ProcessSnapshot(1.0, 0.5, 10, 2, 1 << 20, 3)


def test_recorder_counts_requests_bytes_errors_and_concurrency() -> None:
    recorder = Recorder("blocking", process=fake_process)
    starts = [recorder.begin("read") for _ in range(10)]  # 10 in flight at once
    recorder.begin("lookup")
    middle = recorder.snapshot([])
    assert middle.operations["read"].in_flight == 10 and middle.in_flight == 11
    for index, start in enumerate(starts):
        recorder.end("read", start, error=index < 3, nbytes=0 if index < 3 else 4096)
    start = recorder.begin("read")  # and one more, alone
    recorder.end("read", start, error=False, nbytes=100)
    snapshot = recorder.snapshot([])
    read = snapshot.operations["read"]
    assert (read.kind, read.count, read.errors, read.bytes) == ("data", 11, 3, 7 * 4096 + 100)
    assert (read.in_flight, read.max_in_flight) == (0, 10)
    assert read.latency.count == 11 and read.latency.max >= read.latency.percentile(50) >= 0
    lookup = snapshot.operations["lookup"]
    assert (lookup.kind, lookup.count, lookup.in_flight, lookup.max_in_flight) == (
        "metadata",
        0,
        1,
        1,
    )
    assert snapshot.in_flight == 1


def test_data_operations_are_those_the_engine_serves() -> None:
    assert frozenset({"read", "write", "fsync"}) == DATA_OPERATIONS
    recorder = Recorder("blocking", process=fake_process)
    for op in ("write", "fsync", "flush", "fsyncdir", "getattr"):
        recorder.end(op, recorder.begin(op), error=False)
    kinds = {name: op.kind for name, op in recorder.snapshot([]).operations.items()}
    assert kinds == {
        "write": "data",
        "fsync": "data",
        "flush": "metadata",
        "fsyncdir": "metadata",
        "getattr": "metadata",
    }


def test_snapshot_carries_time_uptime_modes_engines_and_extra() -> None:
    now = [1000.0]
    recorder = Recorder(
        "blocking",
        wall_clock=lambda: 1_700_000_000 + now[0],
        monotonic=lambda: now[0],
        process=fake_process,
    )
    now[0] += 5
    recorder.mode_changed("threads")
    now[0] += 2.5
    engines = [engine_statistics("threads"), engine_statistics("blocking")]
    snapshot = recorder.snapshot(engines, {"inodes": 3, "open_files": 1})
    assert snapshot.time == 1_700_001_007.5 and snapshot.uptime == 7.5
    assert snapshot.mode == recorder.mode == "threads"
    assert snapshot.mode_history == (("blocking", 1_700_001_000.0), ("threads", 1_700_001_005.0))
    assert snapshot.engine == engines[0] and snapshot.engines == tuple(engines)
    assert snapshot.extra == {"inodes": 3, "open_files": 1}
    assert snapshot.process == fake_process()


def test_snapshot_reads_the_real_process() -> None:
    process = Recorder("blocking").snapshot([]).process
    assert process.cpu_user > 0 and process.cpu_system >= 0
    assert process.rss > 0 and process.threads >= 1
    assert process.ctx_switches_voluntary + process.ctx_switches_involuntary > 0


def test_heartbeat_records_how_late_the_loop_wakes_it() -> None:
    clock = trio.testing.MockClock()  # time moves only when the test moves it
    recorder = Recorder("blocking", process=fake_process)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            recorder.start(nursery, interval=0.01)
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.015)  # the loop comes back 5 ms after the heartbeat's deadline
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.01)  # and exactly on time for the next one
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    lag = recorder.loop_lag.snapshot()
    assert lag.count == 2
    assert lag.max == 5_000_000
    assert lag.percentile(50) == 0


# -- JSON -----------------------------------------------------------------------------
def engine_statistics(name: str, **counters: int) -> EngineStatistics:
    numbers = {f.name: 0 for f in fields(EngineStatistics) if f.type == "int"}
    return EngineStatistics(
        **{**numbers, "queue_depth": 64, **counters}, engine=name, direct=False, details={}
    )


names = st.text(min_size=1, max_size=10)
counts = st.integers(min_value=0, max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False)
histograms = st.lists(st.integers(0, 2**63 - 1), max_size=20).map(
    lambda values: histogram_of(values).snapshot()
)
engines = st.builds(
    EngineStatistics,
    engine=names,
    direct=st.booleans(),
    details=st.dictionaries(names, counts, max_size=3),
    **{f.name: counts for f in fields(EngineStatistics) if f.type == "int"},
)
snapshots = st.builds(
    Snapshot,
    time=floats,
    uptime=floats,
    mode=names,
    mode_history=st.lists(st.tuples(names, floats), max_size=4).map(tuple),
    operations=st.dictionaries(
        names,
        st.builds(
            OperationSnapshot,
            kind=st.sampled_from(["data", "metadata"]),
            count=counts,
            errors=counts,
            bytes=counts,
            in_flight=counts,
            max_in_flight=counts,
            latency=histograms,
        ),
        max_size=4,
    ),
    engines=st.lists(engines, max_size=3).map(tuple),
    loop_lag=histograms,
    process=st.builds(
        ProcessSnapshot,
        cpu_user=floats,
        cpu_system=floats,
        ctx_switches_voluntary=counts,
        ctx_switches_involuntary=counts,
        rss=counts,
        threads=counts,
    ),
    extra=st.dictionaries(names, counts, max_size=4),
)


@given(snapshots)
def test_json_round_trips_exactly(snapshot: Snapshot) -> None:
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    assert Snapshot.from_json(snapshot.to_json(indent=None)) == snapshot


def test_json_keeps_names_that_look_like_buckets() -> None:
    snapshot = Recorder("[ 1, 2, 3 ]", process=fake_process).snapshot([])
    assert '"mode": "[ 1, 2, 3 ]"' in snapshot.to_json()
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_json_of_a_recorded_snapshot_round_trips_and_says_its_units() -> None:
    recorder = Recorder("blocking")
    for _ in range(100):
        recorder.end("read", recorder.begin("read"), error=False, nbytes=4096)
    recorder.loop_lag.record(1_234_567)
    snapshot = recorder.snapshot([engine_statistics("blocking", reads=100)], {"inodes": 1})
    text = snapshot.to_json()
    assert Snapshot.from_json(text) == snapshot
    for key in ('"uptime_s"', '"cpu_user_s"', '"rss_bytes"', '"total_ns"', '"percentiles_us"'):
        assert key in text
    assert '"p99.9": 1234.567' in text  # the loop lag's only value, in µs


def test_from_json_refuses_other_documents() -> None:
    with pytest.raises(ValueError, match="iofs-statistics"):
        Snapshot.from_json('{"engine": {}}')
    good = Recorder("blocking", process=fake_process).snapshot([]).to_json()
    with pytest.raises(ValueError, match="iofs-statistics"):
        Snapshot.from_json(good.replace('"uptime_s"', '"uptime"'))
    broken_bucket = histogram_of([1000]).snapshot()
    snapshot = replace(
        Recorder("blocking", process=fake_process).snapshot([]), loop_lag=broken_bucket
    )
    index = bucket_index(1000)
    text = snapshot.to_json(indent=None).replace(f'"{index}":1', '"99999":1')
    with pytest.raises(ValueError, match="out of range"):
        Snapshot.from_json(text)


def test_coarsening_keeps_upper_bounds_and_fits_a_limit() -> None:
    recorder = Recorder("blocking", process=fake_process)
    rng = random.Random(7)
    for name in [f"op{i}" for i in range(30)]:
        for _ in range(3000):
            recorder.end(name, recorder.begin(name) - int(rng.lognormvariate(12, 3)), error=False)
    snapshot = recorder.snapshot([])
    full = snapshot.to_json(indent=None)
    text = snapshot.to_json_within(len(full) // 2)
    assert len(text) <= len(full) // 2
    coarse = Snapshot.from_json(text)
    for name, op in snapshot.operations.items():
        for q in PERCENTILES:
            assert coarse.operations[name].latency.percentile(q) >= op.latency.percentile(q)
    # An interval between a fine and a coarse snapshot of one histogram still works.
    assert (coarse.operations["op0"].latency - snapshot.operations["op0"].latency).count == 0


# -- intervals -------------------------------------------------------------------------
def test_diff_gives_rates_interval_percentiles_and_cpu() -> None:
    now = [10.0]
    cpu = [2.0]
    recorder = Recorder(
        "blocking",
        monotonic=lambda: now[0],
        process=lambda: ProcessSnapshot(cpu[0], 1.0, 100, 10, 1 << 20, 3),
    )
    for _ in range(50):
        recorder.end("read", recorder.begin("read"), error=False, nbytes=4096)
    older = recorder.snapshot([engine_statistics("blocking", reads=50, submits=50)])
    now[0] += 2
    cpu[0] += 0.5
    for index in range(400):
        recorder.end("read", recorder.begin("read"), error=index % 100 == 0, nbytes=4096)
    recorder.loop_lag.record(2_000_000)
    engine = engine_statistics("blocking", reads=450, submits=250, completions=400)
    interval = diff(recorder.snapshot([engine]), older)
    assert interval.seconds == 2 and not interval.since_start
    read = interval.operations["read"]
    assert (read.count, read.errors, read.bytes) == (400, 4, 400 * 4096)
    assert (read.ops_per_s, read.errors_per_s, read.bytes_per_s) == (200, 2, 200 * 4096)
    assert read.latency.count == 400
    assert interval.loop_lag.count == 1 and interval.loop_lag.percentile(99) >= 2_000_000
    assert interval.cpu_user_percent == pytest.approx(25) and interval.cpu_system_percent == 0
    assert interval.engine is not None
    assert interval.engine.reads_per_s == 200 and interval.engine.submits_per_s == 100
    assert interval.engine.mean_batch == 400 / 200


def test_diff_after_a_mode_switch_counts_the_new_engine_from_zero() -> None:
    now = [0.0]
    recorder = Recorder("blocking", monotonic=lambda: now[0], process=fake_process)
    older = recorder.snapshot([engine_statistics("blocking", reads=1000)])
    now[0] += 1
    recorder.mode_changed("threads")
    newer = recorder.snapshot(
        [engine_statistics("threads", reads=300), engine_statistics("blocking", reads=1010)]
    )
    interval = diff(newer, older)
    assert interval.engine is not None and interval.engine.engine == "threads"
    assert interval.engine.reads_per_s == 300
    assert interval.engine.mean_batch is None  # nothing submitted


def test_diff_without_older_averages_since_start() -> None:
    now = [0.0]
    recorder = Recorder("blocking", monotonic=lambda: now[0], process=fake_process)
    recorder.end("getattr", recorder.begin("getattr"), error=False)
    now[0] += 4
    interval = diff(recorder.snapshot([]))
    assert interval.since_start and interval.seconds == 4
    assert interval.operations["getattr"].ops_per_s == 0.25
    assert interval.engine is None
    assert interval.cpu_user_percent == 25  # 1 s of CPU in 4 s


def test_diff_refuses_snapshots_in_the_wrong_order() -> None:
    now = [0.0]
    recorder = Recorder("blocking", monotonic=lambda: now[0], process=fake_process)
    first = recorder.snapshot([])
    now[0] += 1
    with pytest.raises(ValueError, match="not older"):
        diff(first, recorder.snapshot([]))


def test_an_empty_histogram_snapshot_is_zero() -> None:
    empty = HistogramSnapshot()
    assert empty.percentiles() == {
        "p50": 0,
        "p90": 0,
        "p99": 0,
        "p99.9": 0,
        "max": 0,
        "mean": 0.0,
    }
    assert empty - empty == empty
