"""``iofs switch`` results as data: one clock, per-interval series, phases and switches.

Pure functions of what a switch run recorded (`iofs.switch` loads the files):

- fio's per-interval logs (``*_iops.N.log``, ``*_clat_hist.N.log``), whose timestamps are
  CLOCK_MONOTONIC milliseconds (``log_unix_epoch=1``, ``log_alternate_epoch_clock_id=1``);
- the daemon's statistics snapshots, each with the CLOCK_MONOTONIC seconds before and
  after it was read (`Sample`);
- the switches, as the runner asked for them (`Request`) and as the daemon carried them
  out (`iofs.stats.SwitchRecord`), both on CLOCK_MONOTONIC.

`build` puts them on one axis, seconds since fio was started, and `phases` and
`switch_costs` reduce them to the per-phase table and what each switch cost.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .intervals import diff
from .schedule import Phase
from .stats import Snapshot, SwitchRecord

#: fio's latency histogram: 2**6 buckets per power of two, 29 groups (stat.h).
FIO_PLAT_BITS = 6
FIO_PLAT_VAL = 1 << FIO_PLAT_BITS
FIO_PLAT_NR = 29 * FIO_PLAT_VAL


# -- fio's logs ---------------------------------------------------------------------------------
def parse_log(text: str) -> list[tuple[float, float, int]]:
    """fio's ``_iops``/``_bw``/``_lat`` log lines as (time in s, value, direction)."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3 and fields[0]:
            rows.append((int(fields[0]) / 1000, float(fields[1]), int(fields[2])))
    return rows


def fio_bucket_value(index: int, coarseness: int) -> float:
    """The latency (ns) at the middle of bin *index* of a histogram log written with
    ``log_hist_coarseness=coarseness`` (fio's ``plat_idx_to_val``, over merged bins)."""
    stride = 1 << coarseness
    first = index * stride
    return (_plat_value(first, 0.0) + _plat_value(first + stride - 1, 1.0)) / 2


def _plat_value(index: int, edge: float) -> float:
    if index < FIO_PLAT_VAL << 1:
        return index + edge
    error_bits = (index >> FIO_PLAT_BITS) - 1
    base = 1 << (error_bits + FIO_PLAT_BITS)
    return base + (index % FIO_PLAT_VAL + edge) * (1 << error_bits)


def parse_hist_log(text: str) -> list[tuple[float, tuple[int, ...]]]:
    """fio's ``_clat_hist`` log as (time in s, bin counts over the interval)."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) > 3 and fields[0]:
            rows.append((int(fields[0]) / 1000, tuple(int(f) for f in fields[3:])))
    return rows


def hist_percentile(bins: Sequence[int], q: float) -> float:
    """Percentile *q* (ns) of fio histogram bins; 0 if empty. The coarseness is
    derived from the number of bins."""
    total = sum(bins)
    if not total:
        return 0.0
    coarseness = (FIO_PLAT_NR // len(bins)).bit_length() - 1
    rank = q / 100 * total
    seen = 0
    for index, count in enumerate(bins):
        seen += count
        if count and seen >= rank:
            return fio_bucket_value(index, coarseness)
    return fio_bucket_value(len(bins) - 1, coarseness)


def add_bins(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    if not a:
        return tuple(b)
    return tuple(x + y for x, y in zip(a, b, strict=True))


# -- the run, on one clock -----------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One switch as the runner made it: the setting, and when (CLOCK_MONOTONIC s) it
    wrote the control attribute and when the write returned."""

    mode: str
    requested: float
    acknowledged: float


@dataclass(frozen=True)
class Sample:
    """One statistics snapshot and the CLOCK_MONOTONIC seconds around reading it."""

    before: float
    after: float
    snapshot: Snapshot

    @property
    def at(self) -> float:
        return (self.before + self.after) / 2


@dataclass(frozen=True)
class Point:
    """One interval of the timeline: its end (seconds since the start) and figures."""

    t: float
    value: float


@dataclass(frozen=True)
class Timeline:
    """Everything on one axis: seconds since fio was started (`start`, monotonic)."""

    start: float
    end: float
    interval: float
    phases: tuple[Phase, ...]
    #: Phase boundaries: when each phase began (the first at 0) and the end, n + 1 values.
    bounds: tuple[float, ...]
    #: fio, per interval: IOPS (all jobs and directions), p99 completion latency (ns),
    #: and the interval's histogram bins (for percentiles over several intervals).
    iops: tuple[Point, ...]
    p99: tuple[Point, ...]
    bins: tuple[tuple[float, tuple[int, ...]], ...]
    #: The daemon, per sample: loop lag p99 (ns), mean data requests in flight (from
    #: the latency totals, Little's law), data requests per second, CPU (% of a core),
    #: mean engine batch.
    loop_lag: tuple[Point, ...]
    in_flight: tuple[Point, ...]
    daemon_ops: tuple[Point, ...]
    cpu: tuple[Point, ...]
    batch: tuple[Point, ...]
    #: The daemon's own p99 (ns) of the reads and of the writes it answered per interval.
    read_p99: tuple[Point, ...]
    write_p99: tuple[Point, ...]
    samples: tuple[Sample, ...]
    requests: tuple[Request, ...]
    #: The daemon's record of each switch (in order), times since the start.
    switches: tuple[SwitchRecord, ...] = ()
    settle: float = 1.0


def _series(rows: Iterable[tuple[float, float]], start: float, interval: float) -> list[Point]:
    """Rows of several jobs and directions summed per interval slot."""
    slots: dict[int, list[float]] = {}
    for t, value in rows:
        slots.setdefault(round((t - start) / interval), []).append(value)
    return [Point(k * interval, sum(values)) for k, values in sorted(slots.items()) if k > 0]


def build(
    *,
    start: float,
    end: float,
    interval: float,
    phases: Sequence[Phase],
    iops_logs: Sequence[str],
    hist_logs: Sequence[str],
    samples: Sequence[Sample],
    requests: Sequence[Request],
    records: Sequence[SwitchRecord],
    settle: float,
) -> Timeline:
    """Put fio's logs, the samples and the switches on one axis (see `Timeline`).

    Each log of *iops_logs* / *hist_logs* is one fio job's; their directions are summed.
    *records* are the daemon's switch records, the last ones matching *requests*.
    """
    iops_rows: list[tuple[float, float]] = []
    for text in iops_logs:
        iops_rows += [(t, value) for t, value, _ in parse_log(text)]
    iops = _series(iops_rows, start, interval)
    merged: dict[int, tuple[int, ...]] = {}
    for text in hist_logs:
        for t, counts in parse_hist_log(text):
            slot = round((t - start) / interval)
            merged[slot] = add_bins(merged.get(slot, ()), counts)
    bins = tuple((k * interval, counts) for k, counts in sorted(merged.items()) if k > 0)
    p99 = tuple(Point(t, hist_percentile(counts, 99.0)) for t, counts in bins)

    lag, depth, ops, cpu, batch = [], [], [], [], []
    handler_p99: dict[str, list[Point]] = {"read": [], "write": []}
    for older, newer in itertools.pairwise(samples):
        t = newer.at - start
        span = newer.at - older.at
        if span <= 0:
            continue
        step = diff(newer.snapshot, older.snapshot)
        lag.append(Point(t, step.loop_lag.percentile(99.0)))
        data = [op for op in step.operations.values() if op.kind == "data"]
        busy_ns = sum(op.latency.total for op in data)
        depth.append(Point(t, busy_ns / 1e9 / step.seconds))
        ops.append(Point(t, sum(op.count for op in data) / step.seconds))
        cpu.append(Point(t, step.cpu_user_percent + step.cpu_system_percent))
        if step.engine is not None and step.engine.mean_batch is not None:
            batch.append(Point(t, step.engine.mean_batch))
        for name, points in handler_p99.items():
            op = step.operations.get(name)
            if op is not None and op.count:
                points.append(Point(t, op.latency.percentile(99.0)))

    records = records[-len(requests) :] if requests else ()
    switches = tuple(
        SwitchRecord(
            mode=r.mode,
            previous=r.previous,
            requested=r.requested - start,
            serving=r.serving - start,
            drained=None if r.drained is None else r.drained - start,
            in_flight_at_switch=r.in_flight_at_switch,
            finished_on_old=r.finished_on_old,
        )
        for r in records
    )
    # The daemon's own moment of each switch where it has one, else the runner's.
    if len(switches) == len(requests):
        bounds = (0.0, *(s.requested for s in switches), end - start)
    else:
        bounds = (0.0, *(r.requested - start for r in requests), end - start)
    return Timeline(
        start=start,
        end=end,
        interval=interval,
        phases=tuple(phases),
        bounds=bounds,
        iops=tuple(iops),
        p99=p99,
        bins=bins,
        loop_lag=tuple(lag),
        in_flight=tuple(depth),
        daemon_ops=tuple(ops),
        cpu=tuple(cpu),
        batch=tuple(batch),
        read_p99=tuple(handler_p99["read"]),
        write_p99=tuple(handler_p99["write"]),
        samples=tuple(samples),
        requests=tuple(requests),
        switches=switches,
        settle=settle,
    )


def settle_time(seconds: float) -> float:
    """The settling window excluded at the start of a phase of *seconds*: a quarter of
    it, at most 1 s."""
    return min(1.0, seconds / 4)


# -- phases and switches ------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseFigures:
    """One phase's steady state: the intervals from its settling time to its end."""

    phase: Phase
    begin: float
    end: float
    steady_begin: float
    #: fio's IOPS per interval in the steady window.
    iops: tuple[float, ...]
    p99_ns: float
    loop_lag_p99_ns: float
    mean_in_flight: float
    #: Daemon CPU seconds per data request (read, write, fsync); None without requests.
    cpu_per_op: float | None
    requests: int

    @property
    def median_iops(self) -> float:
        return statistics.median(self.iops) if self.iops else 0.0


def _within(points: Sequence[Point], begin: float, end: float, interval: float) -> list[Point]:
    """The points whose interval (t - interval, t] lies within [begin, end]."""
    return [p for p in points if p.t - interval >= begin - 1e-9 and p.t <= end + 1e-9]


def _sample_at(samples: Sequence[Sample], t: float) -> Sample | None:
    """The first sample taken at or after monotonic *t*."""
    times = [s.at for s in samples]
    index = bisect.bisect_left(times, t)
    return samples[index] if index < len(samples) else None


def _last_sample_before(samples: Sequence[Sample], t: float) -> Sample | None:
    times = [s.at for s in samples]
    index = bisect.bisect_right(times, t)
    return samples[index - 1] if index else None


def phase_figures(timeline: Timeline) -> list[PhaseFigures]:
    """The steady state of every phase (see `PhaseFigures`)."""
    figures = []
    for index, phase in enumerate(timeline.phases):
        begin, end = timeline.bounds[index], timeline.bounds[index + 1]
        steady = begin + timeline.settle
        iops = _within(timeline.iops, steady, end, timeline.interval)
        bins: tuple[int, ...] = ()
        for t, counts in timeline.bins:
            if t - timeline.interval >= steady - 1e-9 and t <= end + 1e-9:
                bins = add_bins(bins, counts)
        first = _sample_at(timeline.samples, timeline.start + steady)
        last = _last_sample_before(timeline.samples, timeline.start + end)
        lag_p99, in_flight, cpu_per_op, requests = 0.0, 0.0, None, 0
        if first is not None and last is not None and last.at > first.at:
            step = diff(last.snapshot, first.snapshot)
            lag_p99 = step.loop_lag.percentile(99.0)
            data = [op for op in step.operations.values() if op.kind == "data"]
            requests = sum(op.count for op in data)
            in_flight = sum(op.latency.total for op in data) / 1e9 / step.seconds
            cpu = (last.snapshot.process.cpu_user + last.snapshot.process.cpu_system) - (
                first.snapshot.process.cpu_user + first.snapshot.process.cpu_system
            )
            cpu_per_op = cpu / requests if requests else None
        figures.append(
            PhaseFigures(
                phase=phase,
                begin=begin,
                end=end,
                steady_begin=steady,
                iops=tuple(p.value for p in iops),
                p99_ns=hist_percentile(bins, 99.0),
                loop_lag_p99_ns=lag_p99,
                mean_in_flight=in_flight,
                cpu_per_op=cpu_per_op,
                requests=requests,
            )
        )
    return figures


@dataclass(frozen=True)
class SwitchCost:
    """What one switch cost: the daemon's timings and what fio saw right after it."""

    number: int  # 1 for the first switch
    previous: str
    mode: str
    at: float  # seconds since the start, when the runner asked
    #: Runner: from writing the control attribute to the write returning.
    round_trip: float
    #: Daemon: from taking the request to the new engine serving, and to the old
    #: engine drained (None if it never finished draining in the record).
    setup: float | None
    drain: float | None
    engine_changed: bool
    in_flight_at_switch: int
    finished_on_old: int
    #: fio's worst interval p99 (ns) and lowest IOPS within the settling window after
    #: the switch, and the steady figures of the phase before.
    peak_p99_ns: float
    before_p99_ns: float
    low_iops: float
    before_iops: float
    #: Seconds from the switch until fio's IOPS first came within 10% of the new
    #: phase's median; None if it never did before the phase ended.
    to_steady: float | None


def switch_costs(timeline: Timeline, figures: Sequence[PhaseFigures]) -> list[SwitchCost]:
    costs = []
    for number, request in enumerate(timeline.requests, start=1):
        at = timeline.bounds[number]
        record = timeline.switches[number - 1] if number - 1 < len(timeline.switches) else None
        before, after = figures[number - 1], figures[number]
        window_end = min(at + timeline.settle + timeline.interval, after.end)
        peak = [p.value for p in timeline.p99 if at < p.t <= window_end]
        low = [p.value for p in timeline.iops if at < p.t <= window_end]
        to_steady = None
        target = after.median_iops
        for point in timeline.iops:
            if point.t > after.end:
                break
            if point.t > at and target and abs(point.value - target) <= 0.1 * target:
                to_steady = point.t - at
                break
        setup = drain = None
        changed = False
        if record is not None:
            setup = record.serving - record.requested
            drain = None if record.drained is None else record.drained - record.requested
            changed = record.drained != record.serving
        costs.append(
            SwitchCost(
                number=number,
                previous=before.phase.setting.spec,
                mode=after.phase.setting.spec,
                at=at,
                round_trip=request.acknowledged - request.requested,
                setup=setup,
                drain=drain,
                engine_changed=changed,
                in_flight_at_switch=record.in_flight_at_switch if record else 0,
                finished_on_old=record.finished_on_old if record else 0,
                peak_p99_ns=max(peak, default=0.0),
                before_p99_ns=before.p99_ns,
                low_iops=min(low, default=0.0),
                before_iops=before.median_iops,
                to_steady=to_steady,
            )
        )
    return costs
