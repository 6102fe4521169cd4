"""An engine benchmark's results (`iofs.engine_bench`): judged against its targets,
rendered as tables (pure functions of ``results.json``), kept on disk, and the command
``iofs engines --bench`` that runs, keeps and prints them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import trio
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .backends import ENGINES, Capability
from .engine_bench import (
    SCHEMA,
    SUMMARY_WIDTH,
    EngineInfo,
    EngineResults,
    RunRecord,
    Settings,
    TargetVerdict,
    create_data_file,
    disk_environment,
    measure,
)
from .engine_workloads import WORKLOADS, MiB
from .errors import ExitStatus, IofsError
from .results import results_directory, write_json

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


# -- judging and rendering: pure functions of the results ----------------------------------


def pick(results: EngineResults, workload: str, engine: str) -> RunRecord | None:
    """The run shown for (*workload*, *engine*): the median (or best) of its rounds."""
    runs = [r for r in results["runs"] if r["workload"] == workload and r["engine"] == engine]
    good = sorted((r for r in runs if r["error"] is None), key=lambda r: r["ops_per_s"])
    if not good:
        return runs[0] if runs else None
    if results["settings"]["pick"] == "best":
        return good[-1]
    return good[(len(good) - 1) // 2]


def evaluate_targets(
    results: EngineResults, targets: Sequence[Target] = TARGETS
) -> list[TargetVerdict]:
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


def workload_table(results: EngineResults, workload: dict[str, Any]) -> Table:
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


def render(results: EngineResults) -> list[RenderableType]:
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


def summary_text(results: EngineResults) -> str:
    """The rendering as plain text, as kept in summary.txt."""
    console = Console(file=io.StringIO(), width=SUMMARY_WIDTH, record=True, color_system=None)
    for part in render(results):
        console.print(part)
    return console.export_text()


# -- the command ------------------------------------------------------------------------


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


def select(requested: str | None, known: Sequence[str], what: str) -> list[str]:
    """The comma-separated *requested* items (all of *known* if None), each checked."""
    if requested is None:
        return list(known)
    chosen = [item.strip() for item in requested.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise IofsError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})", ExitStatus.USAGE
        )
    return chosen


def render_run(directory: Path) -> None:
    """Print the tables of an earlier run from its results.json (nothing is measured)."""
    try:
        results = cast(EngineResults, json.loads((directory / "results.json").read_text()))
    except FileNotFoundError:
        raise IofsError(
            f"{directory}: not an engine benchmark's directory (no results.json)",
            ExitStatus.BAD_PATH,
        ) from None
    print(summary_text(results), end="")


def run_engine_bench(
    settings: Settings,
    *,
    engines: str | None,
    workloads: str | None,
    directory: Path,
    results_parent: Path,
    keep: bool,
) -> int:
    """Measure, keep results.json, environment.json and summary.txt in a new
    ``<time>-engines`` directory under *results_parent*, and print the tables."""
    # Progress lines and tables as wide as in summary.txt when not on a terminal.
    console = Console() if sys.stdout.isatty() else Console(width=SUMMARY_WIDTH)
    infos = engine_infos(select(engines, list(ENGINES), "engine"))
    keys = select(workloads, [w.key for w in WORKLOADS], "workload")
    chosen = [w for w in WORKLOADS if w.key in keys]
    names = [name for name, info in infos.items() if info["available"]]
    for name, info in infos.items():
        if not info["available"]:
            console.print(f"[yellow]skipping engine {name}[/]: {info['reason']}")
    if not names:
        raise IofsError("no engine can run here", ExitStatus.UNAVAILABLE)
    directory.mkdir(parents=True, exist_ok=True)
    run_dir = results_directory(results_parent, "engines")
    env = disk_environment(directory, ["iofs", *sys.argv[1:]])
    write_json(run_dir / "environment.json", env)
    estimate = len(chosen) * len(names) * settings["rounds"] * settings["seconds"]
    console.print(
        f"{len(names)} engines x {len(chosen)} workloads x {settings['rounds']} rounds x"
        f" {settings['seconds']:g} s: about {estimate / 60:.1f} min of measurement;"
        f" data file {settings['file_size'] // MiB} MiB in {directory}"
        f" ({env['filesystem'].get('type', '?')}); results in {run_dir}"
    )
    with scratch_file(directory, settings["file_size"], keep, console) as path:
        (idle, idle_net), runs = trio.run(measure, names, chosen, path, settings, console)
    results = EngineResults(
        schema=SCHEMA,
        settings=settings,
        baseline=choose_baseline({n: infos[n] for n in names}),
        engines=infos,
        workloads=[dataclasses.asdict(w) for w in chosen],
        idle_heartbeat_lag_ms=idle,
        idle_heartbeat_net_lag_ms=idle_net,
        runs=runs,
    )
    results["targets"] = evaluate_targets(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    env["load_average_after"] = os.getloadavg()
    write_json(run_dir / "environment.json", env)
    (run_dir / "summary.txt").write_text(summary_text(results))
    for part in render(results):
        console.print(part)
    console.print(f"results, environment and summary kept in {run_dir}")
    return 0
