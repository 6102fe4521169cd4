"""The chart of a bench or demo run: an SVG of every job's figures per filesystem and
path (`chart_svg`), and a self-contained HTML page with the chart, the summary and the
findings (`html_page`). Pure functions of `iofs.report.Results`; nothing here reads or
writes files.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence

from .report import (
    FILESYSTEM_LABELS,
    NATIVE,
    PATH_COLOURS,
    SPARE_COLOURS,
    Results,
    direction_label,
    job_order,
    job_rows,
    latency_text,
    target_label,
)
from .units import format_count, format_ratio

_BAR_W = 280  # the longest bar of a panel
_VALUE_W = 120  # room for the value text after a bar
_ROW_H = 16
_PANEL_HEAD = 38
_CHAR_W = 6.6  # average width of an 11px sans-serif character, for laying out labels

#: Filesystems other than the plain directory get a pattern over their bars' colour.
_PATTERNS = {
    "xfs": '<pattern id="fs-xfs" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="2" height="6" fill="white" '
    'fill-opacity="0.6"/></pattern>',
    "btrfs": '<pattern id="fs-btrfs" width="6" height="6" patternUnits="userSpaceOnUse">'
    '<circle cx="3" cy="3" r="1.3" fill="white" fill-opacity="0.7"/></pattern>',
}


def _colours(paths: Iterable[str]) -> dict[str, str]:
    colours = dict(PATH_COLOURS)
    spare = iter(SPARE_COLOURS * 4)
    for path in paths:
        if path not in colours:
            colours[path] = next(spare, "#999999")
    return colours


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _bar(
    x: float, y: float, value: float, scale: float, colour: str, filesystem: str, text: str
) -> list[str]:
    length = 0.0 if scale <= 0 else max(value / scale * _BAR_W, 1.0 if value > 0 else 0.0)
    top, height = y + 2, _ROW_H - 4
    parts = [
        f'<rect x="{x:.1f}" y="{top:.1f}" width="{length:.1f}" height="{height}" fill="{colour}"/>'
    ]
    if filesystem in _PATTERNS:
        parts.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{length:.1f}" height="{height}" '
            f'fill="url(#fs-{filesystem})"/>'
        )
    parts.append(
        f'<text x="{x + length + 4:.1f}" y="{y + _ROW_H - 4:.1f}" class="v">{_esc(text)}</text>'
    )
    return parts


def chart_svg(results: Results) -> str:
    """An SVG chart: per job section, IOPS and p99 latency bars for every target.

    Bars are coloured by path (native or mode); bars on the XFS and Btrfs images carry a
    hatched or dotted pattern. Each IOPS bar carries its ratio to native on the same
    filesystem. Scales are per panel, linear from zero; a run without figures shows its
    status instead of bars.
    """
    colours = _colours(run.path for run in results.runs)
    labels = [target_label(run.filesystem, run.path) for run in results.runs]
    label_w = max(120.0, _CHAR_W * max((len(label) for label in labels), default=0) + 12)
    latency_x = label_w + _BAR_W + _VALUE_W
    width = math.ceil(latency_x + _BAR_W + _VALUE_W)
    body: list[str] = []
    y = 10.0
    for job in job_order(results):
        rows = job_rows(results, job)
        directions: dict[str, int] = {}
        for section, direction, _ in rows:
            if direction != "sync":
                directions[section] = directions.get(section, 0) + 1
        for section, direction, cells in rows:
            label = direction_label(section, direction, directions)
            title = job + label.removeprefix(section) if section == job else f"{job} · {label}"
            body.append(f'<text x="4" y="{y + 16:.1f}" class="t">{_esc(title)}</text>')
            body.append(
                f'<text x="{label_w:.1f}" y="{y + 32:.1f}" class="h">IOPS (vs native)</text>'
                f'<text x="{latency_x:.1f}" y="{y + 32:.1f}" class="h">p99 latency</text>'
            )
            y += _PANEL_HEAD
            iops_scale = max((f.iops for _, f in cells if f is not None), default=0.0)
            p99_scale = max((f.p99_ns for _, f in cells if f is not None), default=0.0)
            for run, figures in cells:
                body.append(
                    f'<text x="{label_w - 6:.1f}" y="{y + _ROW_H - 4:.1f}" class="l">'
                    f"{_esc(target_label(run.filesystem, run.path))}</text>"
                )
                if figures is None:
                    why = run.reason if run.status != "ok" else "no such I/O"
                    body.append(
                        f'<text x="{label_w:.1f}" y="{y + _ROW_H - 4:.1f}" class="v">'
                        f"{_esc(f'{run.status}: {why}'[:90])}</text>"
                    )
                    y += _ROW_H
                    continue
                native = results.native_of(run)
                reference = native.find(section, direction) if native else None
                value = format_count(figures.iops)
                if run.path != NATIVE and reference is not None and reference.iops:
                    value += f"  ({format_ratio(figures.iops / reference.iops)})"
                colour = colours[run.path]
                body += _bar(label_w, y, figures.iops, iops_scale, colour, run.filesystem, value)
                body += _bar(
                    latency_x,
                    y,
                    figures.p99_ns,
                    p99_scale,
                    colour,
                    run.filesystem,
                    latency_text(figures.p99_ns),
                )
                y += _ROW_H
            y += 14
    body += _legend(results, colours, y + 4)
    height = math.ceil(y + 28)
    style = (
        "<style>text{font-family:sans-serif;font-size:11px;fill:#222}"
        ".t{font-size:13px;font-weight:bold}.h{fill:#666}.l{text-anchor:end}</style>"
    )
    patterns = "".join(
        _PATTERNS[fs] for fs in dict.fromkeys(r.filesystem for r in results.runs) if fs in _PATTERNS
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
        f"<title>iofs {_esc(results.kind)}: IOPS and p99 latency per job</title>"
        f"<defs>{patterns}</defs>{style}"
        '<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n"
    )


def _legend(results: Results, colours: Mapping[str, str], y: float) -> list[str]:
    """One swatch per path, then one per image filesystem (grey with its pattern)."""
    parts: list[str] = []
    x = 4.0
    entries = [(path, colours[path], "dir") for path in dict.fromkeys(r.path for r in results.runs)]
    entries += [
        (f"{FILESYSTEM_LABELS[fs]}", "#999999", fs)
        for fs in dict.fromkeys(r.filesystem for r in results.runs)
        if fs in _PATTERNS
    ]
    for name, colour, filesystem in entries:
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="12" fill="{colour}"/>')
        if filesystem in _PATTERNS:
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="12" '
                f'fill="url(#fs-{filesystem})"/>'
            )
        parts.append(f'<text x="{x + 16:.1f}" y="{y + 10:.1f}" class="v">{_esc(name)}</text>')
        x += 28 + _CHAR_W * len(name)
    return parts


def html_page(results: Results, findings: Sequence[str] = (), summary: str = "") -> str:
    """A self-contained HTML page: findings, the chart (inline SVG), the summary text
    (as printed) and the environment. No scripts, no external resources."""
    env_rows = "".join(
        f"<tr><th>{_esc(str(key))}</th><td>{_esc(_flat(value))}</td></tr>"
        for key, value in results.environment.items()
    )
    intents = "".join(
        f"<dt>{_esc(name)}</dt><dd>{_esc(intent)}</dd>"
        for name, intent in results.jobs.items()
        if any(run.job == name for run in results.runs)
    )
    finding_items = "".join(f"<li>{_esc(finding)}</li>" for finding in findings)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>iofs {_esc(results.kind)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
        "pre{font-size:12px;overflow-x:auto;background:#f6f6f6;padding:1em}"
        "th{text-align:left;padding-right:1em;vertical-align:top}td{font-family:monospace}"
        "dt{font-weight:bold}</style></head><body>",
        f"<h1>iofs {_esc(results.kind)}</h1>",
    ]
    if finding_items:
        parts.append(f"<h2>Findings</h2><ul>{finding_items}</ul>")
    parts.append("<h2>IOPS and p99 latency</h2>")
    parts.append(chart_svg(results))
    if summary:
        parts.append(f"<h2>Summary</h2><pre>{_esc(summary)}</pre>")
    parts.append(f"<h2>Jobs</h2><dl>{intents}</dl>")
    parts.append(f"<h2>Environment</h2><table>{env_rows}</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _flat(value: object) -> str:
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_flat(v) for v in value)
    return str(value)
