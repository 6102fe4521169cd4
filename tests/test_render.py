"""Renderings of the statistics (``iofs stats``, ``iofs top``), from fixed snapshots.

``tests/data/snapshot.json`` is `switched_snapshot()` written by `Snapshot.to_json`; after
a deliberate change of the JSON layout, rewrite it with ``python -m tests.test_render``
(and update the statistics reference in docs/statistics.md).
"""

from __future__ import annotations

import io
from dataclasses import fields, replace
from pathlib import Path

from rich.console import Console, RenderableType

from iofs.backends.base import EngineStatistics
from iofs.histogram import Histogram, HistogramSnapshot
from iofs.render import dashboard, stats_table
from iofs.stats import DATA_OPERATIONS, OperationSnapshot, ProcessSnapshot, Snapshot
from iofs.units import format_bytes, format_clock, format_duration, format_ns, format_rate

FIXTURE = Path(__file__).parent / "data" / "snapshot.json"
T0 = 1_700_000_000.0  # wall clock when the recorder started
EXTRA = {"inodes": 42, "open_files": 3, "open_dirs": 1, "unexpected_errors": 0}


def render(renderable: RenderableType) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def latencies(*groups: tuple[int, int]) -> HistogramSnapshot:
    """A histogram of *count* copies of *value* for each (count, value)."""
    histogram = Histogram()
    for count, value in groups:
        for _ in range(count):
            histogram.record(value)
    return histogram.snapshot()


def operation(
    name: str,
    count: int,
    latency: HistogramSnapshot,
    *,
    nbytes: int = 0,
    errors: int = 0,
    in_flight: int = 0,
) -> OperationSnapshot:
    return OperationSnapshot(
        kind="data" if name in DATA_OPERATIONS else "metadata",
        count=count,
        errors=errors,
        bytes=nbytes,
        in_flight=in_flight,
        max_in_flight=max(in_flight, 4),
        latency=latency,
    )


def engine(name: str, *, direct: bool = False, **counters: int) -> EngineStatistics:
    numbers = {f.name: 0 for f in fields(EngineStatistics) if f.type == "int"}
    return EngineStatistics(
        **{**numbers, "queue_depth": 64, **counters},
        engine=name,
        direct=direct,
        details={"workers_busy": counters.get("in_flight", 0)},
    )


MODES = (("blocking", T0), ("threads", T0 + 50))


def older_snapshot() -> Snapshot:
    """100 s after start: 1,000 reads and 100 lookups done, no writes yet."""
    return Snapshot(
        time=T0 + 100,
        uptime=100.0,
        mode="threads",
        mode_history=MODES,
        operations={
            "read": operation("read", 1000, latencies((1000, 50_000)), nbytes=1000 * 4096),
            "lookup": operation("lookup", 100, latencies((100, 8_000)), errors=10),
        },
        engines=(
            engine("threads", reads=1000, bytes_read=1000 * 4096, submits=1000, completions=1000),
        ),
        loop_lag=latencies((1000, 200_000)),
        process=ProcessSnapshot(10.0, 5.0, 5000, 100, 50 << 20, 9),
        extra=EXTRA,
    )


def newer_snapshot() -> Snapshot:
    """2 s later: 2,000 more reads (1,000/s), 200 writes of 1 MiB (100 MiB/s), an fsync."""
    return Snapshot(
        time=T0 + 102,
        uptime=102.0,
        mode="threads",
        mode_history=MODES,
        operations={
            "read": operation(
                "read",
                3000,
                latencies((1000, 50_000), (1970, 30_000), (30, 3_000_000)),
                nbytes=3000 * 4096,
                in_flight=2,
            ),
            "write": operation("write", 200, latencies((200, 900_000)), nbytes=200 << 20),
            "fsync": operation("fsync", 0, latencies(), in_flight=1),
            "lookup": operation("lookup", 100, latencies((100, 8_000)), errors=10),
        },
        engines=(
            engine(
                "threads",
                reads=3000,
                writes=200,
                bytes_read=3000 * 4096,
                bytes_written=200 << 20,
                submits=2200,
                completions=2200,
                in_flight=3,
                max_in_flight=8,
            ),
        ),
        loop_lag=latencies((1000, 200_000), (197, 300_000), (3, 40_000_000)),
        process=ProcessSnapshot(11.0, 5.5, 7000, 120, 60 << 20, 9),
        extra=EXTRA,
    )


def switched_snapshot() -> Snapshot:
    """1 s after `newer_snapshot`, switched to io_uring with O_DIRECT; threads drains."""
    newer = newer_snapshot()
    return Snapshot(
        time=T0 + 103,
        uptime=103.0,
        mode="io_uring",
        mode_history=(*MODES, ("io_uring", T0 + 102.5)),
        operations=newer.operations,
        engines=(
            engine("io_uring", direct=True, reads=500, submits=100, completions=500, bounced=7),
            engine("threads", reads=3001, in_flight=1, max_in_flight=8),
        ),
        loop_lag=newer.loop_lag,
        process=ProcessSnapshot(11.5, 5.6, 7100, 125, 61 << 20, 10, fds=1030, fd_limit=1024),
        extra={**EXTRA, "fd_budget": 512, "fds_cached": 500, "fds_pinned": 2},
    )


# -- the fixture ------------------------------------------------------------------------
def test_fixture_is_the_snapshot_it_was_written_from() -> None:
    text = FIXTURE.read_text()
    assert Snapshot.from_json(text) == switched_snapshot()
    assert text == switched_snapshot().to_json() + "\n", "JSON layout changed: see docstring"


def test_stats_table_renders_the_fixture() -> None:
    text = render(stats_table(Snapshot.from_json(FIXTURE.read_text())))
    for label in ("mode", "uptime", "process", "filesystem", "loop lag", "mode history"):
        assert label in text
    assert "io_uring (current)" in text and "threads (draining)" in text
    assert "1:43" in text  # uptime 103 s
    assert "inodes 42" in text and "open files 3" in text
    words = " ".join(text.split())  # the process line wraps
    assert "descriptors 1,030 of 1,024 (inodes 502, budget 512)" in words


# -- iofs stats --------------------------------------------------------------------------
def row_of(text: str, label: str) -> str:
    """The one line of *text* that starts with *label*."""
    (row,) = [line for line in text.splitlines() if line.strip().startswith(label + " ")]
    return row


def test_stats_table_shows_counts_bytes_and_latency_percentiles() -> None:
    snapshot = newer_snapshot()
    text = render(stats_table(snapshot))
    read = row_of(text, "read").split()
    # count, errors, bytes, in flight, max, p50, p90, p99, p99.9, max, mean
    assert read[1:5] == ["3,000", "0", "11.7", "MiB"]
    assert read[5:7] == ["2", "4"]
    latency = snapshot.operations["read"].latency
    assert read[7:] == [
        format_ns(latency.percentile(50)),
        format_ns(latency.percentile(90)),
        format_ns(latency.percentile(99)),
        format_ns(latency.percentile(99.9)),
        "3.00ms",
        format_ns(latency.mean),
    ]
    assert latency.percentile(99.9) == 3_000_000  # clamped to the max, shown exactly
    lookup = row_of(text, "lookup").split()
    assert lookup[1:4] == ["100", "10", "-"]
    # data operations come first, then metadata; an operation with no replies yet shows "-".
    lines = [line.strip().split(" ")[0] for line in text.splitlines()]
    assert lines.index("data") < lines.index("read") < lines.index("metadata")
    assert lines.index("metadata") < lines.index("lookup")
    assert row_of(text, "fsync").split()[1:] == ["0", "0", "-", "1", "4", *["-"] * 6]
    assert "p99 " in text and "40.0ms" in text  # the loop lag's max
    assert "1,200 wake-ups" in text
    assert "CPU 11.00s user, 5.50s system" in text and "RSS 60.0 MiB" in text


def test_stats_table_lists_every_engine_counter_and_detail() -> None:
    text = render(stats_table(newer_snapshot()))
    assert "threads (current)" in text
    for label in ("submits", "completions", "max batch", "bounced", "fallbacks", "workers_busy"):
        assert label in text
    assert row_of(text, "submits").split()[1] == "2,200"
    assert row_of(text, "bytes read").split()[2:] == ["11.7", "MiB"]


def test_stats_table_of_a_fresh_daemon() -> None:
    fresh = Snapshot(
        time=T0,
        uptime=0.5,
        mode="blocking",
        mode_history=(("blocking", T0),),
        operations={},
        engines=(),
        loop_lag=HistogramSnapshot(),
        process=ProcessSnapshot(0.1, 0.0, 1, 0, 1 << 20, 1),
    )
    text = render(stats_table(fresh))
    assert "no requests yet" in text and "0.5s" in text and "mode history" not in text
    assert "0 wake-ups" in text


# -- iofs top ----------------------------------------------------------------------------
def test_dashboard_shows_interval_rates_sorted_by_rate() -> None:
    text = render(dashboard(newer_snapshot(), older_snapshot()))
    assert "last 2.0s" in text and "mode threads" in text and "in flight 3" in text
    read, write = row_of(text, "read").split(), row_of(text, "write").split()
    assert read[1:4] == ["data", "1,000", "3.9"]  # 2,000 reads of 4 KiB in 2 s
    assert write[1:4] == ["data", "100", "100.0"]  # 200 MiB in 2 s
    lines = [line.strip().split(" ")[0] for line in text.splitlines()]
    assert lines.index("read") < lines.index("write") < lines.index("fsync")
    assert "lookup" not in text  # nothing happened to it in the interval
    # Interval percentiles: only the 2,000 new reads (1,970 at 30 µs, 30 at 3 ms);
    # 30 µs is counted in the bucket [29,696, 30,719] ns, 3 ms is clamped to the max.
    assert read[4:8] == ["30.7µs", "3.00ms", "3.00ms", "2"]
    assert row_of(text, "fsync").split()[1:] == ["data", "0", "-", "-", "-", "-", "1", "0"]
    assert row_of(text, "all").split()[1:3] == ["1,100", "103.9"]
    assert "CPU 50% user 25% sys" in text  # 1 s and 0.5 s of CPU in 2 s
    assert "1,010 ctx switches/s" in text
    assert "600 submits/s" in text and "600 completions/s" in text and "batch 1.00" in text
    assert "loop lag p99 40.0ms" in text  # 3 of 200 interval wake-ups were 40 ms late


def test_dashboard_after_a_mode_switch_shows_draining_engine_and_modes() -> None:
    text = render(dashboard(switched_snapshot(), newer_snapshot()))
    assert "mode io_uring" in text and "io_uring (direct, qd 64)" in text
    assert "draining threads (1 in flight)" in text
    history = switched_snapshot().mode_history
    assert " → ".join(f"{format_clock(at)} {name}" for name, at in history) in text
    # The new engine is counted from zero: 100 submits, 500 completions in 1 s.
    assert "100 submits/s" in text and "mean batch 5.00" in text and "bounced 7" in text
    # No request completed in that second: only those still in flight are listed.
    assert row_of(text, "read").split()[1:4] == ["data", "0", "-"]
    assert row_of(text, "fsync").split()[-2:] == ["1", "0"]
    assert "write" not in text and "lookup" not in text
    words = " ".join(text.split())
    assert "descriptors 1,030 of 1,024 (inodes 502, budget 512)" in words


def test_dashboard_without_older_shows_averages_since_start() -> None:
    text = render(dashboard(newer_snapshot()))
    assert "averages since start" in text
    read = row_of(text, "read").split()
    assert read[2] == format_rate(3000 / 102)
    assert "lookup" in text


def test_names_are_shown_as_they_are_not_read_as_markup() -> None:
    odd = "[red]x"
    snapshot = replace(
        switched_snapshot(),
        mode=odd,
        mode_history=(*MODES, (odd, T0 + 102.5)),
        engines=(engine(odd), engine("threads")),
    )
    assert "[red]x since" in render(stats_table(snapshot))
    assert "[red]x (current)" in render(stats_table(snapshot))
    text = render(dashboard(snapshot, newer_snapshot()))
    assert "mode [red]x" in text and "engine [red]x" in text


# -- units -------------------------------------------------------------------------------
def test_units_are_human() -> None:
    assert [format_ns(v) for v in (0, 999, 1000, 15_400, 153_000, 999_700, 2.5e9)] == [
        "0ns",
        "999ns",
        "1.00µs",
        "15.4µs",
        "153µs",
        "1.00ms",
        "2.50s",
    ]
    assert [format_bytes(v) for v in (0, 1023, 4096, 200 << 20, 3 << 30)] == [
        "0 B",
        "1023 B",
        "4.00 KiB",
        "200 MiB",
        "3.00 GiB",
    ]
    assert [format_duration(v) for v in (42, 723, 3723, 90000)] == [
        "42.0s",
        "12:03",
        "1:02:03",
        "1d 1:00:00",
    ]
    assert [format_rate(v) for v in (0, 2.25, 12_345.6)] == ["0", "2.2", "12,346"]


if __name__ == "__main__":  # rewrite the fixture after a deliberate change of the layout
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(switched_snapshot().to_json() + "\n")
