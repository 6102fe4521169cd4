"""``iofs switch`` results rendered from their files alone (``iofs report DIR``).

`load_timeline` reads a results directory written by `iofs.switch` into a
`iofs.timeline.Timeline`; `render_switch` writes ``summary.txt``, ``timeline.csv``,
``timeline.svg`` and ``timeline.html`` from it and prints the summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import IofsError
from .results import SUMMARY_WIDTH, render_results
from .schedule import BadSchedule, parse_schedule
from .stats import Snapshot, SwitchRecord
from .timeline import Request, Sample, Timeline, build, phase_figures, switch_costs
from .timeline_render import (
    findings,
    html_page,
    renderables,
    summary_text,
    timeline_csv,
    timeline_svg,
)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_timeline(directory: Path) -> tuple[Timeline, dict[str, Any], dict[str, Any]]:
    """The timeline of a switch results directory, its plan and its verify result."""
    try:
        plan = json.loads((directory / "plan.json").read_text())
        run = json.loads((directory / "run.json").read_text())
        switches = json.loads((directory / "switches.json").read_text())
        phases = parse_schedule([f"{p['setting']}:{p['seconds']}" for p in plan["schedule"]])
        samples = []
        with open(directory / "stats.jsonl") as lines:
            for line in lines:
                entry = json.loads(line)
                snapshot = Snapshot.from_json(json.dumps(entry["snapshot"]))
                samples.append(Sample(entry["before"], entry["after"], snapshot))
        logs = directory / "fio-logs"
        timeline = build(
            start=float(run["start"]),
            end=float(run["end"]),
            interval=float(plan["interval"]),
            phases=phases,
            iops_logs=[p.read_text() for p in sorted(logs.glob("*_iops.*.log"))],
            hist_logs=[p.read_text() for p in sorted(logs.glob("*_clat_hist.*.log"))],
            samples=samples,
            requests=[Request(**r) for r in switches["requests"]],
            records=[SwitchRecord(**r) for r in switches["daemon"]],
            settle=float(plan["settle"]),
        )
    except (OSError, ValueError, KeyError, TypeError, BadSchedule) as exc:
        raise IofsError(f"{directory}: cannot read the switch results ({exc!r})") from None
    verify = _load_json(directory / "verify-result.json") or {"status": "not run"}
    return timeline, plan, verify


def render_switch(directory: Path, console: Console | None = None) -> list[str]:
    """Write ``summary.txt``, ``timeline.svg`` and ``timeline.html`` from the saved files
    alone, print the summary, and return the findings."""
    timeline, plan, verify = load_timeline(directory)
    figures = phase_figures(timeline)
    costs = switch_costs(timeline, figures)
    sentences = findings(figures, costs, verify, timeline.settle, timeline.interval)
    title = f"iofs switch: {plan['job']} on {plan['target']}"
    parts = renderables(title, figures, costs, sentences)
    text = summary_text(parts, width=SUMMARY_WIDTH)
    svg = timeline_svg(timeline, costs, title)
    env = _load_json(directory / "environment.json")
    (directory / "summary.txt").write_text(text)
    (directory / "timeline.csv").write_text(timeline_csv(timeline))
    (directory / "timeline.svg").write_text(svg)
    (directory / "timeline.html").write_text(
        html_page(title, svg, sentences, text, str(plan.get("intent", "")), env)
    )
    console = console or Console(width=None if sys.stdout.isatty() else SUMMARY_WIDTH)
    for part in parts:
        console.print(part)
    console.print(f"[dim]chart, raw fio logs, statistics samples and switches in {directory}[/]")
    return sentences


def render_directory(directory: Path) -> None:
    """``iofs report DIR``: a switch run, or a bench or demo (with its switch run)."""
    plan = directory / "plan.json"
    if plan.is_file() and _load_json(plan).get("kind") == "switch":
        render_switch(directory)
        return
    render_results(directory)
    switch = directory / "switch"
    if (switch / "plan.json").is_file():
        run = _load_json(switch / "run.json")
        if run.get("status") == "ok":
            render_switch(switch)
        else:
            reason = run.get("reason", "it did not finish")
            Console(stderr=True).print(f"[yellow]the live-switch experiment failed: {reason}[/]")


def verification_failed(directory: Path) -> bool:
    """Whether the run's crc32c read-back found an error (or could not finish)."""
    status = _load_json(directory / "verify-result.json").get("status")
    return bool(status == "failed")
