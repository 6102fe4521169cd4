"""What a soak (`iofs.soak`) reports and how it is judged: the report's data
(`SoakReport`: failures, fio rounds, RSS samples, mode switches, counters), the criteria
(`evaluate`, with the RSS criterion of warm-up and growth described in `iofs.soak`) and
the text rendering (`render_report`). Pure functions of the report: nothing here runs
or reads anything.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .units import format_count

#: Warm-up: this fraction of the load (and at least one cycle through the modes).
WARMUP_FRACTION = 0.2
#: Most growth of the daemon's peak RSS after warm-up over its peak during warm-up.
RSS_GROWTH_LIMIT = 0.10


class Kind(enum.StrEnum):
    """The kinds of error a soak tells apart."""

    FIO_VERIFY = "fio verify"
    FIO = "fio"
    METADATA = "metadata"
    JOURNAL = "journal"
    MAPPED = "mapped file"
    MODE_SWITCH = "mode switch"
    DAEMON = "daemon"
    DAEMON_LOG = "daemon log"
    UNEXPECTED_ERRORS = "unexpected errors"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    #: Seconds since the load started.
    at: float


@dataclass(frozen=True)
class Criterion:
    name: str
    #: None: not judged, because the load was cut short before it could be (a failure
    #: elsewhere, or Ctrl-C), e.g. a mode not reached yet.
    passed: bool | None
    detail: str

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


@dataclass(frozen=True)
class FioRound:
    round: int
    runtime_s: float
    status: int | None
    #: Stopped by the soak (a failure elsewhere, or Ctrl-C) before its runtime was up.
    stopped: bool
    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    syncs: int = 0
    #: Jobs that ended with a failed verification (each stops at its first).
    verify_errors: int = 0
    #: Other job errors, as "job: error" lines.
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class RssFigures:
    """The daemon's RSS against the warm-up (see the module docstring)."""

    warmup_end_s: float
    start: int
    #: Highest sample up to the end of warm-up: the baseline.
    baseline: int
    #: Highest sample after warm-up (None if the load ended within warm-up).
    peak_after: int | None
    peak: int
    end: int

    @property
    def growth(self) -> float | None:
        if self.peak_after is None:
            return None
        return (self.peak_after - self.baseline) / self.baseline


def rss_figures(samples: Sequence[tuple[float, int]], warmup_end: float) -> RssFigures | None:
    """*samples* (seconds since the load started, RSS bytes) against the warm-up."""
    if not samples:
        return None
    during = [rss for at, rss in samples if at <= warmup_end] or [samples[0][1]]
    after = [rss for at, rss in samples if at > warmup_end]
    return RssFigures(
        warmup_end_s=warmup_end,
        start=samples[0][1],
        baseline=max(during),
        peak_after=max(after) if after else None,
        peak=max(rss for _, rss in samples),
        end=samples[-1][1],
    )


def warmup_seconds(duration: float, modes: int, switch_interval: float) -> float:
    """`WARMUP_FRACTION` of *duration*, and at least one full cycle through the modes."""
    return max(WARMUP_FRACTION * duration, modes * switch_interval)


@dataclass(frozen=True)
class SoakReport:
    results: str
    started: str
    duration_s: float
    switch_interval_s: float
    seed: int
    #: Seconds the load ran (from its start until every worker stopped).
    elapsed_s: float
    interrupted: bool
    modes: tuple[str, ...]
    #: (mode, why it cannot run here)
    skipped_modes: tuple[tuple[str, str], ...]
    initial_mode: str
    #: (seconds since the load started, mode switched to)
    switches: tuple[tuple[float, str], ...]
    fio_rounds: tuple[FioRound, ...]
    metadata_ops: Mapping[str, int]
    metadata_tree_checks: int
    journal_records: int
    journal_syncs: int
    #: Slots checked at the end through the mount, and in the backing file after unmount.
    journal_verified_mount: int
    journal_verified_backing: int
    #: The mapped writer: writes through the mapping, pwrites where it could not map,
    #: msyncs, whole-file checks, maps made, maps refused with the documented ENODEV,
    #: switches refused while it was mapped, and the bytes verified after unmount.
    mapped: Mapping[str, int]
    rss: RssFigures | None
    rss_samples: tuple[tuple[float, int], ...]
    daemon_pid: int
    #: The daemon's exit status once stopped (None: it could not be reaped).
    daemon_status: int | None
    daemon_log_errors: int
    unexpected_errors: int | None
    failures: tuple[Failure, ...]
    criteria: tuple[Criterion, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.interrupted and all(c.passed is True for c in self.criteria)

    @property
    def cut_short(self) -> bool:
        """Whether the load stopped before its time: Ctrl-C, or a failure during it."""
        return self.interrupted or any(f.at < self.duration_s for f in self.failures)

    @property
    def verdict(self) -> str:
        if self.interrupted:
            return "INTERRUPTED"
        return "PASS" if self.passed else "FAIL"

    def switch_counts(self) -> dict[str, int]:
        counts = Counter(mode for _, mode in self.switches)
        return {mode: counts[mode] for mode in self.modes}

    def fio_total(self, name: str) -> int:
        return sum(int(getattr(r, name)) for r in self.fio_rounds)

    def errors_by_kind(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.failures))

    def to_json(self) -> str:
        document = asdict(self)
        document["verdict"] = self.verdict
        document["passed"] = self.passed
        document["switch_counts"] = self.switch_counts()
        document["errors_by_kind"] = self.errors_by_kind()
        document["fio_totals"] = {
            name: self.fio_total(name)
            for name in ("reads", "read_bytes", "writes", "write_bytes", "syncs", "verify_errors")
        }
        document["metadata_ops_total"] = sum(self.metadata_ops.values())
        if self.rss is not None:
            document["rss"]["growth"] = self.rss.growth
            document["rss"]["rule"] = (
                "growth = (highest RSS sampled after warm-up - highest RSS sampled up to "
                f"the end of warm-up) / the latter; must be at most {RSS_GROWTH_LIMIT:.0%}"
            )
        return json.dumps(document, indent=2) + "\n"


def evaluate(report: SoakReport) -> tuple[Criterion, ...]:
    """PASS/FAIL per criterion, from the report's figures alone."""
    kinds = report.errors_by_kind()

    def errors(*names: Kind) -> int:
        return sum(kinds.get(name, 0) for name in names)

    def first(*names: Kind) -> str:
        messages = [f.message for f in report.failures if f.kind in names]
        return f"; first: {messages[0]}" if messages else ""

    rounds = len(report.fio_rounds)
    verify_errors = report.fio_total("verify_errors")
    fio_ok = rounds > 0 and report.fio_total("writes") > 0 and not errors(Kind.FIO_VERIFY, Kind.FIO)
    ops = sum(report.metadata_ops.values())
    counts = report.switch_counts()
    unvisited = [
        mode for mode, count in counts.items() if not count and mode != report.initial_mode
    ]
    rss = report.rss
    growth = rss.growth if rss is not None else None
    logged = report.daemon_log_errors
    switches_ok = not unvisited and not errors(Kind.MODE_SWITCH) and bool(report.switches)
    rss_ok = growth is not None and growth <= RSS_GROWTH_LIMIT
    return (
        Criterion(
            "fio verification",
            fio_ok,
            f"{_plural(rounds, 'round')}, {verify_errors} verify errors, "
            f"{errors(Kind.FIO)} other errors" + first(Kind.FIO_VERIFY, Kind.FIO),
        ),
        Criterion(
            "metadata churn",
            ops > 0 and not errors(Kind.METADATA),
            f"{ops:,} operations, {report.metadata_tree_checks} whole-tree checks, "
            f"{errors(Kind.METADATA)} errors" + first(Kind.METADATA),
        ),
        Criterion(
            "fsync-acknowledged writes",
            report.journal_records > 0
            and not errors(Kind.JOURNAL)
            and report.journal_verified_backing > 0,
            f"{report.journal_records:,} records in {report.journal_syncs:,} fsyncs; "
            f"last records of {report.journal_verified_mount} slots verified through the "
            f"mount, {report.journal_verified_backing} in the backing file after unmount"
            + first(Kind.JOURNAL),
        ),
        Criterion(
            "mapped file",
            report.mapped.get("writes", 0) > 0
            and not errors(Kind.MAPPED)
            and report.mapped.get("verified_backing", 0) > 0,
            f"{report.mapped.get('writes', 0):,} writes through a shared mapping, "
            f"{report.mapped.get('msyncs', 0):,} msyncs, {report.mapped.get('checks', 0):,} "
            f"checks against the model; {report.mapped.get('refused_maps', 0)} maps refused "
            f"with ENODEV where the setting says so, "
            f"{report.mapped.get('refused_switches', 0)} switches refused while mapped"
            + first(Kind.MAPPED),
        ),
        Criterion(
            "mode switches",
            _judged(switches_ok, report.cut_short and not errors(Kind.MODE_SWITCH)),
            f"{_plural(len(report.switches), 'switch')}, "
            + (f"never reached: {', '.join(unvisited)}" if unvisited else "every mode reached")
            + f", {errors(Kind.MODE_SWITCH)} failed"
            + first(Kind.MODE_SWITCH),
        ),
        Criterion(
            "daemon alive",
            not errors(Kind.DAEMON) and report.daemon_status == 0,
            ("served throughout" if not errors(Kind.DAEMON) else "stopped serving")
            + f"; exit status {report.daemon_status} once stopped"
            + first(Kind.DAEMON),
        ),
        Criterion(
            "daemon log",
            logged == 0,
            f"{logged} ERROR or Traceback lines",
        ),
        Criterion(
            "unexpected errors",
            report.unexpected_errors == 0,
            "statistics extra.unexpected_errors = "
            + ("unknown" if report.unexpected_errors is None else str(report.unexpected_errors)),
        ),
        Criterion(
            "RSS growth after warm-up",
            _judged(rss_ok, report.cut_short and growth is None),
            _rss_detail(rss),
        ),
    )


def _judged(passed: bool, cut_short: bool) -> bool | None:
    """*passed*, or None (not judged) if it failed only because the load was cut short."""
    return None if not passed and cut_short else passed


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("h") else "s")


def in_mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def _size(value: int) -> str:
    return in_mib(value) if value < 2**30 else f"{value / 2**30:.2f} GiB"


def _rss_detail(rss: RssFigures | None) -> str:
    if rss is None:
        return "not sampled"
    if rss.peak_after is None or rss.growth is None:
        return f"the load ended within warm-up ({rss.warmup_end_s:.0f} s): nothing to compare"
    return (
        f"{rss.growth:+.1%}: peak after warm-up {in_mib(rss.peak_after)} vs peak up to "
        f"warm-up end ({rss.warmup_end_s:.0f} s) {in_mib(rss.baseline)}; "
        f"limit +{RSS_GROWTH_LIMIT:.0%}"
    )


def format_seconds(seconds: float) -> str:
    """``3m 0s``, ``45.2s``, ``1h 2m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    return f"{minutes // 60}h {minutes % 60}m"


def render_report(report: SoakReport) -> str:
    """The report as plain text: a verdict, one line per criterion, then the figures."""
    lines = [
        f"iofs soak: {report.verdict} after {format_seconds(report.elapsed_s)} of "
        f"{format_seconds(report.duration_s)} (seed {report.seed}, a switch every "
        f"{report.switch_interval_s:g} s)"
    ]
    if report.interrupted:
        lines.append("interrupted: the figures below are what ran until then")
    width = max(len(c.name) for c in report.criteria) if report.criteria else 0
    lines.append("")
    for criterion in report.criteria:
        lines.append(f"  {criterion.mark:<4}  {criterion.name:<{width}}  {criterion.detail}")
    lines.append("")
    reads, writes = report.fio_total("reads"), report.fio_total("writes")
    lines.append(
        f"fio        {_plural(len(report.fio_rounds), 'round')} · reads {format_count(reads)} "
        f"({_size(report.fio_total('read_bytes'))}, verify reads included) · writes "
        f"{format_count(writes)} ({_size(report.fio_total('write_bytes'))}) · syncs "
        f"{format_count(report.fio_total('syncs'))} · verify errors "
        f"{report.fio_total('verify_errors')}"
    )
    ops = " · ".join(f"{name} {count:,}" for name, count in sorted(report.metadata_ops.items()))
    lines.append(f"metadata   {sum(report.metadata_ops.values()):,} ops: {ops or 'none'}")
    lines.append(
        f"journal    {report.journal_records:,} records acknowledged by "
        f"{report.journal_syncs:,} fsync/fdatasync calls"
    )
    mapped = report.mapped
    lines.append(
        f"mapped     {mapped.get('writes', 0):,} writes through MAP_SHARED · "
        f"{mapped.get('pwrites', 0):,} pwrites where it could not map · "
        f"{mapped.get('msyncs', 0):,} msyncs · {mapped.get('maps', 0):,} maps, "
        f"{mapped.get('refused_maps', 0):,} refused (ENODEV) · "
        f"{mapped.get('refused_switches', 0):,} switches refused while mapped"
    )
    counts = " · ".join(f"{mode} {count}" for mode, count in report.switch_counts().items())
    lines.append(f"switches   {len(report.switches)}: {counts} (mounted in {report.initial_mode})")
    for mode, reason in report.skipped_modes:
        lines.append(f"           skipped {mode}: {reason}")
    rss = report.rss
    if rss is not None:
        lines.append(
            f"RSS        start {in_mib(rss.start)} · warm-up peak {in_mib(rss.baseline)} "
            f"(first {rss.warmup_end_s:.0f} s) · peak {in_mib(rss.peak)} · end {in_mib(rss.end)}"
            f" · {len(report.rss_samples)} samples"
        )
    kinds = report.errors_by_kind()
    lines.append(
        "errors     "
        + (", ".join(f"{kind} {count}" for kind, count in kinds.items()) if kinds else "none")
    )
    for failure in report.failures[:5]:
        lines.append(f"           at {failure.at:.1f}s {failure.kind}: {failure.message}")
    if len(report.failures) > 5:
        lines.append(f"           ... {len(report.failures) - 5} more in soak.json")
    lines.append(f"results    {report.results}")
    return "\n".join(lines) + "\n"
