"""Statistics: what the filesystem records on every request, and frozen snapshots of it.

The filesystem holds one `Recorder`. Every FUSE handler calls `Recorder.begin` before it
runs and `Recorder.end` after, which costs a dict lookup and a few integer operations,
so the recorder stays on all the time. A background task (`Recorder.heartbeat`) measures
how late the trio event loop wakes a sleeping task: the loop lag (defined once, in
`iofs.looplag`) every request waits through before its handler even starts.

`Recorder.snapshot` freezes everything into a `Snapshot`: plain data, with an exact JSON
form (`Snapshot.to_json` / `Snapshot.from_json`) that ``iofs stats --json`` prints and
docs/statistics.md's reference describes field by field. `iofs.intervals.diff` turns
two snapshots into an `Interval` of rates and interval latency percentiles, the basis of
``iofs top``. Rendering lives in `iofs.render`; nothing here does I/O except
`Recorder.snapshot`, which reads the process's own counters.

Latencies are kept in log-linear histograms (`iofs.histogram`): 16 buckets per power of
two, so a percentile read from one is at most 6.25 % above the exact value, never below.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from time import perf_counter_ns
from typing import Any

import psutil
import trio

from . import looplag
from .backends.base import EngineStatistics
from .faults import FaultCounters, FaultStatistics
from .histogram import BUCKETS, SUB_BITS, Histogram, HistogramSnapshot

#: FUSE operations that go through the I/O engine; every other operation is metadata
#: (served by system calls on the event loop). flush and fsyncdir touch no file data
#: through the engine, so they count as metadata.
DATA_OPERATIONS = frozenset({"read", "write", "fsync"})

#: Tag of the JSON layout; bumped when a field changes meaning or disappears.
FORMAT = "iofs-statistics/1"


#: Mode switches kept in the history (the oldest are dropped first).
MODE_HISTORY = 100


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
        for bits in range(SUB_BITS + 1):
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
    if any(not 0 <= index < BUCKETS for index, _ in buckets):
        raise ValueError("a bucket index out of range")
    coarseness = int(document.get("coarseness", 0))
    if not 0 <= coarseness <= SUB_BITS:
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


class QuietRecorder(Recorder):
    """A `Recorder` that skips the per-request counters (``iofs mount --no-statistics``).

    Engine statistics, the loop-lag heartbeat, the process counters and the mode history
    are kept; operations are not. It exists to measure what the counters cost.
    """

    def begin(self, op: str) -> int:
        return 0

    def end(self, op: str, start: int, *, error: bool, nbytes: int = 0) -> None:
        pass
