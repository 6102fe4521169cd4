"""Statistics: what the filesystem records on every request, and frozen snapshots of it.

The filesystem holds one `Recorder`. Every FUSE handler calls `Recorder.begin` before it
runs and `Recorder.end` after, which costs a dict lookup and a few integer operations,
so the recorder stays on all the time. A background task (`Recorder.heartbeat`) measures
how late the trio event loop wakes a sleeping task: the loop lag (defined once, in
`iofs.looplag`) every request waits through before its handler even starts.

`Recorder.snapshot` freezes everything into a `Snapshot`: plain data, with an exact JSON
form (`Snapshot.to_json` / `Snapshot.from_json`) that ``iofs stats --json`` prints and
docs/statistics.md's reference describes field by field. `diff` turns two snapshots into
an `Interval` of rates and interval latency percentiles, the basis of ``iofs top``.
Rendering lives in `iofs.render`; nothing here does I/O except `Recorder.snapshot`,
which reads the process's own counters.

Latencies are kept in log-linear histograms (`Histogram`): 16 buckets per power of two,
so a percentile read from one is at most 6.25 % above the exact value, never below.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from time import perf_counter_ns
from typing import Any

import psutil
import trio

from . import looplag
from .backends.base import EngineStatistics
from .faults import OPERATIONS as FAULT_OPERATIONS
from .faults import FaultCounters, FaultStatistics

#: FUSE operations that go through the I/O engine; every other operation is metadata
#: (served by system calls on the event loop). flush and fsyncdir touch no file data
#: through the engine, so they count as metadata.
DATA_OPERATIONS = frozenset({"read", "write", "fsync"})

#: Tag of the JSON layout; bumped when a field changes meaning or disappears.
FORMAT = "iofs-statistics/1"

#: The percentiles every latency summary shows, in percent.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)

#: Mode switches kept in the history (the oldest are dropped first).
MODE_HISTORY = 100

#: Latency histograms: values below 2**(_SUB_BITS + 1) get a bucket each; above, every
#: power of two is split into 2**_SUB_BITS buckets, so a bucket's width is at most
#: 1/16 of its lower bound (the relative error of a percentile).
_SUB_BITS = 4
_SUB_COUNT = 1 << _SUB_BITS
_EXACT = 1 << (_SUB_BITS + 1)  # 32: values below are counted exactly
_SHIFT_BASE = _SUB_BITS + 1
#: Index of the bucket of the largest 64-bit value, plus one.
_BUCKETS = ((64 - _SHIFT_BASE) << _SUB_BITS) + _EXACT


def bucket_index(value: int) -> int:
    """The bucket *value* (>= 0, below 2**64) is counted in."""
    if value < _EXACT:
        return max(value, 0)
    shift = value.bit_length() - _SHIFT_BASE
    return (shift << _SUB_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value counted in bucket *index* (both inclusive)."""
    if index < _EXACT:
        return index, index
    shift = (index >> _SUB_BITS) - 1
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
        self._counts = [0] * _BUCKETS
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
            self._counts[(shift << _SUB_BITS) + (value >> shift)] += 1
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
        if not 0 <= bits <= _SUB_BITS:
            raise ValueError(f"coarseness must be within 0..{_SUB_BITS}: {bits}")
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


class OperationStats:
    """The live counters of one FUSE operation (mutated only by `Recorder`)."""

    __slots__ = ("bytes", "errors", "in_flight", "kind", "latency", "max_in_flight")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.errors = 0
        #: Bytes read or written by the completed requests.
        self.bytes = 0
        self.in_flight = 0
        self.max_in_flight = 0
        #: Nanoseconds from handler start to handler end of every completed request,
        #: failed ones included; its count is the operation's count.
        self.latency = Histogram()

    @property
    def count(self) -> int:
        """Completed requests, failed ones included."""
        return self.latency.count


@dataclass(frozen=True)
class OperationSnapshot:
    """One FUSE operation's counters at snapshot time (see `OperationStats`)."""

    #: "data" (read, write, fsync: through the engine), "metadata", or "control" (the
    #: control xattrs that `iofs stats` and `iofs top` read: not the workload's).
    kind: str
    count: int
    errors: int
    bytes: int
    in_flight: int
    max_in_flight: int
    latency: HistogramSnapshot  # nanoseconds


@dataclass(frozen=True)
class ProcessSnapshot:
    """The daemon process's own resource counters (from psutil)."""

    cpu_user: float  # seconds
    cpu_system: float  # seconds
    ctx_switches_voluntary: int
    ctx_switches_involuntary: int
    rss: int  # bytes
    threads: int
    #: Descriptors open in the daemon, and its soft RLIMIT_NOFILE (0: not known).
    fds: int = 0
    fd_limit: int = 0


def read_process(process: psutil.Process) -> ProcessSnapshot:
    """*process*'s counters, read in one go."""
    with process.oneshot():
        cpu = process.cpu_times()
        switches = process.num_ctx_switches()
        return ProcessSnapshot(
            cpu_user=cpu.user,
            cpu_system=cpu.system,
            ctx_switches_voluntary=switches.voluntary,
            ctx_switches_involuntary=switches.involuntary,
            rss=process.memory_info().rss,
            threads=process.num_threads(),
            fds=process.num_fds(),
            fd_limit=process.rlimit(psutil.RLIMIT_NOFILE)[0],
        )


@dataclass(frozen=True)
class SwitchRecord:
    """One mode switch as the daemon saw it, on CLOCK_MONOTONIC (seconds).

    That clock is the machine's, not the process's: a runner's ``time.monotonic()``
    and fio's logs (``log_alternate_epoch_clock_id=1``) read the same one.
    """

    mode: str
    #: The setting switched away from.
    previous: str
    #: When the daemon took the request to switch, and when new requests started going
    #: to the new engine (the same moment if the engine did not change).
    requested: float
    serving: float
    #: When the old engine had finished every operation it held and was closed; None
    #: while it still drains. Equal to `serving` if the engine did not change.
    drained: float | None
    #: Operations inside the old engine at the switch, and those it completed after it.
    in_flight_at_switch: int
    finished_on_old: int


@dataclass(frozen=True)
class Snapshot:
    """Everything the statistics know at one moment: plain, frozen data.

    `to_json` and `from_json` round-trip exactly. Counters are cumulative since the
    recorder started; `diff` turns two snapshots into rates.
    """

    #: Wall-clock time of the snapshot (Unix seconds).
    time: float
    #: Seconds since the recorder started (monotonic clock).
    uptime: float
    #: The current mode, and the (mode, wall-clock Unix seconds) it was entered at for
    #: the last `MODE_HISTORY` modes, oldest first (the last one is the current mode).
    mode: str
    mode_history: tuple[tuple[str, float], ...]
    #: FUSE operation name -> its counters, for every operation called at least once.
    operations: Mapping[str, OperationSnapshot]
    #: The current engine first, then any engines still draining after a mode switch.
    engines: tuple[EngineStatistics, ...]
    #: How late the event loop woke the heartbeat task, in nanoseconds.
    loop_lag: HistogramSnapshot
    process: ProcessSnapshot
    #: Filesystem counters (inodes, open_files, open_dirs, unexpected_errors, ...).
    extra: Mapping[str, int] = field(default_factory=dict)
    #: Fault injection (``iofs faults``), or None if it was never on since the mount.
    faults: FaultStatistics | None = None
    #: The last `MODE_HISTORY` switches, oldest first (none before the first switch).
    switches: tuple[SwitchRecord, ...] = ()
    #: How requests reach the filesystem (``pyfuse3`` or ``dev``, see `iofs.transport`);
    #: the transport's own counters are the ``transport_*`` and ``fuse_*`` ones in *extra*.
    transport: str = "pyfuse3"

    @property
    def engine(self) -> EngineStatistics | None:
        """The current engine's statistics."""
        return self.engines[0] if self.engines else None

    @property
    def in_flight(self) -> int:
        """FUSE requests being handled right now."""
        return sum(op.in_flight for op in self.operations.values())

    def to_json(self, *, indent: int | None = 2) -> str:
        """The snapshot as JSON; docs/statistics.md describes every field.

        Histograms carry their raw buckets and, for reading, computed percentiles in
        microseconds (``percentiles_us``), which `from_json` ignores. With *indent*
        None the text is as compact as JSON gets (for transport).
        """
        document = {
            "format": FORMAT,
            "time": self.time,
            "uptime_s": self.uptime,
            "mode": self.mode,
            "mode_history": [{"mode": name, "at": at} for name, at in self.mode_history],
            "process": {
                "cpu_user_s": self.process.cpu_user,
                "cpu_system_s": self.process.cpu_system,
                "ctx_switches_voluntary": self.process.ctx_switches_voluntary,
                "ctx_switches_involuntary": self.process.ctx_switches_involuntary,
                "rss_bytes": self.process.rss,
                "threads": self.process.threads,
                "fds": self.process.fds,
                "fd_limit": self.process.fd_limit,
            },
            "operations": {
                name: {
                    "kind": op.kind,
                    "count": op.count,
                    "errors": op.errors,
                    "bytes": op.bytes,
                    "in_flight": op.in_flight,
                    "max_in_flight": op.max_in_flight,
                    "latency": _histogram_to_json(op.latency),
                }
                for name, op in sorted(self.operations.items())
            },
            "engines": [engine_to_json(engine) for engine in self.engines],
            "loop_lag": _histogram_to_json(self.loop_lag),
            "extra": dict(self.extra),
            "transport": self.transport,
        }
        if self.faults is not None:  # absent unless faults were ever on: old layout kept
            document["faults"] = _faults_to_json(self.faults)
        if self.switches:  # absent before the first switch
            document["switches"] = [asdict(record) for record in self.switches]
        if indent is None:
            return json.dumps(document, separators=(",", ":"), allow_nan=False)
        return json.dumps(document, indent=indent, allow_nan=False)

    def coarsened(self, bits: int) -> Snapshot:
        """The snapshot with every histogram `HistogramSnapshot.coarsened`."""
        return dataclasses.replace(
            self,
            operations={
                name: dataclasses.replace(op, latency=op.latency.coarsened(bits))
                for name, op in self.operations.items()
            },
            loop_lag=self.loop_lag.coarsened(bits),
        )

    def to_json_within(self, limit: int) -> str:
        """Compact JSON of at most *limit* bytes, coarsening histograms as needed."""
        for bits in range(_SUB_BITS + 1):
            text = self.coarsened(bits).to_json(indent=None)
            if len(text.encode()) <= limit:
                return text
        raise ValueError(f"statistics do not fit in {limit} bytes even coarsened")

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        """Parse what `to_json` wrote; ValueError if it is not such a document."""
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} document: format {document.get('format')!r}")
            process = document["process"]
            return cls(
                time=float(document["time"]),
                uptime=float(document["uptime_s"]),
                mode=str(document["mode"]),
                mode_history=tuple(
                    (str(entry["mode"]), float(entry["at"])) for entry in document["mode_history"]
                ),
                operations={
                    str(name): OperationSnapshot(
                        kind=str(op["kind"]),
                        count=int(op["count"]),
                        errors=int(op["errors"]),
                        bytes=int(op["bytes"]),
                        in_flight=int(op["in_flight"]),
                        max_in_flight=int(op["max_in_flight"]),
                        latency=_histogram_from_json(op["latency"]),
                    )
                    for name, op in document["operations"].items()
                },
                engines=tuple(_engine_from_json(engine) for engine in document["engines"]),
                loop_lag=_histogram_from_json(document["loop_lag"]),
                process=ProcessSnapshot(
                    cpu_user=float(process["cpu_user_s"]),
                    cpu_system=float(process["cpu_system_s"]),
                    ctx_switches_voluntary=int(process["ctx_switches_voluntary"]),
                    ctx_switches_involuntary=int(process["ctx_switches_involuntary"]),
                    rss=int(process["rss_bytes"]),
                    threads=int(process["threads"]),
                    # absent from snapshots taken before they were added
                    fds=int(process.get("fds", 0)),
                    fd_limit=int(process.get("fd_limit", 0)),
                ),
                extra={str(key): int(value) for key, value in document["extra"].items()},
                faults=_faults_from_json(document["faults"]) if "faults" in document else None,
                switches=tuple(
                    _switch_from_json(record) for record in document.get("switches", ())
                ),
                transport=str(document.get("transport", "pyfuse3")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an {FORMAT} document: {exc!r}") from None


def _histogram_to_json(histogram: HistogramSnapshot) -> dict[str, Any]:
    return {
        "count": histogram.count,
        "total_ns": histogram.total,
        "max_ns": histogram.max,
        "percentiles_us": {
            name: round(value / 1000, 3) for name, value in histogram.percentiles().items()
        },
        # bucket index -> count, for every non-empty bucket; iofs.stats.bucket_bounds
        # gives the range of values (ns) an index stands for.
        "buckets": {str(index): count for index, count in histogram.buckets},
        "coarseness": histogram.coarseness,
    }


def _histogram_from_json(document: dict[str, Any]) -> HistogramSnapshot:
    buckets = sorted((int(index), int(count)) for index, count in document["buckets"].items())
    if any(not 0 <= index < _BUCKETS for index, _ in buckets):
        raise ValueError("a bucket index out of range")
    coarseness = int(document.get("coarseness", 0))
    if not 0 <= coarseness <= _SUB_BITS:
        raise ValueError(f"coarseness out of range: {coarseness}")
    return HistogramSnapshot(
        buckets=tuple(buckets),
        count=int(document["count"]),
        total=int(document["total_ns"]),
        max=int(document["max_ns"]),
        coarseness=coarseness,
    )


def _faults_to_json(faults: FaultStatistics) -> dict[str, Any]:
    return {
        "spec": faults.spec,
        "seed": faults.seed,
        "operations": {name: asdict(counters) for name, counters in faults.operations.items()},
    }


def _faults_from_json(document: dict[str, Any]) -> FaultStatistics:
    return FaultStatistics(
        spec=str(document["spec"]),
        seed=None if document["seed"] is None else int(document["seed"]),
        operations={
            str(name): FaultCounters(
                matched=int(counters["matched"]),
                errors=int(counters["errors"]),
                delays=int(counters["delays"]),
                delay_ns=int(counters["delay_ns"]),
            )
            for name, counters in document["operations"].items()
        },
    )


def _switch_from_json(document: dict[str, Any]) -> SwitchRecord:
    drained = document["drained"]
    return SwitchRecord(
        mode=str(document["mode"]),
        previous=str(document["previous"]),
        requested=float(document["requested"]),
        serving=float(document["serving"]),
        drained=None if drained is None else float(drained),
        in_flight_at_switch=int(document["in_flight_at_switch"]),
        finished_on_old=int(document["finished_on_old"]),
    )


_ENGINE_FIELDS = frozenset(f.name for f in fields(EngineStatistics))


def engine_to_json(engine: EngineStatistics) -> dict[str, Any]:
    """An engine's statistics as JSON data (`Snapshot`, the engine benchmark)."""
    return {**asdict(engine), "details": dict(engine.details)}


def _engine_from_json(document: dict[str, Any]) -> EngineStatistics:
    unknown = document.keys() - _ENGINE_FIELDS
    if unknown:
        raise ValueError(f"unknown engine statistics: {', '.join(sorted(unknown))}")
    return EngineStatistics(**{**document, "details": dict(document.get("details", {}))})


#: The operation that counts requests to the control xattrs (``iofs stats``, ``top``,
#: ``mode``...): the observer's, not the workload's.
CONTROL_OPERATION = "control"


def _kind(op: str) -> str:
    if op in DATA_OPERATIONS:
        return "data"
    return "control" if op == CONTROL_OPERATION else "metadata"


class Recorder:
    """The statistics the filesystem keeps: per-operation counters, loop lag, modes.

    Not thread-safe: every call comes from the trio thread.
    """

    def __init__(
        self,
        mode: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        process: Callable[[], ProcessSnapshot] | None = None,
    ) -> None:
        """Start recording in *mode*; the clocks and process reader are for tests."""
        self._operations: dict[str, OperationStats] = {}
        self.loop_lag = Histogram()
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._mode_history: deque[tuple[str, float]] = deque(maxlen=MODE_HISTORY)
        self._mode_history.append((mode, wall_clock()))
        #: Switch number -> (record, operations the old engine had finished at the switch).
        self._switches: dict[int, tuple[SwitchRecord, int]] = {}
        self._switch_count = 0
        # A new psutil.Process each time: the daemon forks after the recorder is made.
        self._read_process = process or (lambda: read_process(psutil.Process()))

    # -- the hot path: twice per FUSE request ----------------------------------------
    def begin(self, op: str) -> int:
        """A request for operation *op* starts; returns its start time for `end`."""
        stats = self._operations.get(op)
        if stats is None:
            stats = self._operations[op] = OperationStats(_kind(op))
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:  # noqa: PLR1730  (cheaper than max())
            stats.max_in_flight = stats.in_flight
        return perf_counter_ns()

    def end(self, op: str, start: int, *, error: bool, nbytes: int = 0) -> None:
        """The request `begin` returned *start* for has finished (*error*: it failed).

        *nbytes* is the data it read or wrote.
        """
        elapsed = perf_counter_ns() - start
        stats = self._operations[op]
        stats.in_flight -= 1
        if error:
            stats.errors += 1
        stats.bytes += nbytes
        stats.latency.record(elapsed)

    # -- the rest ----------------------------------------------------------------------
    def mode_changed(self, mode: str) -> None:
        """The filesystem now runs in *mode* (e.g. after switching engines)."""
        self._mode_history.append((mode, self._wall_clock()))

    def switch_began(
        self, mode: str, previous: str, requested: float, old: EngineStatistics | None
    ) -> int:
        """New requests go to *mode* from now on (requested at monotonic *requested*).

        *old* is the statistics of the engine left to drain, None if the engine did not
        change. Returns the switch's number for `switch_drained`.
        """
        now = self._monotonic()
        self._switch_count += 1
        record = SwitchRecord(
            mode=mode,
            previous=previous,
            requested=requested,
            serving=now,
            drained=None if old is not None else now,
            in_flight_at_switch=old.in_flight if old is not None else 0,
            finished_on_old=0,
        )
        self._switches[self._switch_count] = (record, _finished(old) if old is not None else 0)
        while len(self._switches) > MODE_HISTORY:
            del self._switches[next(iter(self._switches))]
        return self._switch_count

    def switch_drained(self, number: int, old: EngineStatistics) -> None:
        """The old engine of switch *number* has finished everything and is closed."""
        entry = self._switches.get(number)
        if entry is not None:
            record, finished = entry
            self._switches[number] = (
                dataclasses.replace(
                    record, drained=self._monotonic(), finished_on_old=_finished(old) - finished
                ),
                finished,
            )

    @property
    def mode(self) -> str:
        return self._mode_history[-1][0]

    @property
    def mode_history(self) -> tuple[tuple[str, float], ...]:
        """(mode, wall-clock time it was entered), oldest first."""
        return tuple(self._mode_history)

    def start(self, nursery: trio.Nursery, interval: float = 0.01) -> None:
        """Run `heartbeat` in *nursery*, under a name that says what it is."""
        nursery.start_soon(self.heartbeat, interval, name="iofs statistics heartbeat")

    async def heartbeat(self, interval: float = 0.01) -> None:
        """Record the loop lag (`iofs.looplag`, its one definition) every *interval*
        seconds, forever."""
        await looplag.heartbeat(self.loop_lag.record, interval)

    def snapshot(
        self,
        engines: Iterable[EngineStatistics],
        extra: Mapping[str, int] | None = None,
        faults: FaultStatistics | None = None,
        transport: str = "pyfuse3",
    ) -> Snapshot:
        """Freeze the statistics, with the *engines*' (current first), *extra* and
        fault-injection counters, and the name of the *transport*."""
        return Snapshot(
            time=self._wall_clock(),
            uptime=self._monotonic() - self._started,
            mode=self.mode,
            mode_history=tuple(self._mode_history),
            operations={
                name: OperationSnapshot(
                    kind=op.kind,
                    count=op.count,
                    errors=op.errors,
                    bytes=op.bytes,
                    in_flight=op.in_flight,
                    max_in_flight=op.max_in_flight,
                    latency=op.latency.snapshot(),
                )
                for name, op in self._operations.items()
            },
            engines=tuple(engines),
            loop_lag=self.loop_lag.snapshot(),
            process=self._read_process(),
            extra=dict(extra or {}),
            faults=faults,
            switches=tuple(record for record, _ in self._switches.values()),
            transport=transport,
        )


def _finished(engine: EngineStatistics) -> int:
    """Operations *engine* has finished, failed ones included."""
    return engine.reads + engine.writes + engine.fsyncs + engine.fdatasyncs + engine.errors


# -- intervals: what `iofs top` shows -----------------------------------------------------
@dataclass(frozen=True)
class OperationInterval:
    """One operation between two snapshots."""

    kind: str
    count: int
    errors: int
    bytes: int
    ops_per_s: float
    bytes_per_s: float
    errors_per_s: float
    #: Requests in flight at the newer snapshot.
    in_flight: int
    #: Latencies (ns) of the requests that completed in the interval.
    latency: HistogramSnapshot


@dataclass(frozen=True)
class EngineInterval:
    """The current engine between two snapshots (rates per second)."""

    engine: str
    direct: bool
    queue_depth: int
    in_flight: int
    reads_per_s: float
    writes_per_s: float
    syncs_per_s: float  # fsync + fdatasync
    bytes_read_per_s: float
    bytes_written_per_s: float
    errors_per_s: float
    submits_per_s: float
    completions_per_s: float
    #: Completions per submission: operations one system call (or hand-off) started,
    #: on average; None if nothing was submitted.
    mean_batch: float | None
    direct_ops_per_s: float
    bounced_per_s: float
    buffered_per_s: float
    fallbacks_per_s: float


@dataclass(frozen=True)
class FaultInterval:
    """Fault injection between two snapshots: the spec now, and what it did per operation."""

    spec: str
    #: Operation -> injected errors, and delays, in the interval.
    errors: Mapping[str, int]
    delays: Mapping[str, int]
    errors_per_s: Mapping[str, float]
    delays_per_s: Mapping[str, float]


@dataclass(frozen=True)
class Interval:
    """What changed between two snapshots, as rates and interval percentiles.

    With no older snapshot the interval is the whole uptime: rates are averages since
    the recorder started and percentiles are cumulative (`since_start` is True).
    """

    seconds: float
    since_start: bool
    #: The newer snapshot, for what is not a rate (mode, uptime, RSS, draining engines).
    newer: Snapshot
    operations: Mapping[str, OperationInterval]
    #: The current engine's rates, or None if no engine is reported.
    engine: EngineInterval | None
    loop_lag: HistogramSnapshot
    #: CPU time per wall-clock time, in percent of one core.
    cpu_user_percent: float
    cpu_system_percent: float
    ctx_switches_voluntary_per_s: float
    ctx_switches_involuntary_per_s: float
    #: Fault injection, if it was ever on (see `Snapshot.faults`).
    faults: FaultInterval | None = None


def diff(newer: Snapshot, older: Snapshot | None = None) -> Interval:
    """The interval from *older* to *newer* (from the start if *older* is None).

    Both must come from the same recorder, *older* first; ValueError otherwise. If the
    mode changed in between, the current engine is new and its counters are counted
    from zero.
    """
    if older is None:
        seconds = newer.uptime
        older_ops: Mapping[str, OperationSnapshot] = {}
        older_engine = None
        older_lag = HistogramSnapshot()
        older_process = ProcessSnapshot(0.0, 0.0, 0, 0, 0, 0)
    else:
        seconds = newer.uptime - older.uptime
        if seconds <= 0:
            raise ValueError("the older snapshot is not older (or from another run)")
        older_ops = older.operations
        switched = newer.mode_history[-1:] != older.mode_history[-1:]
        older_engine = None if switched else older.engine
        older_lag = older.loop_lag
        older_process = older.process
    per_s = 1 / seconds if seconds > 0 else 0.0

    operations = {}
    for name, op in newer.operations.items():
        before = older_ops.get(name)
        count = op.count - (before.count if before else 0)
        errors = op.errors - (before.errors if before else 0)
        nbytes = op.bytes - (before.bytes if before else 0)
        operations[name] = OperationInterval(
            kind=op.kind,
            count=count,
            errors=errors,
            bytes=nbytes,
            ops_per_s=count * per_s,
            bytes_per_s=nbytes * per_s,
            errors_per_s=errors * per_s,
            in_flight=op.in_flight,
            latency=op.latency - before.latency if before else op.latency,
        )

    engine = None
    if newer.engine is not None:
        now, then = newer.engine, older_engine

        def delta(name: str) -> int:
            before: int = getattr(then, name) if then is not None else 0
            after: int = getattr(now, name)
            return after - before

        def rate(name: str) -> float:
            return delta(name) * per_s

        submits = delta("submits")
        engine = EngineInterval(
            engine=now.engine,
            direct=now.direct,
            queue_depth=now.queue_depth,
            in_flight=now.in_flight,
            reads_per_s=rate("reads"),
            writes_per_s=rate("writes"),
            syncs_per_s=rate("fsyncs") + rate("fdatasyncs"),
            bytes_read_per_s=rate("bytes_read"),
            bytes_written_per_s=rate("bytes_written"),
            errors_per_s=rate("errors"),
            submits_per_s=rate("submits"),
            completions_per_s=rate("completions"),
            mean_batch=delta("completions") / submits if submits else None,
            direct_ops_per_s=rate("direct_ops"),
            bounced_per_s=rate("bounced"),
            buffered_per_s=rate("buffered"),
            fallbacks_per_s=rate("fallbacks"),
        )

    faults = None
    if newer.faults is not None:
        now_faults = newer.faults.operations
        then_faults = older.faults.operations if older and older.faults else {}
        zero = FaultCounters()
        fault_errors = {
            op: now_faults.get(op, zero).errors - then_faults.get(op, zero).errors
            for op in FAULT_OPERATIONS
        }
        fault_delays = {
            op: now_faults.get(op, zero).delays - then_faults.get(op, zero).delays
            for op in FAULT_OPERATIONS
        }
        faults = FaultInterval(
            spec=newer.faults.spec,
            errors=fault_errors,
            delays=fault_delays,
            errors_per_s={op: count * per_s for op, count in fault_errors.items()},
            delays_per_s={op: count * per_s for op, count in fault_delays.items()},
        )

    process = newer.process
    voluntary = process.ctx_switches_voluntary - older_process.ctx_switches_voluntary
    involuntary = process.ctx_switches_involuntary - older_process.ctx_switches_involuntary
    return Interval(
        seconds=seconds,
        since_start=older is None,
        newer=newer,
        operations=operations,
        engine=engine,
        loop_lag=newer.loop_lag - older_lag,
        cpu_user_percent=(process.cpu_user - older_process.cpu_user) * per_s * 100,
        cpu_system_percent=(process.cpu_system - older_process.cpu_system) * per_s * 100,
        ctx_switches_voluntary_per_s=voluntary * per_s,
        ctx_switches_involuntary_per_s=involuntary * per_s,
        faults=faults,
    )


class QuietRecorder(Recorder):
    """A `Recorder` that skips the per-request counters (``iofs mount --no-statistics``).

    Engine statistics, the loop-lag heartbeat, the process counters and the mode history
    are kept; operations are not. It exists to measure what the counters cost.
    """

    def begin(self, op: str) -> int:
        return 0

    def end(self, op: str, start: int, *, error: bool, nbytes: int = 0) -> None:
        pass
