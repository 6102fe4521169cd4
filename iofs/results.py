"""Results on disk: the ``results/<time>-<kind>/`` directory a run fills, and reading it
back into `Results` (`load_results`) and rendering it (`render_results`: the summary,
the chart; ``iofs report`` goes through it). Rendering uses only the saved files.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import ExitStatus, IofsError
from .findings import findings as demo_findings
from .report import (
    Results,
    Run,
    daemon_figures,
    parse_fio,
    summary_renderables,
    summary_text,
)
from .report_chart import chart_svg, html_page
from .stats import Snapshot

#: Summaries are rendered this wide into summary.txt.
SUMMARY_WIDTH = 120


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def results_directory(parent: Path, kind: str) -> Path:
    """A new directory ``parent/<time>-<kind>`` (a suffix added if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        candidate = parent / (f"{stamp}-{kind}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise IofsError(f"cannot make a results directory in {parent}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_results(directory: Path) -> Results:
    """The `Results` of a results directory, from its saved files alone."""
    if not (directory / "plan.json").is_file():
        raise IofsError(
            f"{directory}: not an iofs results directory (no plan.json)", ExitStatus.BAD_PATH
        )
    try:
        plan = _read_json(directory / "plan.json")
        env_path = directory / "environment.json"
        env = _read_json(env_path) if env_path.is_file() else {}
        runs = tuple(_load_run(directory / "runs" / entry["id"], entry) for entry in plan["runs"])
        return Results(
            kind=plan["kind"],
            runs=runs,
            jobs=plan.get("jobs", {}),
            environment=env,
            skipped=tuple((str(what), str(why)) for what, why in plan.get("skipped", [])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IofsError(f"{directory}: cannot read the results ({exc!r})") from None


def _load_run(directory: Path, entry: Mapping[str, str]) -> Run:
    filesystem, path, job = entry["filesystem"], entry["path"], entry["job"]
    if not (directory / "run.json").is_file():
        return Run(filesystem, path, job, status="not run", reason="interrupted before it ran")
    record = _read_json(directory / "run.json")
    status = record.get("status", "failed")
    reason = record.get("reason", "")
    if status == "ok" and not (directory / "fio.json").is_file():
        status, reason = "failed", "no fio.json"
    if status != "ok":
        return Run(filesystem, path, job, status=status, reason=reason or "interrupted")
    figures = tuple(parse_fio(_read_json(directory / "fio.json")))
    daemon = None
    before, after = directory / "stats-before.json", directory / "stats-after.json"
    if before.is_file() and after.is_file():
        daemon = daemon_figures(
            Snapshot.from_json(before.read_text()), Snapshot.from_json(after.read_text())
        )
    return Run(
        filesystem,
        path,
        job,
        status=status,
        figures=figures,
        daemon=daemon,
        extents={str(k): int(v) for k, v in record.get("extents", {}).items()},
    )


def render_results(
    directory: Path,
    console: Console | None = None,
    findings: Callable[[Results], list[str]] | None = None,
) -> Results:
    """Render *directory*'s summary and chart from its saved files; print the summary.

    Writes ``summary.txt``, ``chart.svg`` and ``chart.html`` (replacing earlier ones).
    A demo's findings are derived again from the numbers.
    """
    results = load_results(directory)
    if findings is None and results.kind == "demo":
        findings = demo_findings
    sentences = findings(results) if findings else []
    text = summary_text(results, sentences, width=SUMMARY_WIDTH)
    (directory / "summary.txt").write_text(text)
    (directory / "chart.svg").write_text(chart_svg(results))
    (directory / "chart.html").write_text(html_page(results, sentences, text))
    # Tables wider than a pipe's default 80 columns would be cut: print as summary.txt.
    console = console or Console(width=None if sys.stdout.isatty() else SUMMARY_WIDTH)
    for renderable in summary_renderables(results, sentences):
        console.print(renderable)
    console.print(f"[dim]results, raw fio JSON, commands and statistics in {directory}[/]")
    return results
