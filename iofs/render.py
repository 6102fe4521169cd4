"""Rich renderings of the statistics: ``iofs stats`` and ``iofs top``.

Pure functions of `iofs.stats` data: they build rich renderables and print nothing.
Names that come from outside (modes, engines) are escaped, never read as markup.
Latencies are shown in human units (ns, µs, ms, s) with three significant digits, sizes
in binary units (KiB, MiB, GiB), rates per second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, JustifyMethod, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .backends.base import EngineStatistics
from .faults import FaultStatistics
from .histogram import PERCENTILES, HistogramSnapshot
from .intervals import FaultInterval, Interval, OperationInterval, diff
from .stats import OperationSnapshot, Snapshot
from .units import format_bytes, format_clock, format_duration, format_ns, format_rate

#: Mode switches the dashboard shows (the latest ones).
DASHBOARD_MODES = 4

_MiB = 1 << 20


def _latencies(histogram: HistogramSnapshot, quantiles: Iterable[float]) -> list[str]:
    if not histogram.count:
        return ["-" for _ in quantiles]
    return [format_ns(histogram.percentile(q)) for q in quantiles]


def _count(value: int) -> str:
    return f"{value:,}"


def _errors(value: str, nonzero: bool) -> Text:
    return Text(value, style="bold red" if nonzero else "")


def _line(*parts: str | Text) -> Text:
    """Parts (markup strings or Text) joined by a dim separator."""
    line = Text()
    for index, part in enumerate(parts):
        if index:
            line.append(" · ", style="dim")
        line.append_text(Text.from_markup(part) if isinstance(part, str) else part)
    return line


# -- tables that fit ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Column:
    heading: str
    #: 0: always shown; otherwise the higher, the sooner it is left out to fit a width.
    drop: int = 0
    justify: JustifyMethod = "right"


#: A row: its cells (a section heading has fewer), and whether a section ends after it.
_Row = tuple[Sequence[str | Text], bool]


def _fitted(
    columns: Sequence[_Column], rows: Sequence[_Row], width: int | None, **table: Any
) -> Table:
    """A table of *columns* and *rows* that fits *width* (None: any width) by leaving out
    the columns to drop first, so that no number is ever cut short or wrapped."""

    def cell_width(cell: str | Text) -> int:
        return (Text.from_markup(cell) if isinstance(cell, str) else cell).cell_len

    widths = [
        max([len(column.heading)] + [cell_width(cells[i]) for cells, _ in rows if i < len(cells)])
        for i, column in enumerate(columns)
    ]
    keep = list(range(len(columns)))
    # SIMPLE_HEAD without edge padding: an edge on each side, and between two columns
    # a padding space each and a separator.
    for index in sorted(range(len(columns)), key=lambda i: -columns[i].drop):
        if width is None or sum(widths[k] for k in keep) + 3 * len(keep) - 1 <= width:
            break
        if columns[index].drop:
            keep.remove(index)
    result = Table(box=box.SIMPLE_HEAD, pad_edge=False, **table)
    for index in keep:
        column = columns[index]
        result.add_column(column.heading, justify=column.justify, no_wrap=True)
    for cells, end_section in rows:
        result.add_row(*(cells[i] for i in keep if i < len(cells)), end_section=end_section)
    return result


# -- iofs stats --------------------------------------------------------------------------------
def stats_table(snapshot: Snapshot, width: int | None = None) -> RenderableType:
    """A snapshot as tables: summary, operations, engines and mode history; the
    operations table leaves out what does not fit *width* (None: nothing)."""
    parts: list[RenderableType] = [_summary(snapshot), _operations_table(snapshot, width)]
    if snapshot.engines:
        parts.append(_engines_table(snapshot.engines))
    if snapshot.faults is not None:
        parts.append(_faults_table(snapshot.faults))
    if len(snapshot.mode_history) > 1:
        parts.append(_modes_table(snapshot.mode_history))
    return Group(*parts)


_TRANSPORT_KEYS = ("transport_", "fuse_")


def _transport_line(snapshot: Snapshot) -> Text:
    """The transport's name, its negotiated capabilities and limits, and its counters."""
    extra = snapshot.extra
    capabilities = [k[5:] for k, v in extra.items() if k.startswith("fuse_") and v == 1]
    limits = [
        f"{name.replace('_', ' ')} {extra['fuse_' + name]:,}"
        for name in ("max_background", "congestion_threshold", "max_write", "protocol_minor")
        if extra.get("fuse_" + name, 0) > 1
    ]
    counters = [
        f"{k[10:].replace('_', ' ')} {v:,}" for k, v in extra.items() if k.startswith("transport_")
    ]
    requests, wakeups = extra.get("transport_requests", 0), extra.get("transport_wakeups", 0)
    per_wakeup = [f"{requests / wakeups:.2f} requests per wake-up"] if wakeups else []
    return _line(
        f"[bold]{escape(snapshot.transport)}[/]",
        *limits,
        *([f"capabilities {' '.join(capabilities)}"] if capabilities else []),
        *counters,
        *per_wakeup,
    )


def _summary(snapshot: Snapshot) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    entered = snapshot.mode_history[-1][1] if snapshot.mode_history else snapshot.time
    grid.add_row(
        "mode", f"[bold cyan]{escape(snapshot.mode)}[/] since {format_clock(entered, date=True)}"
    )
    grid.add_row(
        "uptime",
        f"{format_duration(snapshot.uptime)}, snapshot at {format_clock(snapshot.time, date=True)}",
    )
    process = snapshot.process
    grid.add_row(
        "process",
        _line(
            f"CPU {process.cpu_user:,.2f}s user, {process.cpu_system:,.2f}s system",
            f"RSS {format_bytes(process.rss)}",
            f"{process.threads} threads",
            _descriptors(snapshot),
            f"context switches {process.ctx_switches_voluntary:,} voluntary, "
            f"{process.ctx_switches_involuntary:,} involuntary",
        ),
    )
    own = {k: v for k, v in snapshot.extra.items() if not k.startswith(_TRANSPORT_KEYS)}
    if own:
        grid.add_row(
            "filesystem",
            _line(*(f"{name.replace('_', ' ')} {value:,}" for name, value in own.items())),
        )
    grid.add_row("transport", _transport_line(snapshot))
    passthrough = _passthrough_text(snapshot.extra, {})
    if passthrough is not None:
        grid.add_row("passthrough", passthrough)
    lag = snapshot.loop_lag
    grid.add_row(
        "loop lag",
        _line(
            *(
                f"p{q:g} {value}"
                for q, value in zip(PERCENTILES, _latencies(lag, PERCENTILES), strict=True)
            ),
            f"max {format_ns(lag.max) if lag.count else '-'}",
            f"{lag.count:,} wake-ups",
        ),
    )
    return grid


#: The columns of the operations table, and which go first when it must be narrower.
_OPERATION_COLUMNS = (
    _Column("operation", justify="left"),
    _Column("count"),
    _Column("errors"),
    _Column("bytes", drop=3),
    _Column("in flight", drop=6),
    _Column("max", drop=7),
    *(_Column(f"p{q:g}", drop={90.0: 5, 99.9: 2}.get(q, 0)) for q in PERCENTILES),
    _Column("max lat", drop=1),
    _Column("mean", drop=4),
)


def _operations_table(snapshot: Snapshot, width: int | None) -> RenderableType:
    rows: list[_Row] = []
    for kind in ("data", "metadata"):
        named = sorted(
            ((name, op) for name, op in snapshot.operations.items() if op.kind == kind),
            key=lambda item: (-item[1].count, item[0]),
        )
        if not named:
            continue
        rows.append(([f"[bold]{kind}[/]"], False))
        rows.extend(
            (_operation_cells(name, op), index == len(named) - 1)
            for index, (name, op) in enumerate(named)
        )
    if not rows:
        rows.append((["[dim]no requests yet[/]"], False))
    table = _fitted(
        _OPERATION_COLUMNS,
        rows,
        width,
        title="FUSE operations since start",
        caption="latency: handler start to reply, failed requests included",
    )
    control = [op for op in snapshot.operations.values() if op.kind == "control"]
    if not control:
        return table
    return Group(
        table,
        Text(
            f"control requests (iofs stats, top, mode...), not counted above: "
            f"{sum(op.count for op in control):,}",
            style="dim",
        ),
    )


def _operation_cells(name: str, op: OperationSnapshot) -> list[str | Text]:
    latency = op.latency
    return [
        f"  {name}",
        _count(op.count),
        _errors(_count(op.errors), op.errors > 0),
        format_bytes(op.bytes) if op.bytes else "-",
        _count(op.in_flight),
        _count(op.max_in_flight),
        *_latencies(latency, PERCENTILES),
        format_ns(latency.max) if latency.count else "-",
        format_ns(latency.mean) if latency.count else "-",
    ]


def _engines_table(engines: Sequence[EngineStatistics]) -> Table:
    table = Table(title="I/O engines", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("counter", no_wrap=True)
    for index, engine in enumerate(engines):
        role = "current" if index == 0 else "draining"
        table.add_column(Text(f"{engine.engine} ({role})"), justify="right", no_wrap=True)

    def row(label: str, *cells: str) -> None:
        table.add_row(label, *cells)

    row("direct I/O", *("on" if e.direct else "off" for e in engines))
    row("queue depth", *(_count(e.queue_depth) for e in engines))
    for label, attribute in (
        ("reads", "reads"),
        ("writes", "writes"),
        ("fsyncs", "fsyncs"),
        ("fdatasyncs", "fdatasyncs"),
    ):
        row(label, *(_count(getattr(e, attribute)) for e in engines))
    row("bytes read", *(format_bytes(e.bytes_read) for e in engines))
    row("bytes written", *(format_bytes(e.bytes_written) for e in engines))
    for label, attribute in (
        ("errors", "errors"),
        ("in flight", "in_flight"),
        ("max in flight", "max_in_flight"),
        ("submits", "submits"),
        ("completions", "completions"),
        ("max batch", "max_batch"),
        ("direct ops", "direct_ops"),
        ("bounced (unaligned reads)", "bounced"),
        ("buffered (wanted direct)", "buffered"),
        ("fallbacks", "fallbacks"),
    ):
        row(label, *(_count(getattr(e, attribute)) for e in engines))
    details = sorted({name for e in engines for name in e.details})
    for name in details:
        row(f"[dim]{name}[/]", *(_count(e.details.get(name, 0)) for e in engines))
    return table


def _faults_table(faults: FaultStatistics) -> RenderableType:
    """The spec on a line of its own (a table title would wrap it), then the counters."""
    heading = Text.assemble(("fault injection ", "bold"), (faults.spec, "bold yellow"))
    if faults.seed is not None and "seed=" not in faults.spec:
        heading.append(f" · seed {faults.seed} (add seed={faults.seed} to repeat the choices)")
    table = Table(
        caption="since start; each failure is also an error above",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("operation", no_wrap=True)
    for heading_text in ("matched", "failed", "delayed", "delay total"):
        table.add_column(heading_text, justify="right", no_wrap=True)
    for name, counters in faults.operations.items():
        table.add_row(
            f"  {name}",
            _count(counters.matched),
            _errors(_count(counters.errors), counters.errors > 0),
            _count(counters.delays),
            format_ns(counters.delay_ns) if counters.delays else "-",
        )
    return Group(heading, table)


def _modes_table(history: Sequence[tuple[str, float]]) -> Table:
    table = Table(title="mode history", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("entered", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    for name, at in history:
        table.add_row(format_clock(at, date=True), Text(name))
    return table


# -- iofs top ----------------------------------------------------------------------------------
def dashboard(
    newer: Snapshot, older: Snapshot | None = None, width: int | None = None
) -> RenderableType:
    """The ``iofs top`` screen for the interval from *older* to *newer*.

    With *older* None it shows averages since start and cumulative percentiles. The
    table leaves out the columns that do not fit *width* (None: none). Control requests
    (``iofs top``'s own reads of the statistics) are not shown as the workload's.
    """
    interval = diff(newer, older)
    parts: list[RenderableType] = [
        _header(interval),
        _transport_dashboard_line(newer, older),
        _rates_table(interval, width),
    ]
    engine_line = _engine_line(interval)
    if engine_line is not None:
        parts.append(engine_line)
    passthrough = _passthrough_text(newer.extra, older.extra if older is not None else {})
    if passthrough is not None:
        parts.append(Text.assemble(("passthrough ", "bold"), passthrough))
    if interval.faults is not None:
        parts.append(_faults_line(interval.faults))
    if len(newer.engines) > 1:
        draining = (f"{escape(e.engine)} ({e.in_flight:,} in flight)" for e in newer.engines[1:])
        parts.append(_line("[bold]draining[/] " + next(draining), *draining))
    if len(newer.mode_history) > 1:
        shown = newer.mode_history[-DASHBOARD_MODES:]
        modes = Text.assemble(("modes ", "bold"))
        if len(newer.mode_history) > len(shown):
            modes.append("… ", style="dim")
        for index, (name, at) in enumerate(shown):
            if index:
                modes.append(" → ", style="dim")
            modes.append(f"{format_clock(at)} {name}")
        parts.append(modes)
    return Group(*parts)


def _transport_dashboard_line(newer: Snapshot, older: Snapshot | None) -> Text:
    """``transport dev · max background 64 · 1.20 requests per wake-up · ...``."""
    extra, before = newer.extra, (older.extra if older is not None else {})
    parts = [f"[bold]transport[/] [bold cyan]{escape(newer.transport)}[/]"]
    if "fuse_max_background" in extra:
        parts.append(f"max background {extra['fuse_max_background']:,}")
        parts.append(f"max write {format_bytes(extra.get('fuse_max_write', 0))}")
        killpriv = "on" if extra.get("fuse_handle_killpriv_v2") else "off"
        parts.append(f"killpriv_v2 {killpriv}")
    requests = extra.get("transport_requests", 0) - before.get("transport_requests", 0)
    wakeups = extra.get("transport_wakeups", 0) - before.get("transport_wakeups", 0)
    if wakeups > 0:
        parts.append(f"{requests / wakeups:.2f} requests per wake-up")
    if "transport_in_flight" in extra:
        parts.append(f"in flight {extra['transport_in_flight']:,}")
    return _line(*parts)


def _passthrough_text(extra: Mapping[str, int], before: Mapping[str, int]) -> Text | None:
    """``3 files open passed through · 2 backing files · 5 opens handed over ...``: what
    the daemon does not see (FUSE passthrough), or None if it never passed a file."""
    if not extra.get("passthrough_opens") and not extra.get("passthrough_files"):
        return None
    opens = extra.get("passthrough_opens", 0) - before.get("passthrough_opens", 0)
    declined = sum(
        extra.get(k, 0) - before.get(k, 0)
        for k in extra
        if k.startswith("passthrough_declined_") or k == "passthrough_backing_failures"
    )
    return _line(
        f"{extra.get('passthrough_files', 0):,} open files passed through to the kernel",
        f"{extra.get('backing_files', 0):,} backing files",
        f"{opens:,} opens handed over, {declined:,} served by the daemon",
        "[dim]their reads and writes bypass the daemon and are not counted here[/]",
    )


def _faults_line(faults: FaultInterval) -> Text:
    """``faults eio=0.05 · injected errors/s read 3.0 write 0 · delays/s ...``."""
    errors = sum(faults.errors.values())
    return _line(
        Text.assemble(("faults ", "bold"), (faults.spec, "bold yellow")),
        _errors(
            "injected errors/s "
            + " ".join(f"{op} {format_rate(rate)}" for op, rate in faults.errors_per_s.items()),
            errors > 0,
        ),
        "delays/s "
        + " ".join(f"{op} {format_rate(rate)}" for op, rate in faults.delays_per_s.items()),
    )


def _header(interval: Interval) -> Text:
    newer = interval.newer
    engine = newer.engine
    lag_p99 = format_ns(interval.loop_lag.percentile(99)) if interval.loop_lag.count else "-"
    span = "averages since start" if interval.since_start else f"last {interval.seconds:.1f}s"
    switches = interval.ctx_switches_voluntary_per_s + interval.ctx_switches_involuntary_per_s
    first = _line(
        f"[bold]iofs top[/] mode [bold cyan]{escape(newer.mode)}[/]",
        f"up {format_duration(newer.uptime)}",
        f"engine {_engine_name(engine)}" if engine else "no engine",
        f"in flight [bold]{newer.in_flight:,}[/]",
        *(
            [f"max background {newer.extra['max_background']:,}"]
            if "max_background" in newer.extra
            else []
        ),
        span,
    )
    second = _line(
        f"loop lag p99 [bold]{lag_p99}[/]",
        f"CPU [bold]{interval.cpu_user_percent:.0f}%[/] user "
        f"[bold]{interval.cpu_system_percent:.0f}%[/] sys",
        f"{format_rate(switches)} ctx switches/s",
        f"RSS {format_bytes(newer.process.rss)}",
        _descriptors(newer),
    )
    return Text("\n").join([first, second])


def _descriptors(snapshot: Snapshot) -> str:
    """Descriptors in use against the limit, and those held for inodes against the budget."""
    process = snapshot.process
    if not process.fd_limit:
        return "descriptors -"  # a snapshot from before they were recorded
    text = f"descriptors {process.fds:,} of {process.fd_limit:,}"
    extra = snapshot.extra
    if "fd_budget" in extra:
        held = extra.get("fds_cached", 0) + extra.get("fds_pinned", 0)
        text += f" (inodes {held:,}, budget {extra['fd_budget']:,})"
    return text


def _engine_name(engine: EngineStatistics) -> str:
    io = "direct" if engine.direct else "buffered"
    return f"[bold]{escape(engine.engine)}[/] ({io}, qd {engine.queue_depth})"


#: The columns of the dashboard's table, and which go first when it must be narrower.
_RATE_COLUMNS = (
    _Column("operation", justify="left"),
    _Column("kind", drop=3, justify="left"),
    _Column("ops/s"),
    _Column("MiB/s"),
    _Column("p50", drop=1),
    _Column("p99"),
    _Column("p99.9", drop=2),
    _Column("in flight"),
    _Column("errors/s"),
)


def _rates_table(interval: Interval, width: int | None) -> Table:
    active = sorted(
        (
            (name, op)
            for name, op in interval.operations.items()
            if (op.count or op.in_flight) and op.kind != "control"
        ),
        key=lambda item: (-item[1].ops_per_s, -item[1].in_flight, item[0]),
    )
    rows: list[_Row] = [
        (_rate_cells(name, op), index == len(active) - 1) for index, (name, op) in enumerate(active)
    ]
    if not active:
        rows.append((["[dim]idle[/]"], False))
    else:
        ops = [op for _, op in active]
        errors = sum(op.errors_per_s for op in ops)
        rows.append(
            (
                [
                    "[bold]all[/]",
                    "",
                    format_rate(sum(op.ops_per_s for op in ops)),
                    f"{sum(op.bytes_per_s for op in ops) / _MiB:,.1f}",
                    "",
                    "",
                    "",
                    _count(sum(op.in_flight for op in ops)),
                    _errors(format_rate(errors), errors > 0),
                ],
                False,
            )
        )
    return _fitted(_RATE_COLUMNS, rows, width)


def _rate_cells(name: str, op: OperationInterval) -> list[str | Text]:
    return [
        f"[bold]{name}[/]" if op.kind == "data" else name,
        op.kind,
        format_rate(op.ops_per_s),
        f"{op.bytes_per_s / _MiB:,.1f}" if op.bytes else "-",
        *_latencies(op.latency, (50, 99, 99.9)),
        _count(op.in_flight),
        _errors(format_rate(op.errors_per_s), op.errors > 0),
    ]


def _engine_line(interval: Interval) -> Text | None:
    engine = interval.engine
    if engine is None:
        return None
    batch = f"{engine.mean_batch:.2f}" if engine.mean_batch is not None else "-"
    rates = _line(
        f"[bold]engine[/] {escape(engine.engine)}",
        f"in flight {engine.in_flight:,}/{engine.queue_depth:,}",
        f"{format_rate(engine.submits_per_s)} submits/s",
        f"{format_rate(engine.completions_per_s)} completions/s",
        f"mean batch {batch}",
    )
    paths = _line(
        f"[bold]paths/s[/] direct {format_rate(engine.direct_ops_per_s)}",
        f"bounced {format_rate(engine.bounced_per_s)}",
        f"buffered {format_rate(engine.buffered_per_s)}",
        f"fallbacks {format_rate(engine.fallbacks_per_s)}",
        _errors(f"errors {format_rate(engine.errors_per_s)}", engine.errors_per_s > 0),
    )
    return Text("\n").join([rates, paths])


def interval_json(interval: Interval) -> dict[str, Any]:
    """One ``iofs top --json`` line: the interval's rates and latency percentiles (ns),
    the workload's operations only (control requests are left out, as on screen)."""
    engine = interval.engine
    return {
        "time": interval.newer.time,
        "seconds": interval.seconds,
        "since_start": interval.since_start,
        "mode": interval.newer.mode,
        "in_flight": interval.newer.in_flight,
        "loop_lag_p99_ns": interval.loop_lag.percentile(99) if interval.loop_lag.count else None,
        "cpu_user_percent": interval.cpu_user_percent,
        "cpu_system_percent": interval.cpu_system_percent,
        "operations": {
            name: {
                "kind": op.kind,
                "ops_per_s": op.ops_per_s,
                "bytes_per_s": op.bytes_per_s,
                "errors_per_s": op.errors_per_s,
                "in_flight": op.in_flight,
                **{
                    f"p{q:g}_ns": op.latency.percentile(q) if op.latency.count else None
                    for q in PERCENTILES
                },
            }
            for name, op in interval.operations.items()
            if op.kind != "control"
        },
        "engine": None
        if engine is None
        else {
            "engine": engine.engine,
            "in_flight": engine.in_flight,
            "queue_depth": engine.queue_depth,
            "submits_per_s": engine.submits_per_s,
            "completions_per_s": engine.completions_per_s,
            "mean_batch": engine.mean_batch,
        },
    }
