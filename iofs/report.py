"""The results of ``iofs bench`` and ``iofs demo`` as data, and their renderings.

Pure functions only: `parse_fio` turns fio's JSON report into `Figures`,
`daemon_figures` turns two statistics snapshots into `DaemonFigures`, and the renderers
(`summary_tables`, `summary_text`) turn `Results` into rich tables (the chart and the
HTML page: `iofs.report_chart`; numbers in words: `iofs.units`). Nothing here reads or writes
files: `iofs.bench` loads a results directory and writes what these return, so a
summary re-rendered by ``iofs report DIR`` is the one the run printed.

Latencies are fio's completion latencies (clat; for metadata engines the time of the
create, stat or unlink; for the "sync" direction the fsync/fdatasync latency).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .intervals import diff
from .stats import Snapshot
from .units import format_count, format_ns, format_ratio

#: The path that is not iofs: fio on the filesystem itself.
NATIVE = "native"

#: How each filesystem is called in tables and charts.
FILESYSTEM_LABELS = {"dir": "dir", "xfs": "xfs img", "btrfs": "btrfs img"}

#: Colours of the paths in the charts (other settings take the spare ones in order).
PATH_COLOURS = {
    NATIVE: "#4d4d4d",
    "xfs": "#1f77b4",
    "btrfs": "#ff7f0e",
    "nonblocking": "#2ca02c",
    "blocking": "#d62728",
    "uncached": "#9467bd",
}
SPARE_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8")

_DIRECTIONS = ("read", "write", "trim")

#: fio engines that do no data I/O: their "bandwidth" is file sizes, not bytes moved.
METADATA_ENGINES = frozenset(
    {"filecreate", "filestat", "filedelete", "dircreate", "dirstat", "dirdelete"}
)


# -- data ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figures:
    """One direction of one fio job section in one run, as fio measured it."""

    section: str
    #: "read", "write", "trim", or "sync" (the fsync/fdatasync calls of the section).
    direction: str
    ios: int
    iops: float
    bandwidth: float  # bytes/s
    p50_ns: float
    p99_ns: float
    p999_ns: float
    #: fio's per-interval IOPS samples (every 0.5 s): their standard deviation and
    #: number, to tell a real difference from noise.
    iops_stddev: float = 0.0
    iops_samples: int = 0
    runtime_s: float = 0.0
    #: Bytes transferred (0 for syncs).
    io_bytes: int = 0


@dataclass(frozen=True)
class DaemonFigures:
    """What the iofs daemon did during one fio run (statistics after minus before)."""

    cpu_seconds: float  # user + system
    #: FUSE requests completed, all and data (read, write, fsync) only.
    requests: int
    data_requests: int
    loop_lag_p99_ns: float
    engine: str
    #: Engine counters over the run: reads, writes, fsyncs, fdatasyncs, direct_ops,
    #: bounced, buffered, fallbacks, submits, completions and the engine's details.
    engine_counters: Mapping[str, int] = field(default_factory=dict)
    #: FUSE operation -> (requests, p50 ns, p99 ns) over the run.
    operations: Mapping[str, tuple[int, float, float]] = field(default_factory=dict)
    #: How the requests reached the daemon (``pyfuse3``, ``dev``, ``uring``) and the
    #: transport's counters over the run (``transport_requests``, ``transport_wakeups``,
    #: ``transport_uring_*``: see docs/statistics.md); none for pyfuse3.
    transport: str = ""
    transport_counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def requests_per_wakeup(self) -> float | None:
        """FUSE requests the transport took per wake-up of the event loop (the ring's,
        for uring), or None where it does not count them (pyfuse3)."""
        counters = self.transport_counters
        prefix = "transport_uring_" if "transport_uring_wakeups" in counters else "transport_"
        wakeups = counters.get(f"{prefix}wakeups", 0)
        return counters.get(f"{prefix}requests", 0) / wakeups if wakeups > 0 else None


@dataclass(frozen=True)
class Run:
    """One fio job file run on one filesystem through one path (native or a mode)."""

    filesystem: str  # "dir", "xfs", "btrfs"
    path: str  # NATIVE or an iofs mode setting, e.g. "xfs,engine=aio"
    job: str
    #: "ok", "failed" (reason says why) or "not run" (interrupted before it).
    status: str
    reason: str = ""
    figures: tuple[Figures, ...] = ()
    daemon: DaemonFigures | None = None
    #: Extent counts of the files fio left behind (filefrag), when there were few.
    extents: Mapping[str, int] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        """The reads, writes and trims fio completed (metadata operations count as reads)."""
        return sum(f.ios for f in self.figures if f.direction in _DIRECTIONS)

    @property
    def cpu_per_op(self) -> float | None:
        """Daemon CPU seconds per fio operation; None natively or without operations."""
        if self.daemon is None or not self.ops:
            return None
        return self.daemon.cpu_seconds / self.ops

    def find(self, section: str, direction: str) -> Figures | None:
        for figures in self.figures:
            if figures.section == section and figures.direction == direction:
                return figures
        return None


@dataclass(frozen=True)
class Results:
    """A results directory's content: what ran, what it measured, and where."""

    kind: str  # "bench" or "demo"
    runs: tuple[Run, ...]
    #: Job name -> its intent (the leading ';' lines of the job file).
    jobs: Mapping[str, str]
    environment: Mapping[str, Any] = field(default_factory=dict)
    #: (what, why) for every target or mode that was skipped.
    skipped: tuple[tuple[str, str], ...] = ()

    def native_of(self, run: Run) -> Run | None:
        """The native run of *run*'s job on *run*'s filesystem, if it ran."""
        for other in self.runs:
            if (other.filesystem, other.path, other.job) == (run.filesystem, NATIVE, run.job):
                return other if other.status == "ok" else None
        return None

    def find(self, filesystem: str, path: str, job: str) -> Run | None:
        for run in self.runs:
            if (run.filesystem, run.path, run.job) == (filesystem, path, job):
                return run
        return None


# -- from raw data -----------------------------------------------------------------------
def _percentiles(side: Mapping[str, Any]) -> tuple[float, float, float]:
    values = side.get("percentile", {})
    return (
        float(values.get("50.000000", 0)),
        float(values.get("99.000000", 0)),
        float(values.get("99.900000", 0)),
    )


def parse_fio(report: Mapping[str, Any]) -> list[Figures]:
    """The figures of every section and direction in a fio JSON report that did I/O."""
    figures = []
    global_engine = report.get("global options", {}).get("ioengine", "psync")
    for job in report["jobs"]:
        runtime_s = float(job.get("job_runtime", 0)) / 1000
        metadata = job.get("job options", {}).get("ioengine", global_engine) in METADATA_ENGINES
        for direction in _DIRECTIONS:
            side = job.get(direction)
            if not side or not side.get("total_ios"):
                continue
            p50, p99, p999 = _percentiles(side.get("clat_ns", {}))
            figures.append(
                Figures(
                    section=job["jobname"],
                    direction=direction,
                    ios=int(side["total_ios"]),
                    iops=float(side["iops"]),
                    bandwidth=0.0 if metadata else float(side["bw_bytes"]),
                    p50_ns=p50,
                    p99_ns=p99,
                    p999_ns=p999,
                    iops_stddev=float(side.get("iops_stddev", 0)),
                    iops_samples=int(side.get("iops_samples", 0)),
                    runtime_s=runtime_s,
                    io_bytes=int(side.get("io_bytes", 0)),
                )
            )
        sync = job.get("sync", {}).get("lat_ns", {})
        count = int(sync.get("N", 0))
        if count:
            p50, p99, p999 = _percentiles(sync)
            figures.append(
                Figures(
                    section=job["jobname"],
                    direction="sync",
                    ios=count,
                    iops=count / runtime_s if runtime_s else 0.0,
                    bandwidth=0.0,
                    p50_ns=p50,
                    p99_ns=p99,
                    p999_ns=p999,
                    runtime_s=runtime_s,
                )
            )
    return figures


_ENGINE_COUNTERS = (
    "reads",
    "writes",
    "fsyncs",
    "fdatasyncs",
    "direct_ops",
    "bounced",
    "buffered",
    "fallbacks",
    "submits",
    "completions",
    "errors",
)


#: The transport counters that count events (the others are sizes and settings).
_TRANSPORT_COUNTERS = frozenset(
    {
        "transport_requests",
        "transport_wakeups",
        "transport_uring_requests",
        "transport_uring_wakeups",
        "transport_uring_submits",
    }
)


def daemon_figures(before: Snapshot, after: Snapshot) -> DaemonFigures:
    """What the daemon did between two snapshots of the same mount, *before* first."""
    interval = diff(after, before)
    cpu = (after.process.cpu_user + after.process.cpu_system) - (
        before.process.cpu_user + before.process.cpu_system
    )
    counters: dict[str, int] = {}
    engine = ""
    if after.engine is not None:
        engine = after.engine.engine
        old = before.engine if before.engine and before.engine.engine == engine else None
        for name in _ENGINE_COUNTERS:
            counters[name] = getattr(after.engine, name) - (getattr(old, name) if old else 0)
        for name, value in after.engine.details.items():
            counters[name] = value - (old.details.get(name, 0) if old else 0)
    operations = {
        name: (op.count, float(op.latency.percentile(50)), float(op.latency.percentile(99)))
        for name, op in sorted(interval.operations.items())
        if op.count
    }
    return DaemonFigures(
        cpu_seconds=max(cpu, 0.0),
        requests=sum(op.count for op in interval.operations.values()),
        data_requests=sum(op.count for op in interval.operations.values() if op.kind == "data"),
        loop_lag_p99_ns=float(interval.loop_lag.percentile(99)),
        engine=engine,
        engine_counters=counters,
        operations=operations,
        transport=after.transport,
        transport_counters={
            name: value - before.extra.get(name, 0)
            for name, value in after.extra.items()
            if name in _TRANSPORT_COUNTERS
        },
    )


# -- labels and units ----------------------------------------------------------------------
def target_label(filesystem: str, path: str) -> str:
    """``dir · native``, ``xfs img · blocking``: a run's filesystem and path."""
    return f"{FILESYSTEM_LABELS.get(filesystem, filesystem)} · {path}"


def latency_text(value_ns: float) -> str:
    return format_ns(value_ns) if value_ns > 0 else "-"


def job_rows(results: Results, job: str) -> list[tuple[str, str, list[tuple[Run, Figures | None]]]]:
    """(section, direction, [(run, its figures)...]) for one job, in run order."""
    runs = [r for r in results.runs if r.job == job]
    keys: list[tuple[str, str]] = []
    for run in runs:
        for figures in run.figures:
            if (figures.section, figures.direction) not in keys:
                keys.append((figures.section, figures.direction))
    return [(s, d, [(run, run.find(s, d)) for run in runs]) for s, d in keys]


def direction_label(section: str, direction: str, directions: Mapping[str, int]) -> str:
    """The section's name, with the direction where a section has more than one."""
    if direction == "sync":
        return f"{section} (fsync/fdatasync)"
    return f"{section} ({direction})" if directions.get(section, 0) > 1 else section


# -- rich tables -------------------------------------------------------------------------
def summary_tables(results: Results) -> list[Table]:
    """One table per job: a row per filesystem and path under each section."""
    tables = []
    for job in job_order(results):
        rows = job_rows(results, job)
        runs = [r for r in results.runs if r.job == job]
        intent = results.jobs.get(job, "").split(". ")[0].rstrip(".")
        table = Table(
            title=Text(f"{job}: {intent}" if intent else job, style="bold"),
            caption=_extents_caption(runs),
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            title_justify="left",
        )
        table.add_column("section / target", no_wrap=True)
        for heading in ("IOPS", "vs native", "MiB/s", "p50", "p99", "CPU/op"):
            table.add_column(heading, justify="right", no_wrap=True)
        directions: dict[str, int] = {}
        for section, direction, _ in rows:
            if direction != "sync":
                directions[section] = directions.get(section, 0) + 1
        for section, direction, cells in rows:
            table.add_row(Text(direction_label(section, direction, directions), style="bold"))
            for index, (run, figures) in enumerate(cells):
                last = index == len(cells) - 1
                label = Text("  " + target_label(run.filesystem, run.path))
                if figures is None:
                    table.add_row(_with_status(label, run), end_section=last)
                    continue
                native = results.native_of(run)
                reference = native.find(section, direction) if native else None
                ratio = ""
                if run.path != NATIVE and reference is not None and reference.iops:
                    ratio = format_ratio(figures.iops / reference.iops)
                cpu = run.cpu_per_op
                table.add_row(
                    label,
                    format_count(figures.iops),
                    ratio,
                    f"{figures.bandwidth / 2**20:,.1f}" if figures.bandwidth else "-",
                    latency_text(figures.p50_ns),
                    latency_text(figures.p99_ns),
                    format_ns(cpu * 1e9) if cpu is not None else "-",
                    end_section=last,
                )
        if not rows:
            for run in runs:
                table.add_row(
                    _with_status(Text("  " + target_label(run.filesystem, run.path)), run)
                )
        tables.append(table)
    return tables


#: Extent counts are shown under a job's table once some run's files reach this many:
#: below it a file is laid out in a few large extents, as any filesystem does.
FRAGMENTED = 32


def _extents_caption(runs: Sequence[Run]) -> str | None:
    """The files' extent counts after each run, when some run's files are fragmented."""
    counted = [(run, sum(run.extents.values())) for run in runs if run.extents]
    if not counted or max(count for _, count in counted) < FRAGMENTED:
        return None
    parts = ", ".join(f"{target_label(r.filesystem, r.path)} {count:,}" for r, count in counted)
    return f"extents of fio's files after the run (filefrag): {parts}"


def _with_status(label: Text, run: Run) -> Text:
    """*label* followed by why *run* has no figures here (failed, not run, no such I/O)."""
    why = f"{run.status}: {run.reason}" if run.status != "ok" else "no such I/O"
    label.append(f"  {why[:100]}", style="dim")
    return label


def job_order(results: Results) -> list[str]:
    order: list[str] = []
    for run in results.runs:
        if run.job not in order:
            order.append(run.job)
    return order


def caption(results: Results) -> str:
    """What the columns mean and where the figures came from, in a few lines."""
    env = results.environment
    lines = [
        "IOPS, MiB/s, p50/p99 completion latency: fio. vs native: IOPS over native IOPS on "
        "the same filesystem. CPU/op: iofs daemon CPU time (user+system) over the whole "
        "run per fio operation (all sections).",
    ]
    filesystems = env.get("filesystems", {})
    if isinstance(filesystems, Mapping):
        where = [
            f"{FILESYSTEM_LABELS.get(name, name)} = {info.get('type', '?')} "
            f"at {info.get('path', '?')}"
            for name, info in filesystems.items()
            if isinstance(info, Mapping)
        ]
        if where:
            lines.append("; ".join(where) + ".")
    if env.get("cache_drop"):
        lines.append(f"Caches before each run: {env['cache_drop']}.")
    for what, why in results.skipped:
        lines.append(f"Skipped {what}: {why}.")
    return "\n".join(lines)


def summary_text(results: Results, findings: Sequence[str] = (), width: int = 120) -> str:
    """The summary as plain text: the tables, the caption, and any findings."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for renderable in summary_renderables(results, findings):
        console.print(renderable)
    return console.export_text()


def summary_renderables(results: Results, findings: Sequence[str] = ()) -> list[RenderableType]:
    parts: list[RenderableType] = [*summary_tables(results), Text(caption(results), style="dim")]
    if findings:
        parts.append(Text("\nFindings", style="bold"))
        parts.extend(Text(f"- {finding}") for finding in findings)
    return parts


__all__ = [
    "NATIVE",
    "DaemonFigures",
    "Figures",
    "Results",
    "Run",
    "caption",
    "daemon_figures",
    "parse_fio",
    "summary_tables",
    "summary_text",
]
