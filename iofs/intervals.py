"""Intervals: what changed between two statistics snapshots (`diff`), as rates and
interval latency percentiles, per operation, engine and fault; the basis of
``iofs top`` and of the figures ``iofs bench``, ``switch`` and the demo report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .faults import OPERATIONS as FAULT_OPERATIONS
from .faults import FaultCounters
from .histogram import HistogramSnapshot
from .stats import OperationSnapshot, ProcessSnapshot, Snapshot


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
