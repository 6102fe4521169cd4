"""``iofs engines --bench``: every registered I/O engine outside FUSE, side by side.

Each engine in ``iofs.backends.ENGINES`` that can run here (its ``probe()`` says so)
serves the same workloads on one data file on the backing disk:

- 4 KiB random reads with the file hot in the page cache, c=1 and c=16;
- 4 KiB random reads from a cold page cache (the file's pages dropped with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` before each engine's run), c=1 and c=16;
- 4 KiB random reads through O_DIRECT twins (``EngineConfig(direct=True)``), c=1 and c=16;
- 1 MiB sequential buffered reads, one pass from a cold cache (stops at end of file);
- 4 KiB random overwrites, each followed by ``fdatasync``, c=1.

"c" is the number of trio tasks issuing requests back to back. After each request a
task passes through the scheduler once (``trio.lowlevel.checkpoint()``), as a FUSE
worker does when it waits for its next request on /dev/fuse; without that, engines that
complete inline (blocking, nowait hits) would starve every other task. Random offsets
are a seeded permutation of the file's blocks, the same for every engine in a round, so
a cold run reads no block twice until it has read them all (wraps are counted).

Noise hits all engines alike: the run goes round by round; in each round every workload
is run once by every engine in turn (the engine order rotates from round to round).
Each (workload, engine) figure shown is the run with the median throughput of its
rounds (``--pick best`` shows the fastest instead); every round is kept in
``results.json``.

Per run: requests and bytes per second, request latency (``time.perf_counter_ns``
around each request, in the issuing task), the event loop's responsiveness (the loop
lag of `iofs.looplag`, with a heartbeat task sleeping 1 ms at a time), the share of
the file in the page cache before the run (``mincore``), and the engine's
``statistics()``.

Output, in ``results/<timestamp>-engines/``: ``results.json`` (every run's figures and
engine statistics, and the targets' verdicts), ``environment.json`` (kernel, CPU, file
system, versions, the exact command) and ``summary.txt`` (the tables as printed). The
tables are a pure function of ``results.json`` (`iofs.engine_bench_results`):
``--render DIR`` prints them again. Environment capture, results directories, percentiles
and loop lag are the package's own (`iofs.environment`, `iofs.results`, `iofs.histogram`,
`iofs.looplag`), as for ``iofs bench``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import trio
from rich.console import Console

from . import looplag
from .backends import (
    Engine,
    EngineConfig,
    create_engine,
    running,
)
from .engine_workloads import MiB, Prepare, Workload
from .environment import block_device_of, filesystem_of, first_line, machine
from .histogram import nearest_rank
from .stats import engine_to_json
from .syscalls import cached_fraction

SCHEMA = 1
#: Width of the tables in summary.txt and of ``--render``.
SUMMARY_WIDTH = 170


# -- the data, as kept in results.json ---------------------------------------------------


class Percentiles(TypedDict):
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class RunRecord(TypedDict):
    workload: str
    engine: str
    round: int
    ops: int
    bytes: int
    elapsed_s: float
    ops_per_s: float
    mib_per_s: float
    #: Per request (for writes: the write and its fdatasync), in microseconds.
    latency_us: Percentiles
    #: Overshoot of the heartbeat's sleeps, in milliseconds.
    heartbeat_lag_ms: Percentiles
    #: The same, less the time the loop thread waited for a CPU during each sleep
    #: (empty when /proc/thread-self/schedstat is missing).
    heartbeat_net_lag_ms: Percentiles
    #: Share of the file's pages in the page cache when the run started (None: unknown).
    cached_before: float | None
    #: ... and when it ended (after a cold run: what the reads and readahead brought in).
    cached_after: float | None
    #: What was done to the page cache before the run.
    cache_prepared: str
    #: Times the random offsets wrapped round the file (cold reads may then hit).
    offsets_wrapped: int
    #: A sequential pass that reached the end of the file before its time was up.
    reached_eof: bool
    #: CPU time of the event-loop thread during the run, and the times the kernel
    #: preempted it (other processes wanting the CPU: the machine's noise).
    loop_cpu_s: float
    loop_preempted: int
    statistics: dict[str, Any]
    error: str | None


class EngineInfo(TypedDict):
    capabilities: list[str]
    summary: str
    available: bool
    reason: str | None


class Settings(TypedDict):
    seconds: float
    rounds: int
    pick: Literal["median", "best"]
    file_size: int
    queue_depth: int
    workers: int
    heartbeat_ms: float
    seed: int
    quick: bool
    drop_caches_allowed: bool


class TargetVerdict(TypedDict):
    target: str
    status: Literal["PASS", "FAIL", "SKIP"]
    detail: str


class EngineResults(TypedDict):
    schema: int
    settings: Settings
    #: The engine the ratios are taken against (the first one that blocks the loop).
    baseline: str | None
    engines: dict[str, EngineInfo]
    workloads: list[dict[str, Any]]
    idle_heartbeat_lag_ms: Percentiles
    idle_heartbeat_net_lag_ms: Percentiles
    runs: list[RunRecord]
    targets: NotRequired[list[TargetVerdict]]


# -- small measurements ------------------------------------------------------------------


def percentiles(samples: Sequence[int], scale: float) -> Percentiles:
    """Nearest-rank percentiles of *samples* (`iofs.histogram.nearest_rank`), each divided
    by *scale*."""
    if not samples:
        return Percentiles(count=0, mean=0.0, p50=0.0, p90=0.0, p99=0.0, p999=0.0, max=0.0)
    ordered = sorted(samples)
    return Percentiles(
        count=len(ordered),
        mean=sum(ordered) / len(ordered) / scale,
        p50=nearest_rank(ordered, 50) / scale,
        p90=nearest_rank(ordered, 90) / scale,
        p99=nearest_rank(ordered, 99) / scale,
        p999=nearest_rank(ordered, 99.9) / scale,
        max=ordered[-1] / scale,
    )


def warm_cache(fd: int, size: int) -> None:
    """Read the whole file once, buffered, so that it sits in the page cache."""
    for offset in range(0, size, MiB):
        os.pread(fd, MiB, offset)


def drop_cache(fd: int, size: int, allow_drop_caches: bool) -> str:
    """Drop the file's pages from the page cache; say how.

    ``POSIX_FADV_DONTNEED`` on the file is enough (and touches nobody else's cache).
    Only if pages stay behind and ``--drop-caches`` allowed it, the whole page cache
    is dropped (``1`` to /proc/sys/vm/drop_caches: page cache only).
    """
    os.fsync(fd)  # DONTNEED leaves dirty pages alone
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    left = cached_fraction(fd, size)
    if left is None or left <= 0.01 or not allow_drop_caches:
        return "fadvise"
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("1\n")
    return "fadvise+drop_caches"


class Offsets:
    """Request offsets: a seeded permutation of the file's blocks (or them in order).

    Random orders wrap round when every block has been used once; sequential ones end.
    """

    def __init__(self, blocks: int, block: int, sequential: bool, rng: random.Random) -> None:
        self._order = list(range(blocks))
        if not sequential:
            rng.shuffle(self._order)
        self._block = block
        self._sequential = sequential
        self._next = 0
        self.wrapped = 0

    def take(self) -> int | None:
        if self._next == len(self._order):
            if self._sequential:
                return None
            self._next = 0
            self.wrapped += 1
        index = self._order[self._next]
        self._next += 1
        return index * self._block


def describe(exc: BaseException) -> str:
    """One line for an exception (the first leaf of an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


# -- one run -----------------------------------------------------------------------------


@dataclass
class _Tally:
    """What the issuing tasks of one run did."""

    ops: int = 0
    bytes: int = 0
    reached_eof: bool = False
    latencies: list[int] = dataclasses.field(default_factory=list)


async def _issue(
    engine: Engine,
    fd: int,
    workload: Workload,
    offsets: Offsets,
    payload: bytes,
    end_ns: int,
    tally: _Tally,
) -> None:
    """Issue requests back to back until *end_ns*, timing each one."""
    clock = time.perf_counter_ns
    writing = workload.pattern == "random-write-fdatasync"
    while clock() < end_ns:
        offset = offsets.take()
        if offset is None:
            tally.reached_eof = True
            return
        started = clock()
        if writing:
            count = await engine.write(fd, offset, payload)
            await engine.fsync(fd, datasync=True)
        else:
            count = len(await engine.read(fd, offset, workload.block))
        tally.latencies.append(clock() - started)
        if count != workload.block:
            raise OSError(f"short {'write' if writing else 'read'} at {offset}: {count} bytes")
        tally.ops += 1
        tally.bytes += count
        # Back through the scheduler once per request, as a FUSE worker waiting for
        # its next request would be: inline completions must not starve other tasks.
        await trio.lowlevel.checkpoint()


class Heartbeat:
    """The loop lag (and net loop lag) of a task that sleeps *interval_ns* at a time:
    `iofs.looplag`'s heartbeat, the definition the daemon's statistics use too."""

    def __init__(self, interval_ns: int) -> None:
        self.interval_ns = interval_ns
        self.lags: list[int] = []
        self.net_lags: list[int] = []

    async def run(self) -> None:
        await looplag.heartbeat(self.lags.append, self.interval_ns / 1e9, self.net_lags.append)


async def idle_heartbeat(seconds: float, interval_ns: int) -> tuple[Percentiles, Percentiles]:
    """The heartbeat's lag (and net lag) with nothing else running: its floor here."""
    heartbeat = Heartbeat(interval_ns)
    with trio.move_on_after(seconds):
        await heartbeat.run()
    return percentiles(heartbeat.lags, 1e6), percentiles(heartbeat.net_lags, 1e6)


def prepare_cache(fd: int, size: int, prepare: Prepare, allow_drop_caches: bool) -> str:
    """Bring the page cache into the state the workload wants; say what was done."""
    if prepare == "warm":
        if (cached_fraction(fd, size) or 0.0) < 1.0:
            warm_cache(fd, size)
        return "warmed"
    if prepare == "drop":
        return drop_cache(fd, size, allow_drop_caches)
    return "none"


@dataclass
class _Drive:
    """Wall time of the issuing tasks, and what the loop thread did meanwhile."""

    elapsed_ns: int = 0
    loop_cpu_s: float = 0.0
    loop_preempted: int = 0


async def _drive(
    engine: Engine,
    fd: int,
    workload: Workload,
    offsets: Offsets,
    payload: bytes,
    seconds: float,
    tally: _Tally,
    heartbeat: Heartbeat,
) -> _Drive:
    """Run the workload's issuing tasks on *engine* for *seconds*, with the heartbeat."""
    drive = _Drive()
    async with trio.open_nursery() as outer:
        outer.start_soon(heartbeat.run, name="heartbeat")
        before = resource.getrusage(resource.RUSAGE_THREAD)
        started = time.perf_counter_ns()
        end_ns = started + round(seconds * 1e9)
        async with trio.open_nursery() as issuers:
            for task in range(workload.concurrency):
                issuers.start_soon(
                    _issue,
                    engine,
                    fd,
                    workload,
                    offsets,
                    payload,
                    end_ns,
                    tally,
                    name=f"issuer-{task}",
                )
        drive.elapsed_ns = time.perf_counter_ns() - started
        after = resource.getrusage(resource.RUSAGE_THREAD)
        drive.loop_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        drive.loop_preempted = after.ru_nivcsw - before.ru_nivcsw
        outer.cancel_scope.cancel()
    return drive


async def run_once(
    name: str,
    workload: Workload,
    path: Path,
    settings: Settings,
    round_index: int,
) -> RunRecord:
    """One engine, created for this run, serving one workload for the set seconds."""
    size = settings["file_size"]
    rng = random.Random(f"{settings['seed']}:{workload.key}:{round_index}")
    sequential = workload.pattern == "sequential-read"
    offsets = Offsets(size // workload.block, workload.block, sequential, rng)
    payload = rng.randbytes(workload.block)
    tally = _Tally()
    heartbeat = Heartbeat(round(settings["heartbeat_ms"] * 1e6))
    drive = _Drive()
    error: str | None = None
    stats: dict[str, Any] = {}
    config = EngineConfig(
        direct=workload.direct, queue_depth=settings["queue_depth"], workers=settings["workers"]
    )
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        prepared = prepare_cache(fd, size, workload.prepare, settings["drop_caches_allowed"])
        cached_before = cached_fraction(fd, size)
        try:
            engine = create_engine(name, config)
            # A generous limit, so that an engine that hangs is reported, not waited for.
            with trio.fail_after(settings["seconds"] * 10 + 30):
                async with running(engine):
                    try:
                        drive = await _drive(
                            engine,
                            fd,
                            workload,
                            offsets,
                            payload,
                            settings["seconds"],
                            tally,
                            heartbeat,
                        )
                    finally:
                        stats = engine_to_json(engine.statistics())
                        engine.forget(fd)
        except Exception as exc:  # an engine's failure (or hang) is data here
            error = describe(exc)
        cached_after = cached_fraction(fd, size)
    finally:
        os.close(fd)
    elapsed = drive.elapsed_ns / 1e9
    return RunRecord(
        workload=workload.key,
        engine=name,
        round=round_index,
        ops=tally.ops,
        bytes=tally.bytes,
        elapsed_s=elapsed,
        ops_per_s=tally.ops / elapsed if elapsed else 0.0,
        mib_per_s=tally.bytes / MiB / elapsed if elapsed else 0.0,
        latency_us=percentiles(tally.latencies, 1e3),
        heartbeat_lag_ms=percentiles(heartbeat.lags, 1e6),
        heartbeat_net_lag_ms=percentiles(heartbeat.net_lags, 1e6),
        cached_before=cached_before,
        cached_after=cached_after,
        cache_prepared=prepared,
        offsets_wrapped=offsets.wrapped,
        reached_eof=tally.reached_eof,
        loop_cpu_s=drive.loop_cpu_s,
        loop_preempted=drive.loop_preempted,
        statistics=stats,
        error=error,
    )


async def measure(
    names: Sequence[str],
    workloads: Sequence[Workload],
    path: Path,
    settings: Settings,
    console: Console,
) -> tuple[tuple[Percentiles, Percentiles], list[RunRecord]]:
    """Every workload for every engine, round by round (engine order rotating)."""
    interval_ns = round(settings["heartbeat_ms"] * 1e6)
    idle = await idle_heartbeat(min(1.0, settings["seconds"]), interval_ns)
    console.print(
        f"idle heartbeat lag: p99 {idle[0]['p99']:.2f} ms, max {idle[0]['max']:.2f} ms;"
        f" net of CPU wait: p99 {idle[1]['p99']:.2f} ms"
    )
    runs: list[RunRecord] = []
    for round_index in range(settings["rounds"]):
        shift = round_index % len(names)
        order = [*names[shift:], *names[:shift]]
        for workload in workloads:
            for name in order:
                run = await run_once(name, workload, path, settings, round_index)
                runs.append(run)
                console.print(_progress_line(run, settings["rounds"]), highlight=False)
    return idle, runs


def _progress_line(run: RunRecord, rounds: int) -> str:
    head = f"round {run['round'] + 1}/{rounds}  {run['workload']:<19} {run['engine']:<9}"
    if run["error"]:
        return f"{head} [red]error: {run['error']}[/]"
    return (
        f"{head} {run['ops_per_s']:>10,.0f} ops/s {run['mib_per_s']:>8,.1f} MiB/s"
        f"  p50 {run['latency_us']['p50']:>8,.1f} µs  p99 {run['latency_us']['p99']:>8,.1f} µs"
        f"  heartbeat p99 {run['heartbeat_lag_ms']['p99']:>6.2f} ms"
        f" (net {run['heartbeat_net_lag_ms']['p99']:>6.2f} ms)"
    )


# -- the data file ------------------------------------------------------------------------


def create_data_file(directory: Path, size: int) -> Path:
    """A scratch directory under *directory* holding *size* bytes of real data, synced."""
    scratch = Path(tempfile.mkdtemp(prefix="iofs-bench-engines-", dir=directory))
    path = scratch / "data"
    chunk = bytearray(os.urandom(MiB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for index in range(size // MiB):
            chunk[:8] = index.to_bytes(8, "little")  # no two MiB alike
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# -- environment -----------------------------------------------------------------------


def disk_environment(directory: Path, command: Sequence[str]) -> dict[str, Any]:
    """`iofs.environment.machine` (the keys every harness writes), and the disk measured."""
    filesystem = filesystem_of(directory)
    statfs_type = first_line(["stat", "--file-system", "--format", "%T", str(directory)])
    io_uring_disabled = None
    with contextlib.suppress(OSError):
        io_uring_disabled = Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
    return {
        **machine(command),
        "cwd": os.getcwd(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "directory": str(directory),
        "filesystem": {**filesystem, "statfs_type": statfs_type or None},
        "block_device": block_device_of(filesystem.get("source", "")),
        "io_uring_disabled": io_uring_disabled,
    }
