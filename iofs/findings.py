"""The demo's findings: one plain sentence per experiment, computed from a `Results`'
numbers (`findings`); a difference smaller than the noise rules of `iofs.noise` is
reported as within noise rather than as a finding.

Apart from `iofs.demo` (which plans and runs the experiments) so that rendering a saved
demo (`iofs report`, `bench.render_results`) needs no import of the runner.
"""

from __future__ import annotations

from collections.abc import Callable

from .noise import (
    MIN_CPU_RATIO,
    MIN_LATENCY_RATIO,
    means_differ,
    ratio_differs,
)
from .report import NATIVE, DaemonFigures, Figures, Results
from .units import format_count, format_ns, format_ratio

RunKey = tuple[str, str, str]  # (filesystem, path, job)

#: The two settings that compare Linux AIO and io_uring on buffered backing files.
URING_BUFFERED = "xfs,direct=off"
AIO_BUFFERED = "xfs,engine=aio,direct=off"

#: The transport comparison (`transports`): one job in blocking mode over each transport,
#: pyfuse3 (the baseline) first, and in passthrough mode, whose data bypasses the daemon.
TRANSPORT_JOB = "transport-4k-direct-qd16"
TRANSPORT_PATHS = (
    "blocking,transport=pyfuse3",
    "blocking,transport=dev",
    "blocking,transport=uring",
)
PASSTHROUGH_PATH = "passthrough,transport=dev"
#: The job's sections: (what they do, section name, fio direction).
TRANSPORT_SECTIONS = (
    ("reads", "read-4k-direct-qd16", "read"),
    ("writes", "write-4k-direct-qd16", "write"),
)

#: The nonblocking runs whose RWF_NOWAIT hit ratios the demo reports: a 64 MiB file read
#: at queue depth 1, and a 256 MiB file read cold at queue depth 16.
NOWAIT_RUNS: tuple[RunKey, RunKey] = (
    ("dir", "nonblocking", "rand-read-4k-direct"),
    ("dir", "nonblocking", "rand-read-4k-direct-qd16"),
)


def iops_differ(a: Figures, b: Figures) -> bool:
    """Whether *a* and *b*'s IOPS differ beyond noise (`iofs.noise.means_differ` over
    fio's per-interval IOPS samples)."""
    return means_differ(
        a.iops, a.iops_stddev, a.iops_samples, b.iops, b.iops_stddev, b.iops_samples
    )


def _x(a: float, b: float) -> str:
    """a/b as ``3.10x`` (or ``0.45x``)."""
    return format_ratio(a / b) if b > 0 else "-"


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _missing(results: Results, *runs: RunKey) -> str | None:
    """Why one of *runs* has no figures (skipped, failed, not run), or None."""
    for filesystem, path, job in runs:
        run = results.find(filesystem, path, job)
        if run is None:
            for what, why in results.skipped:
                if what in (f"target {filesystem}", f"mode {path}"):
                    return f"{what} was skipped ({why})"
            return f"{filesystem} · {path} · {job} was not part of this run"
        if run.status != "ok":
            return f"{filesystem} · {path} · {job} {run.status}: {run.reason}"
    return None


def _figures(results: Results, run: RunKey, section: str, direction: str) -> Figures | None:
    found = results.find(*run)
    return found.find(section, direction) if found else None


def _daemon(results: Results, run: RunKey) -> DaemonFigures | None:
    found = results.find(*run)
    return found.daemon if found else None


def _lags(results: Results, *runs: RunKey) -> list[float]:
    """The event-loop lag p99 (ns) of each run's daemon; 0 where there is none."""
    daemons = (_daemon(results, run) for run in runs)
    return [d.loop_lag_p99_ns if d else 0.0 for d in daemons]


# -- the findings ------------------------------------------------------------------------------
def head_of_line(results: Results) -> str:
    """Metadata p99 under data load, blocking against xfs mode (the mixed job)."""
    blocking, xfs = ("dir", "blocking", "mixed"), ("dir", "xfs", "mixed")
    why = _missing(results, blocking, xfs)
    if why:
        return f"Head-of-line blocking was not measured: {why}."
    slow = _figures(results, blocking, "metadata", "read")
    fast = _figures(results, xfs, "metadata", "read")
    if slow is None or fast is None:
        return "Head-of-line blocking was not measured: the mixed job's creates did not run."
    native = _figures(results, ("dir", NATIVE, "mixed"), "metadata", "read")
    natively = f"; natively {format_ns(native.p99_ns)}" if native else ""
    lags = _lags(results, blocking, xfs)
    lag = ""
    if all(lags):
        lag = f"the daemon's event loop lagged {format_ns(lags[0])} vs {format_ns(lags[1])} (p99)"
        if lags[0] > lags[1] and ratio_differs(lags[0], lags[1], MIN_LATENCY_RATIO):
            lag = f": {lag}, so the creates waited behind data requests served on it"
        else:
            lag = f" ({lag})"
    if not ratio_differs(slow.p99_ns, fast.p99_ns, MIN_LATENCY_RATIO):
        return (
            f"Under heavy writes, file creates had a p99 latency of {format_ns(slow.p99_ns)} in "
            f"blocking mode and {format_ns(fast.p99_ns)} in xfs mode{natively}: less than "
            f"{MIN_LATENCY_RATIO:g}x apart on {min(slow.ios, fast.ios):,} creates, within "
            f"noise, so no head-of-line blocking showed on this run{lag.replace(':', ';', 1)}."
        )
    if slow.p99_ns > fast.p99_ns:
        return (
            f"In blocking mode, file creates under heavy writes had a p99 latency of "
            f"{format_ns(slow.p99_ns)}, {_x(slow.p99_ns, fast.p99_ns)} their p99 in xfs mode "
            f"({format_ns(fast.p99_ns)}{natively}){lag}."
        )
    return (
        f"Unexpectedly, file creates under heavy writes had a lower p99 in blocking mode "
        f"({format_ns(slow.p99_ns)}) than in xfs mode ({format_ns(fast.p99_ns)}, "
        f"{_x(fast.p99_ns, slow.p99_ns)}{natively}){lag}."
    )


def _hit_ratio(daemon: DaemonFigures) -> tuple[int, int]:
    """(reads served inline by RWF_NOWAIT, reads that tried it) over a run."""
    counters = daemon.engine_counters
    hits = counters.get("nowait_hits", 0)
    return hits, hits + counters.get("nowait_would_block", 0) + counters.get("nowait_partial", 0)


def nowait_hits(results: Results) -> str:
    """The share of reads RWF_NOWAIT served inline in nonblocking mode, hot and cold."""
    hot, cold = NOWAIT_RUNS
    why = _missing(results, hot)
    daemon = _daemon(results, hot)
    if why or daemon is None:
        return f"The nowait hit ratio was not measured: {why or 'no daemon statistics'}."
    hits, tried = _hit_ratio(daemon)
    if not tried:
        return (
            "In nonblocking mode no read reached the daemon's RWF_NOWAIT path, so there is "
            "no hit ratio to report."
        )
    sentence = (
        f"In nonblocking mode, RWF_NOWAIT served {hits / tried:.0%} of the {tried:,} reads "
        f"that reached the daemon inline in {hot[2]}"
    )
    cold_daemon = _daemon(results, cold)
    cold_hits, cold_tried = _hit_ratio(cold_daemon) if cold_daemon else (0, 0)
    if cold_tried and not _missing(results, cold):
        sentence += f", and {cold_hits / cold_tried:.0%} of {cold_tried:,} in {cold[2]}"
    sentence += "; the rest would have blocked and went to worker threads"
    mine = _figures(results, hot, hot[2], "read")
    base = _figures(results, ("dir", "blocking", hot[2]), hot[2], "read")
    if mine and base:
        if iops_differ(mine, base):
            sentence += (
                f". In {hot[2]} it reached {_x(mine.iops, base.iops)} the IOPS of blocking "
                f"mode ({format_count(mine.iops)} vs {format_count(base.iops)})"
            )
        else:
            sentence += (
                f". In {hot[2]} its IOPS and blocking mode's ({format_count(mine.iops)} vs "
                f"{format_count(base.iops)}) differ by less than the run's noise"
            )
    return sentence + "."


def thread_cost(results: Results) -> str:
    """What a thread hand-off costs per request: btrfs (threads) against blocking mode."""
    threads, inline = (
        ("dir", "btrfs", "rand-read-4k-direct"),
        ("dir", "blocking", "rand-read-4k-direct"),
    )
    why = _missing(results, threads, inline)
    if why:
        return f"The thread-pool cost was not measured: {why}."
    pooled, direct = results.find(*threads), results.find(*inline)
    assert pooled is not None and direct is not None
    a = pooled.find("rand-read-4k-direct", "read")
    b = direct.find("rand-read-4k-direct", "read")
    cpu_a, cpu_b = pooled.cpu_per_op, direct.cpu_per_op
    if a is None or b is None or cpu_a is None or cpu_b is None:
        return "The thread-pool cost was not measured: a run has no reads or no statistics."
    cpu = (
        f"{format_ns(cpu_a * 1e9)} of daemon CPU per read against {format_ns(cpu_b * 1e9)} "
        "inline in blocking mode"
    )
    if not ratio_differs(cpu_a, cpu_b, MIN_CPU_RATIO):
        cpu += " (within noise)"
    if iops_differ(a, b):
        speed = (
            f"p50 latency went from {format_ns(b.p50_ns)} to {format_ns(a.p50_ns)} and IOPS "
            f"to {_x(a.iops, b.iops)} ({format_count(a.iops)} vs {format_count(b.iops)})"
        )
    else:
        speed = f"IOPS stayed within noise ({format_count(a.iops)} vs {format_count(b.iops)})"
    return (
        f"Handing each 4 KiB read to a worker thread (btrfs mode, engine "
        f"{pooled.daemon.engine if pooled.daemon else '?'}) cost {cpu}; {speed}."
    )


def _inline_share(daemon: DaemonFigures | None) -> float | None:
    """The share of an engine's completions reaped inside the submitting call."""
    if daemon is None:
        return None
    counters = daemon.engine_counters
    completions = counters.get("completions", 0)
    if "inline_reaps" not in counters or not completions:
        return None
    return counters["inline_reaps"] / completions


def aio_vs_uring(results: Results) -> str:
    """Linux AIO against io_uring on buffered backing files, cold random reads at QD16."""
    job = "rand-read-4k-direct-qd16"
    aio, uring = ("dir", AIO_BUFFERED, job), ("dir", URING_BUFFERED, job)
    why = _missing(results, aio, uring)
    if why:
        return f"Linux AIO and io_uring on buffered files were not compared: {why}."
    a, u = _figures(results, aio, job, "read"), _figures(results, uring, job, "read")
    if a is None or u is None:
        return "Linux AIO and io_uring on buffered files were not compared: no reads recorded."
    figures = (
        f"{format_count(a.iops)} IOPS with Linux AIO vs {format_count(u.iops)} with io_uring "
        f"(p99 {format_ns(a.p99_ns)} vs {format_ns(u.p99_ns)})"
    )
    if iops_differ(a, u):
        figures += f", {_x(a.iops, u.iops)}"
    else:
        figures += ", within noise"
    evidence = []
    shares = [_inline_share(_daemon(results, run)) for run in (aio, uring)]
    if shares[0] is not None and shares[1] is not None:
        evidence.append(
            f"{shares[0]:.0%} of AIO's reads completed inside the submitting system call, on "
            f"the event loop, against {shares[1]:.0%} of io_uring's"
        )
    lags = _lags(results, aio, uring)
    if all(lags):
        lag = f"event-loop lag p99 {format_ns(lags[0])} vs {format_ns(lags[1])}"
        if not ratio_differs(lags[0], lags[1], MIN_LATENCY_RATIO):
            lag += " (within noise)"
        evidence.append(lag)
    tail = f": {'; '.join(evidence)}" if evidence else ""
    return f"On buffered backing files, cold 4 KiB reads at queue depth 16 gave {figures}{tail}."


def xfs_vs_btrfs(results: Results) -> list[str]:
    """Native XFS against native Btrfs: O_DIRECT random writes, and fdatasync."""
    sentences = []
    job = "rand-write-4k-direct-qd16"
    xfs, btrfs = ("xfs", NATIVE, job), ("btrfs", NATIVE, job)
    why = _missing(results, xfs, btrfs)
    x, b = _figures(results, xfs, job, "write"), _figures(results, btrfs, job, "write")
    if why or x is None or b is None:
        sentences.append(
            f"Native XFS and Btrfs random writes were not compared: {why or 'no writes'}."
        )
    else:
        extents = ""
        runs = (results.find(*xfs), results.find(*btrfs))
        counts = [sum(r.extents.values()) if r and r.extents else 0 for r in runs]
        if all(counts):
            extents = (
                f"; the file ended in {_plural(counts[0], 'extent')} on XFS and "
                f"{_plural(counts[1], 'extent')} on Btrfs"
            )
        if iops_differ(x, b):
            faster, slower = ("XFS", "Btrfs") if x.iops > b.iops else ("Btrfs", "XFS")
            sentences.append(
                f"Natively, 4 KiB O_DIRECT random writes at queue depth 16 ran at "
                f"{format_count(x.iops)} IOPS on XFS and {format_count(b.iops)} on Btrfs: "
                f"{faster} {_x(max(x.iops, b.iops), min(x.iops, b.iops))} faster than {slower}"
                f" (p99 {format_ns(x.p99_ns)} vs {format_ns(b.p99_ns)}){extents}."
            )
        else:
            sentences.append(
                f"Natively, 4 KiB O_DIRECT random writes at queue depth 16 ran at "
                f"{format_count(x.iops)} IOPS on XFS and {format_count(b.iops)} on Btrfs, "
                f"within noise{extents}."
            )
    job = "fdatasync-write-4k"
    xfs, btrfs = ("xfs", NATIVE, job), ("btrfs", NATIVE, job)
    why = _missing(results, xfs, btrfs)
    x, b = _figures(results, xfs, job, "sync"), _figures(results, btrfs, job, "sync")
    xw, bw = _figures(results, xfs, job, "write"), _figures(results, btrfs, job, "write")
    if why or x is None or b is None or xw is None or bw is None:
        sentences.append(f"Native XFS and Btrfs fdatasync were not compared: {why or 'no syncs'}.")
    else:
        rates = (
            f"{format_count(xw.iops)} durable 4 KiB writes per second on XFS and "
            f"{format_count(bw.iops)} on Btrfs (fdatasync p99 {format_ns(x.p99_ns)} "
            f"vs {format_ns(b.p99_ns)})"
        )
        if iops_differ(xw, bw):
            faster = "XFS" if xw.iops > bw.iops else "Btrfs"
            sentences.append(
                f"With an fdatasync after every write, natively: {rates}; {faster} was "
                f"{_x(max(xw.iops, bw.iops), min(xw.iops, bw.iops))} faster."
            )
        else:
            sentences.append(
                f"With an fdatasync after every write, natively: {rates}, within noise."
            )
    return sentences


def _versus(what: str, mine: Figures, base: Figures) -> str:
    """How IOPS *mine* on *what* compare with pyfuse3's (*base*), said both ways: a verb
    phrase (``served 2.30x pyfuse3's reads (...)``)."""
    figures = f"{format_count(mine.iops)} vs {format_count(base.iops)} IOPS"
    if not iops_differ(mine, base):
        return f"matched pyfuse3 on {what} within noise ({figures})"
    if mine.iops > base.iops:
        return f"served {_x(mine.iops, base.iops)} pyfuse3's {what} ({figures})"
    return f"was slower than pyfuse3 on {what}, {_x(mine.iops, base.iops)} ({figures})"


def _against(name: str, figures: list[Figures], base: list[Figures]) -> str:
    """``NAME <reads phrase> and <writes phrase>`` (see `_versus`)."""
    halves = [
        _versus(what, mine, theirs)
        for (what, _, _), mine, theirs in zip(TRANSPORT_SECTIONS, figures, base, strict=True)
    ]
    return f"{name} {' and '.join(halves)}"


def _transport_run(results: Results, path: str) -> list[Figures] | None:
    """The run's read and write figures (in `TRANSPORT_SECTIONS` order), or None."""
    figures = [
        _figures(results, ("dir", path, TRANSPORT_JOB), section, direction)
        for _, section, direction in TRANSPORT_SECTIONS
    ]
    return None if any(f is None for f in figures) else [f for f in figures if f]


def _transport_name(path: str) -> str:
    return path.rpartition("transport=")[2]


def transports(results: Results) -> str:
    """The FUSE transports side by side in blocking mode: IOPS against pyfuse3's, daemon
    CPU per request and requests per wake-up."""
    job = "4 KiB O_DIRECT random reads and writes at queue depth 16"
    baseline = TRANSPORT_PATHS[0]
    why = _missing(results, ("dir", baseline, TRANSPORT_JOB))
    base = _transport_run(results, baseline)
    if why or base is None:
        return f"The transports were not compared: {why or 'pyfuse3 ran no reads or writes'}."
    measured = [(baseline, base)]
    not_run = []
    for path in TRANSPORT_PATHS[1:]:
        why = _missing(results, ("dir", path, TRANSPORT_JOB))
        figures = _transport_run(results, path)
        if why or figures is None:
            not_run.append(f"{_transport_name(path)} was not measured: {why or 'no I/O'}")
        else:
            measured.append((path, figures))
    comparisons = [_against(_transport_name(p), f, base) for p, f in measured[1:]]
    if comparisons:
        sentence = f"In blocking mode, {job}: {'; '.join(comparisons)}"
    else:
        sentence = (
            f"In blocking mode, {job} over pyfuse3 ran at {format_count(base[0].iops)} and "
            f"{format_count(base[1].iops)} IOPS"
        )
    costs, batches = [], []
    for path, _ in measured:
        daemon = _daemon(results, ("dir", path, TRANSPORT_JOB))
        if daemon is None or not daemon.requests:
            continue
        name = _transport_name(path)
        costs.append(f"{name} {format_ns(daemon.cpu_seconds / daemon.requests * 1e9)}")
        per_wakeup = daemon.requests_per_wakeup
        if per_wakeup is not None:
            batches.append(f"{name} {per_wakeup:.1f}")
    if costs:
        sentence += f". Daemon CPU per request: {', '.join(costs)}"
    if batches:
        sentence += f"; requests per wake-up: {', '.join(batches)}"
    if not_run:
        sentence += f". {'. '.join(not_run)}"
    return sentence + "."


def passthrough(results: Results) -> str:
    """Passthrough mode against pyfuse3 (blocking mode) and natively, on the transport job."""
    run = ("dir", PASSTHROUGH_PATH, TRANSPORT_JOB)
    why = _missing(results, run)
    figures = _transport_run(results, PASSTHROUGH_PATH)
    if why or figures is None:
        return f"Passthrough mode was not measured: {why or 'no I/O'}."
    sentence = "In passthrough mode (the kernel reads and writes the backing file itself), "
    base = _transport_run(results, TRANSPORT_PATHS[0])
    if base is not None and not _missing(results, ("dir", TRANSPORT_PATHS[0], TRANSPORT_JOB)):
        sentence += _against("the same job", figures, base)
    else:
        sentence += (
            f"the same job ran at {format_count(figures[0].iops)} and "
            f"{format_count(figures[1].iops)} IOPS"
        )
    native = _transport_run(results, NATIVE)
    if native is not None and not _missing(results, ("dir", NATIVE, TRANSPORT_JOB)):
        near = all(
            not iops_differ(mine, theirs) for mine, theirs in zip(figures, native, strict=True)
        )
        sentence += (
            f"; natively {format_count(native[0].iops)} and {format_count(native[1].iops)} "
            f"IOPS, "
            + (
                "within noise of passthrough"
                if near
                else f"passthrough reaching {_x(figures[0].iops, native[0].iops)} and "
                f"{_x(figures[1].iops, native[1].iops)} of that"
            )
        )
    found = results.find(*run)
    daemon = found.daemon if found else None
    if found is not None and daemon is not None:
        sentence += (
            f"; the daemon served {daemon.data_requests:,} data requests for its "
            f"{sum(f.ios for f in figures):,} I/Os"
        )
    return sentence + "."


FINDINGS: tuple[Callable[[Results], str | list[str]], ...] = (
    head_of_line,
    nowait_hits,
    thread_cost,
    aio_vs_uring,
    transports,
    passthrough,
    xfs_vs_btrfs,
)


def findings(results: Results) -> list[str]:
    """One plain sentence per experiment, computed from *results*' numbers."""
    sentences: list[str] = []
    for finding in FINDINGS:
        produced = finding(results)
        sentences.extend([produced] if isinstance(produced, str) else produced)
    return sentences
