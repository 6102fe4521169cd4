#!/usr/bin/env python3
"""Measure every registered I/O engine outside FUSE, side by side, in one run.

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
tables are a pure function of ``results.json``: ``--render DIR`` prints them again.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import io
import json
import math
import mmap
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import trio
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from iofs import looplag, mounttable
from iofs.backends import (
    ENGINES,
    Capability,
    Engine,
    EngineConfig,
    EngineStatistics,
    create_engine,
    running,
)
from iofs.environment import machine

KiB = 1024
MiB = 1024 * KiB
SCHEMA = 1
#: Width of the tables in summary.txt and of ``--render``.
SUMMARY_WIDTH = 170
REPO = Path(__file__).resolve().parent.parent

# -- workloads -------------------------------------------------------------------------

Pattern = Literal["random-read", "sequential-read", "random-write-fdatasync"]
#: What is done to the page cache before each run: read the whole file in (``warm``),
#: drop the file's pages (``drop``), or nothing.
Prepare = Literal["warm", "drop", "none"]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    pattern: Pattern
    prepare: Prepare
    #: Requests go through O_DIRECT twins (EngineConfig(direct=True)).
    direct: bool
    block: int
    concurrency: int


WORKLOADS: tuple[Workload, ...] = (
    Workload("hot-4k-c1", "4 KiB random reads, hot page cache, c=1",
             "random-read", "warm", False, 4 * KiB, 1),
    Workload("hot-4k-c16", "4 KiB random reads, hot page cache, c=16",
             "random-read", "warm", False, 4 * KiB, 16),
    Workload("cold-4k-c1", "4 KiB random reads, cold page cache, c=1",
             "random-read", "drop", False, 4 * KiB, 1),
    Workload("cold-4k-c16", "4 KiB random reads, cold page cache, c=16",
             "random-read", "drop", False, 4 * KiB, 16),
    Workload("direct-4k-c1", "4 KiB random reads, O_DIRECT, c=1",
             "random-read", "none", True, 4 * KiB, 1),
    Workload("direct-4k-c16", "4 KiB random reads, O_DIRECT, c=16",
             "random-read", "none", True, 4 * KiB, 16),
    Workload("seq-1m-cold", "1 MiB sequential buffered reads, one pass from a cold cache, c=1",
             "sequential-read", "drop", False, 1 * MiB, 1),
    Workload("write-4k-fdatasync", "4 KiB random overwrites, each followed by fdatasync, c=1",
             "random-write-fdatasync", "none", False, 4 * KiB, 1),
)  # fmt: skip


# -- targets (from the issue; the only place engines are named) --------------------------

Metric = Literal["throughput", "heartbeat"]


@dataclass(frozen=True)
class Target:
    """*engine* reaches *factor* times *reference* on *workload*.

    ``throughput``: engine ops/s >= factor x reference ops/s. ``heartbeat``: reference
    heartbeat lag p99 >= factor x the engine's (the engine's loop is that much livelier).
    """

    text: str
    workload: str
    engine: str
    reference: str
    metric: Metric
    factor: float


TARGETS: tuple[Target, ...] = (
    Target("io_uring >= 2x blocking, O_DIRECT 4 KiB reads c=16",
           "direct-4k-c16", "io_uring", "blocking", "throughput", 2.0),
    Target("io_uring >= 1.5x blocking, cold buffered 4 KiB reads c=16",
           "cold-4k-c16", "io_uring", "blocking", "throughput", 1.5),
    Target("nowait within 10% of blocking, hot 4 KiB reads c=1",
           "hot-4k-c1", "nowait", "blocking", "throughput", 0.9),
    Target("nowait within 10% of blocking, hot 4 KiB reads c=16",
           "hot-4k-c16", "nowait", "blocking", "throughput", 0.9),
    Target("io_uring heartbeat lag p99 >= 5x lower than blocking, cold reads c=16",
           "cold-4k-c16", "io_uring", "blocking", "heartbeat", 5.0),
    Target("io_uring heartbeat lag p99 >= 5x lower than blocking, O_DIRECT reads c=16",
           "direct-4k-c16", "io_uring", "blocking", "heartbeat", 5.0),
    Target("aio heartbeat lag p99 >= 5x lower than blocking, cold reads c=16",
           "cold-4k-c16", "aio", "blocking", "heartbeat", 5.0),
    Target("aio heartbeat lag p99 >= 5x lower than blocking, O_DIRECT reads c=16",
           "direct-4k-c16", "aio", "blocking", "heartbeat", 5.0),
)  # fmt: skip


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


class Results(TypedDict):
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
    """Nearest-rank percentiles of *samples*, each divided by *scale*."""
    if not samples:
        return Percentiles(count=0, mean=0.0, p50=0.0, p90=0.0, p99=0.0, p999=0.0, max=0.0)
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] / scale

    return Percentiles(
        count=n,
        mean=sum(ordered) / n / scale,
        p50=rank(0.50),
        p90=rank(0.90),
        p99=rank(0.99),
        p999=rank(0.999),
        max=ordered[-1] / scale,
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def cached_fraction(fd: int, size: int) -> float | None:
    """Share of the first *size* bytes of *fd* in the page cache (mincore), or None."""
    if size <= 0:
        return None
    address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        return None
    try:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        if _libc.mincore(address, size, vector) != 0:
            return None
        return sum(1 for byte in bytes(vector) if byte & 1) / pages
    finally:
        _libc.munmap(address, size)


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


def statistics_dict(stats: EngineStatistics) -> dict[str, Any]:
    data: dict[str, Any] = {
        f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != "details"
    }
    data["details"] = dict(stats.details)
    return data


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
                        stats = statistics_dict(engine.statistics())
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


def mount_of(path: Path) -> dict[str, str]:
    """The mount table entry holding *path* (the longest mount point above it)."""
    entry = mounttable.containing(path)
    if entry is None:
        return {}
    return {
        "device": entry.source,
        "mountpoint": entry.mountpoint,
        "type": entry.fstype,
        "options": entry.options,
    }


def _block_device(device: str) -> dict[str, str]:
    """Queue settings of the block device behind *device* (or its parent disk)."""
    if not device.startswith("/dev/"):
        return {}
    node = Path("/sys/class/block") / Path(os.path.realpath(device)).name
    for queue in (node / "queue", node.resolve().parent / "queue"):
        if queue.is_dir():
            found = {}
            for name in ("rotational", "scheduler", "logical_block_size", "nr_requests"):
                with contextlib.suppress(OSError):
                    found[name] = (queue / name).read_text().strip()
            return found
    return {}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(directory: Path, argv: Sequence[str]) -> dict[str, Any]:
    """`iofs.environment.machine` (the keys every harness writes), and the disk measured."""
    mount = mount_of(directory)
    statfs = subprocess.run(
        ["stat", "--file-system", "--format", "%T", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    io_uring_disabled = None
    with contextlib.suppress(OSError):
        io_uring_disabled = Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
    return {
        **machine([sys.executable, *argv]),
        "cwd": os.getcwd(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "directory": str(directory),
        "filesystem": {**mount, "statfs_type": statfs.stdout.strip() or None},
        "block_device": _block_device(mount.get("device", "")),
        "io_uring_disabled": io_uring_disabled,
        "rich": _version("rich"),
    }


# -- judging and rendering: pure functions of the results ----------------------------------


def pick(results: Results, workload: str, engine: str) -> RunRecord | None:
    """The run shown for (*workload*, *engine*): the median (or best) of its rounds."""
    runs = [r for r in results["runs"] if r["workload"] == workload and r["engine"] == engine]
    good = sorted((r for r in runs if r["error"] is None), key=lambda r: r["ops_per_s"])
    if not good:
        return runs[0] if runs else None
    if results["settings"]["pick"] == "best":
        return good[-1]
    return good[(len(good) - 1) // 2]


def evaluate_targets(results: Results, targets: Sequence[Target] = TARGETS) -> list[TargetVerdict]:
    verdicts = []
    for target in targets:
        figures: dict[str, RunRecord] = {}
        missing = None
        for name in (target.engine, target.reference):
            info = results["engines"].get(name)
            run = pick(results, target.workload, name)
            if info is None:
                missing = f"engine {name!r} is not registered"
            elif not info["available"]:
                missing = f"engine {name!r} cannot run here: {info['reason']}"
            elif run is None:
                missing = f"no {target.workload} run for engine {name!r}"
            elif run["error"] is not None:
                missing = f"{name} failed on {target.workload}: {run['error']}"
            else:
                figures[name] = run
                continue
            break
        if missing is not None:
            verdicts.append(TargetVerdict(target=target.text, status="SKIP", detail=missing))
            continue
        mine, theirs = figures[target.engine], figures[target.reference]
        if target.metric == "throughput":
            a, b = mine["ops_per_s"], theirs["ops_per_s"]
            ratio = a / b if b else math.inf
            detail = (
                f"{target.engine} {a:,.0f} ops/s vs {target.reference} {b:,.0f} ops/s"
                f" = {ratio:.2f}x (needs >= {target.factor:g}x)"
            )
        else:
            a, b = mine["heartbeat_lag_ms"]["p99"], theirs["heartbeat_lag_ms"]["p99"]
            ratio = b / a if a > 0 else math.inf
            detail = (
                f"heartbeat lag p99 {target.engine} {a:.2f} ms vs {target.reference}"
                f" {b:.2f} ms = {ratio:.2f}x lower (needs >= {target.factor:g}x)"
            )
            net_a = mine["heartbeat_net_lag_ms"]
            net_b = theirs["heartbeat_net_lag_ms"]
            if net_a["count"] and net_b["count"]:  # context, not the verdict
                net = net_b["p99"] / net_a["p99"] if net_a["p99"] > 0 else math.inf
                detail += (
                    f"; net of CPU wait {net_a['p99']:.2f} ms vs {net_b['p99']:.2f} ms = {net:.2f}x"
                )
        status: Literal["PASS", "FAIL"] = "PASS" if ratio >= target.factor else "FAIL"
        verdicts.append(TargetVerdict(target=target.text, status=status, detail=detail))
    return verdicts


def _notes(run: RunRecord, workload: dict[str, Any]) -> str:
    if run["error"] is not None:
        return f"error: {run['error']}"
    notes = []
    before, after = run["cached_before"], run["cached_after"]
    if workload["prepare"] == "drop" and before is not None and after is not None:
        notes.append(f"cached {before:.0%} -> {after:.0%}")
    elif workload["prepare"] != "none" and before is not None:
        notes.append(f"cached {before:.0%}")
    stats = run["statistics"]
    if workload["direct"] and stats.get("reads"):
        share = stats.get("direct_ops", 0) / stats["reads"]
        if share < 1:
            notes.append(f"only {share:.0%} via O_DIRECT")
    if stats.get("fallbacks"):
        notes.append(f"{stats['fallbacks']:,} fallbacks")
    if run["offsets_wrapped"]:
        notes.append(f"offsets wrapped {run['offsets_wrapped']}x")
    if run["reached_eof"]:
        notes.append(f"end of file after {run['elapsed_s']:.2f} s")
    return ", ".join(notes)


def workload_table(results: Results, workload: dict[str, Any]) -> Table:
    baseline = results["baseline"]
    settings = results["settings"]
    table = Table(
        title=f"[bold]{workload['title']}[/] ({workload['key']})",
        caption=(
            f"the {settings['pick']} of {settings['rounds']} round(s) of"
            f" {settings['seconds']:g} s by ops/s"
        ),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("engine", no_wrap=True)
    headings = (
        "ops/s",
        f"x {baseline}" if baseline else "ratio",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "hb p99 ms",
        "hb max ms",
        "hb net p99",
        "preempt/s",
        "ops/s range",
    )
    for heading in headings:
        table.add_column(heading, justify="right", no_wrap=True)
    table.add_column("notes")
    reference = pick(results, workload["key"], baseline) if baseline else None
    for name in results["engines"]:
        run = pick(results, workload["key"], name)
        if run is None:
            continue
        if run["error"] is not None:
            table.add_row(name, *["-"] * len(headings), _notes(run, workload))
            continue
        ratio = "-"
        if reference is not None and reference["error"] is None and reference["ops_per_s"]:
            ratio = f"{run['ops_per_s'] / reference['ops_per_s']:.2f}x"
        net = run["heartbeat_net_lag_ms"]
        rounds = [
            r["ops_per_s"]
            for r in results["runs"]
            if r["workload"] == workload["key"] and r["engine"] == name and r["error"] is None
        ]
        table.add_row(
            name,
            f"{run['ops_per_s']:,.0f}",
            ratio,
            f"{run['mib_per_s']:,.1f}",
            f"{run['latency_us']['p50']:,.1f}",
            f"{run['latency_us']['p99']:,.1f}",
            f"{run['heartbeat_lag_ms']['p99']:.2f}",
            f"{run['heartbeat_lag_ms']['max']:.2f}",
            f"{net['p99']:.2f}" if net["count"] else "-",
            f"{run['loop_preempted'] / run['elapsed_s']:,.0f}" if run["elapsed_s"] else "-",
            f"{min(rounds):,.0f}-{max(rounds):,.0f}" if len(rounds) > 1 else "",
            _notes(run, workload),
        )
    return table


def render(results: Results) -> list[RenderableType]:
    """Everything printed for *results*: a header, a table per workload, the targets."""
    settings = results["settings"]
    idle = results["idle_heartbeat_lag_ms"]
    idle_net = results["idle_heartbeat_net_lag_ms"]
    header = Text()
    header.append("I/O engines outside FUSE", style="bold")
    header.append(
        f": {settings['file_size'] / MiB:g} MiB file, {settings['rounds']} round(s) x"
        f" {settings['seconds']:g} s per run, queue depth {settings['queue_depth']},"
        f" {settings['workers']} workers; ratios against {results['baseline'] or '(none)'}.\n"
        "p50/p99: latency of each request, timed in the task that issued it."
        f" hb: how late a task sleeping {settings['heartbeat_ms']:g} ms in a loop wakes up"
        f" (idle: p99 {idle['p99']:.2f} ms, max {idle['max']:.2f} ms);"
        " hb net: the same less the time the loop thread waited for a CPU"
        f" (idle: p99 {idle_net['p99']:.2f} ms). preempt/s: involuntary context switches of"
        " the loop thread (CPU contention from other processes or the engine's own"
        " threads).\n"
    )
    for name, info in results["engines"].items():
        flags = "|".join(info["capabilities"]) or "-"
        state = "" if info["available"] else f"  SKIPPED: {info['reason']}"
        header.append(f"  {name:<9} {flags:<28} {info['summary']}{state}\n")
    parts: list[RenderableType] = [header]
    for workload in results["workloads"]:
        if any(r["workload"] == workload["key"] for r in results["runs"]):
            parts.append(workload_table(results, workload))
    lines = Text()
    lines.append("Targets\n", style="bold")
    styles = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
    for verdict in evaluate_targets(results):
        lines.append(f"  {verdict['status']}", style=styles[verdict["status"]])
        lines.append(f"  {verdict['target']}: {verdict['detail']}\n")
    parts.append(lines)
    return parts


def summary_text(results: Results) -> str:
    """The rendering as plain text, as kept in summary.txt."""
    console = Console(file=io.StringIO(), width=SUMMARY_WIDTH, record=True, color_system=None)
    for part in render(results):
        console.print(part)
    return console.export_text()


# -- command line ----------------------------------------------------------------------


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Measure every registered iofs I/O engine outside FUSE, side by side: hot, cold"
            " and O_DIRECT 4 KiB random reads, 1 MiB sequential reads, 4 KiB writes with"
            " fdatasync; throughput, latency and event-loop heartbeat lag."
        ),
        epilog="Keeps results.json, environment.json and summary.txt in the results directory.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the scratch data file is made, on the disk to measure (default: /var/tmp)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "results",
        help="where the run's directory <timestamp>-engines/ is made (default: results/)",
    )
    parser.add_argument(
        "--size-mib",
        type=_positive(int),
        default=None,
        metavar="N",
        help="data file size in MiB (default 1024, so that a fast engine's cold run stays "
        "mostly cold: 256 ended fully cached; 16 with --quick)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive(float),
        default=None,
        metavar="S",
        help="duration of each run (default 1.2; 0.3 with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive(int),
        default=None,
        metavar="N",
        help="rounds of every workload and engine (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--pick",
        choices=("median", "best"),
        default="median",
        help="which round to show, by ops/s (default: median; all are kept)",
    )
    parser.add_argument(
        "--engines",
        metavar="NAME,...",
        help="only these engines (default: every registered one that can run here)",
    )
    parser.add_argument(
        "--workloads",
        metavar="KEY,...",
        help=f"only these workloads (default: all: {', '.join(w.key for w in WORKLOADS)})",
    )
    parser.add_argument("--queue-depth", type=_positive(int), default=EngineConfig.queue_depth)
    parser.add_argument("--workers", type=_positive(int), default=EngineConfig.workers)
    parser.add_argument(
        "--heartbeat-ms", type=_positive(float), default=1.0, help="heartbeat sleep (default 1)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random offsets")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 16 MiB file, 0.3 s per run, 1 round (unless set explicitly)",
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help=(
            "if fadvise(DONTNEED) leaves the file cached, drop the whole page cache"
            " (root; affects everyone on the machine)"
        ),
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch data file")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RUN_DIR",
        help="print the tables of an earlier run from its results.json; measure nothing",
    )
    return parser


def _select(requested: str | None, known: Sequence[str], what: str) -> list[str]:
    if requested is None:
        return list(known)
    chosen = [item.strip() for item in requested.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def engine_infos(names: Sequence[str]) -> dict[str, EngineInfo]:
    infos = {}
    for name in names:
        cls = ENGINES[name]
        reason = cls.probe()
        infos[name] = EngineInfo(
            capabilities=[f.name or "" for f in Capability if f in cls.capabilities],
            summary=cls.summary,
            available=reason is None,
            reason=reason,
        )
    return infos


def choose_baseline(infos: dict[str, EngineInfo]) -> str | None:
    """The reference engine: the first available one doing its I/O on the loop thread."""
    for name, info in infos.items():
        flags = set(info["capabilities"])
        if (
            info["available"]
            and "BLOCKS_LOOP" in flags
            and not flags & {"THREADED", "KERNEL_ASYNC"}
        ):
            return name
    return None


@contextlib.contextmanager
def scratch_file(directory: Path, size: int, keep: bool, console: Console) -> Iterator[Path]:
    path = create_data_file(directory, size)
    try:
        yield path
    finally:
        if keep:
            console.print(f"kept the data file {path}")
        else:
            shutil.rmtree(path.parent, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    args = parser().parse_args(argv[1:])
    # Progress lines and tables as wide as in summary.txt when not on a terminal.
    console = Console() if sys.stdout.isatty() else Console(width=SUMMARY_WIDTH)
    if args.render is not None:
        results = cast(Results, json.loads((args.render / "results.json").read_text()))
        print(summary_text(results), end="")
        return 0

    settings = Settings(
        seconds=args.seconds or (0.3 if args.quick else 1.2),
        rounds=args.rounds or (1 if args.quick else 3),
        pick=args.pick,
        file_size=(args.size_mib or (16 if args.quick else 1024)) * MiB,
        queue_depth=args.queue_depth,
        workers=args.workers,
        heartbeat_ms=args.heartbeat_ms,
        seed=args.seed,
        quick=args.quick,
        drop_caches_allowed=args.drop_caches,
    )
    infos = engine_infos(_select(args.engines, list(ENGINES), "engine"))
    keys = _select(args.workloads, [w.key for w in WORKLOADS], "workload")
    workloads = [w for w in WORKLOADS if w.key in keys]
    names = [name for name, info in infos.items() if info["available"]]
    for name, info in infos.items():
        if not info["available"]:
            console.print(f"[yellow]skipping engine {name}[/]: {info['reason']}")
    if not names:
        console.print("[red]no engine can run here[/]")
        return 1
    args.dir.mkdir(parents=True, exist_ok=True)
    run_dir = args.results / f"{time.strftime('%Y%m%d-%H%M%S')}-engines"
    run_dir.mkdir(parents=True, exist_ok=False)
    env = environment(args.dir, argv)
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    estimate = len(workloads) * len(names) * settings["rounds"] * settings["seconds"]
    console.print(
        f"{len(names)} engines x {len(workloads)} workloads x {settings['rounds']} rounds x"
        f" {settings['seconds']:g} s: about {estimate / 60:.1f} min of measurement;"
        f" data file {settings['file_size'] // MiB} MiB in {args.dir}"
        f" ({env['filesystem'].get('type', '?')}); results in {run_dir}"
    )
    with scratch_file(args.dir, settings["file_size"], args.keep, console) as path:
        (idle, idle_net), runs = trio.run(measure, names, workloads, path, settings, console)
    results = Results(
        schema=SCHEMA,
        settings=settings,
        baseline=choose_baseline({n: infos[n] for n in names}),
        engines=infos,
        workloads=[dataclasses.asdict(w) for w in workloads],
        idle_heartbeat_lag_ms=idle,
        idle_heartbeat_net_lag_ms=idle_net,
        runs=runs,
    )
    results["targets"] = evaluate_targets(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    env["load_average_after"] = os.getloadavg()
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    text = summary_text(results)
    (run_dir / "summary.txt").write_text(text)
    for part in render(results):
        console.print(part)
    console.print(f"results, environment and summary kept in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
