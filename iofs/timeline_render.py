"""Renderings of an ``iofs switch`` run: findings, tables, the timeline chart, a page.

Pure functions of `iofs.timeline` data, no I/O. The chart keeps ``iofs bench``'s
style (`iofs.report`): white background, 11px sans-serif, the modes' colours.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .noise import MIN_CPU_RATIO, MIN_LATENCY_RATIO, ratio_differs, samples_differ
from .report import PATH_COLOURS, SPARE_COLOURS
from .timeline import PhaseFigures, Point, SwitchCost, Timeline
from .units import format_count, format_ns, format_ratio


# -- words --------------------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else format_ns(seconds * 1e9)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _x(a: float, b: float) -> str:
    return format_ratio(a / b) if b > 0 else "-"


def comparison(before: PhaseFigures, after: PhaseFigures, interval: float) -> str:
    """One sentence: the steady state of *after* against *before*."""
    if not before.iops or not after.iops:
        short = before if not before.iops else after
        return (
            f"From {before.phase.setting.spec} to {after.phase.setting.spec}: not compared, "
            f"{short.phase.setting.spec} had no interval left after its settling time."
        )
    a, b = before.median_iops, after.median_iops
    if samples_differ(before.iops, after.iops):
        iops = f"median IOPS went from {format_count(a)} to {format_count(b)} ({_x(b, a)})"
    else:
        iops = (
            f"median IOPS were {format_count(a)} and {format_count(b)}, apart by less than "
            f"the noise of their {_ms(interval)} samples"
        )
    p99 = f"p99 latency from {format_ns(before.p99_ns)} to {format_ns(after.p99_ns)}"
    if ratio_differs(before.p99_ns, after.p99_ns, MIN_LATENCY_RATIO):
        p99 += f" ({_x(after.p99_ns, before.p99_ns)})"
    else:
        p99 += " (within noise)"
    parts = [iops, p99]
    if before.cpu_per_op is not None and after.cpu_per_op is not None:
        cpu = (
            f"daemon CPU per request from {format_ns(before.cpu_per_op * 1e9)} to "
            f"{format_ns(after.cpu_per_op * 1e9)}"
        )
        if ratio_differs(before.cpu_per_op, after.cpu_per_op, MIN_CPU_RATIO):
            cpu += f" ({_x(after.cpu_per_op, before.cpu_per_op)})"
        else:
            cpu += " (within noise)"
        parts.append(cpu)
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return (
        f"From {before.phase.setting.spec} to {after.phase.setting.spec}, in the steady "
        f"state, {listed}."
    )


def cost_sentence(cost: SwitchCost, settle: float, interval: float) -> str:
    """One sentence: what switch *cost* cost."""
    if cost.setup is None:
        daemon = "the daemon recorded no timings for it"
    elif not cost.engine_changed:
        daemon = f"it took effect in {_ms(cost.setup)}; the engine stayed, nothing drained"
    else:
        held, done = cost.in_flight_at_switch, cost.finished_on_old
        if held == 0:
            old = "the old engine held no request"
        elif done == held:
            old = f"the old engine finished the {_plural(held, 'request')} it held"
        else:
            old = f"the old engine held {_plural(held, 'request')} and finished {done}"
        closed = (
            f"was closed {_ms(cost.drain)} after the request"
            if cost.drain is not None
            else "had not closed by the end"
        )
        daemon = f"new requests went to the new engine after {_ms(cost.setup)}; {old} and {closed}"
    peak = (
        f"in the {_ms(settle)} after it, fio's worst {_ms(interval)} p99 was "
        f"{format_ns(cost.peak_p99_ns)}"
    )
    if cost.before_p99_ns and cost.peak_p99_ns:
        before = format_ns(cost.before_p99_ns)
        if not ratio_differs(cost.peak_p99_ns, cost.before_p99_ns, MIN_LATENCY_RATIO):
            peak += f", within noise of the steady p99 before the switch ({before})"
        elif cost.peak_p99_ns > cost.before_p99_ns:
            ratio = _x(cost.peak_p99_ns, cost.before_p99_ns)
            peak += f", {ratio} the steady p99 before the switch ({before})"
        else:
            peak += f", below the steady p99 before the switch ({before}): no spike"
    if cost.to_steady is None:
        steady = f"IOPS never came within 10% of {cost.mode}'s median"
    else:
        steady = f"IOPS were within 10% of {cost.mode}'s median {_ms(cost.to_steady)} after it"
    return f"Switch {cost.number} ({cost.previous} to {cost.mode}): {daemon}; {peak}; {steady}."


def verify_sentence(verify: Mapping[str, Any], switches: int) -> str:
    status = verify.get("status", "not run")
    if status == "not run":
        return f"Nothing was verified: {verify.get('reason', 'the run did not get that far')}."
    blocks, errors = int(verify.get("blocks", 0)), int(verify.get("errors", 0))
    size = int(verify.get("bytes", 0)) / 2**20
    what = (
        f"fio's crc32c verification read back {blocks:,} blocks ({size:,.0f} MiB) through "
        f"the mount after {switches} live switch{'es' if switches != 1 else ''}"
    )
    if status == "ok" and not errors:
        return f"{what} and found no errors: nothing was lost or corrupted."
    first = verify.get("first_error") or verify.get("reason", "")
    return f"{what} and found {errors:,} errors (first: {first})."


def findings(
    figures: Sequence[PhaseFigures],
    costs: Sequence[SwitchCost],
    verify: Mapping[str, Any],
    settle: float,
    interval: float,
) -> list[str]:
    """One plain sentence per finding, worded from the numbers."""
    sentences = []
    for cost in costs:
        sentences.append(comparison(figures[cost.number - 1], figures[cost.number], interval))
        sentences.append(cost_sentence(cost, settle, interval))
    sentences.append(verify_sentence(verify, len(costs)))
    return sentences


# -- tables -------------------------------------------------------------------------------------
def phase_table(figures: Sequence[PhaseFigures]) -> Table:
    table = Table(
        title="Phases (steady state: from the settling time to the next switch)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name, justify in (
        ("phase", "left"),
        ("setting", "left"),
        ("span s", "right"),
        ("steady s", "right"),
        ("median IOPS", "right"),
        ("p99", "right"),
        ("loop lag p99", "right"),
        ("in flight", "right"),
        ("CPU/op", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for number, f in enumerate(figures, start=1):
        table.add_row(
            str(number),
            f.phase.setting.spec,
            f"{f.begin:.1f}-{f.end:.1f}",
            f"{max(f.end - f.steady_begin, 0):.1f}",
            format_count(f.median_iops),
            format_ns(f.p99_ns),
            format_ns(f.loop_lag_p99_ns),
            f"{f.mean_in_flight:.1f}",
            "-" if f.cpu_per_op is None else format_ns(f.cpu_per_op * 1e9),
        )
    return table


def switch_table(costs: Sequence[SwitchCost]) -> Table:
    table = Table(
        title="Switches (serving, drained: after the daemon took the request)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("switch", no_wrap=True)
    for name in (
        "at s",
        "round trip",
        "serving",
        "drained",
        "in flight",
        "done on old",
        "p99 peak",
        "vs before",
        "to steady",
    ):
        table.add_column(name, justify="right")
    for c in costs:
        table.add_row(
            f"{c.previous} → {c.mode}",
            f"{c.at:.1f}",
            _ms(c.round_trip),
            _ms(c.setup),
            _ms(c.drain) if c.engine_changed else "same",
            str(c.in_flight_at_switch),
            str(c.finished_on_old),
            format_ns(c.peak_p99_ns),
            _x(c.peak_p99_ns, c.before_p99_ns),
            _ms(c.to_steady),
        )
    return table


def renderables(
    title: str,
    figures: Sequence[PhaseFigures],
    costs: Sequence[SwitchCost],
    sentences: Sequence[str],
) -> list[RenderableType]:
    parts: list[RenderableType] = [Text(title, style="bold"), phase_table(figures)]
    if costs:
        parts.append(switch_table(costs))
    parts.append(Text("Findings", style="bold"))
    parts.extend(Text(f"- {sentence}") for sentence in sentences)
    return parts


def summary_text(parts: Sequence[RenderableType], width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    for part in parts:
        console.print(part)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in str(text).splitlines()) + "\n"


def timeline_csv(timeline: Timeline) -> str:
    """Every per-interval series on one axis, one row per interval end (seconds since
    the start), for plotting elsewhere: fio's IOPS and p99, and the daemon's data
    requests per second, loop lag p99, mean in flight, read and write handler p99, CPU
    (% of one core) and mean engine batch."""
    columns = {
        "fio_iops": timeline.iops,
        "fio_p99_ns": timeline.p99,
        "daemon_data_ops_per_s": timeline.daemon_ops,
        "loop_lag_p99_ns": timeline.loop_lag,
        "in_flight_mean": timeline.in_flight,
        "daemon_read_p99_ns": timeline.read_p99,
        "daemon_write_p99_ns": timeline.write_p99,
        "cpu_percent": timeline.cpu,
        "engine_mean_batch": timeline.batch,
    }
    rows: dict[int, dict[str, float]] = {}
    for name, points in columns.items():
        for point in points:  # the samples are taken on fio's 200 ms grid: one row per slot
            rows.setdefault(round(point.t / timeline.interval), {})[name] = point.value
    lines = [",".join(["t_s", "mode", *columns])]
    for slot in sorted(rows):
        t = slot * timeline.interval
        index = max(i for i, b in enumerate(timeline.bounds[:-1]) if b < t or i == 0)
        values = [f"{rows[slot][name]:.6g}" if name in rows[slot] else "" for name in columns]
        lines.append(",".join([f"{t:.3f}", timeline.phases[index].setting.spec, *values]))
    return "\n".join(lines) + "\n"


# -- the chart ----------------------------------------------------------------------------------
_W = 960
_LEFT = 78
_RIGHT = 16
_PANEL_H = 100
_PANEL_GAP = 34
_TOP = 64
_CHAR_W = 6.6


def colours(specs: Sequence[str]) -> dict[str, str]:
    """A colour per setting: a mode's own (as in `iofs bench`), spare ones for the rest."""
    chosen: dict[str, str] = {}
    spare = iter(SPARE_COLOURS * 4)
    for spec in dict.fromkeys(specs):
        chosen[spec] = PATH_COLOURS.get(spec) or next(spare, "#999999")
    return chosen


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at least *value*."""
    if value <= 0:
        return 1.0
    power = float(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _linear_ticks(top: float) -> tuple[float, list[float]]:
    """The axis top and ticks at a 1, 2 or 5 step: four or five of them above 0."""
    step = _nice(max(top, 1e-9) / 4)
    count = max(math.ceil(top * 1.02 / step), 1)
    return count * step, [i * step for i in range(count + 1)]


def _log_ticks(values: Sequence[float]) -> tuple[float, float, list[float]]:
    positive = [v for v in values if v > 0]
    if not positive:
        return 1e3, 1e6, [1e3, 1e4, 1e5, 1e6]
    low = float(10 ** math.floor(math.log10(min(positive))))
    high = float(10 ** math.ceil(math.log10(max(positive) * 1.01)))
    high = max(high, low * 10)
    ticks = [float(10**e) for e in range(round(math.log10(low)), round(math.log10(high)) + 1)]
    return low, high, ticks


def _panel(
    y: float,
    title: str,
    points: Sequence[Point],
    x_of: Any,
    *,
    log: bool,
    label: Any,
) -> list[str]:
    parts = [f'<text x="{_LEFT}" y="{y - 6:.1f}" class="t2">{_esc(title)}</text>']
    bottom = y + _PANEL_H
    if log:
        low, high, ticks = _log_ticks([p.value for p in points])

        def y_of(v: float) -> float:
            v = min(max(v, low), high)
            return (
                bottom
                - (math.log10(v) - math.log10(low))
                / (math.log10(high) - math.log10(low))
                * _PANEL_H
            )

    else:
        top, ticks = _linear_ticks(max((p.value for p in points), default=1.0))

        def y_of(v: float) -> float:
            return bottom - v / top * _PANEL_H

    for tick in ticks:
        ty = y_of(tick)
        parts.append(
            f'<line x1="{_LEFT}" y1="{ty:.1f}" x2="{_W - _RIGHT}" y2="{ty:.1f}" class="g"/>'
            f'<text x="{_LEFT - 6}" y="{ty + 4:.1f}" class="l">{_esc(label(tick))}</text>'
        )
    parts.append(
        f'<rect x="{_LEFT}" y="{y:.1f}" width="{_W - _LEFT - _RIGHT}" height="{_PANEL_H}" '
        'fill="none" stroke="#bbb"/>'
    )
    if points:
        path = " ".join(f"{x_of(p.t):.1f},{y_of(p.value):.1f}" for p in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#222" stroke-width="1.4"/>')
    else:
        parts.append(f'<text x="{_LEFT + 8}" y="{y + _PANEL_H / 2:.1f}" class="h">no data</text>')
    return parts


def timeline_svg(
    timeline: Timeline, costs: Sequence[SwitchCost], title: str = "iofs switch"
) -> str:
    """The stacked timeline: IOPS, p99, loop lag and in-flight depth over time, each
    mode's span shaded and labelled, its settling window greyed, switches marked."""
    duration = max(timeline.bounds[-1], timeline.interval)
    plot_w = _W - _LEFT - _RIGHT

    def x_of(t: float) -> float:
        return _LEFT + min(max(t, 0.0), duration) / duration * plot_w

    specs = [phase.setting.spec for phase in timeline.phases]
    palette = colours(specs)
    panels = [
        ("IOPS (fio, per interval)", timeline.iops, False, format_count),
        ("p99 completion latency (fio, per interval, log scale)", timeline.p99, True, format_ns),
        ("loop lag p99 (daemon, per interval, log scale)", timeline.loop_lag, True, format_ns),
        (
            "data requests in flight in the daemon (mean per interval)",
            timeline.in_flight,
            False,
            lambda v: f"{v:g}",
        ),
    ]
    height = _TOP + len(panels) * (_PANEL_H + _PANEL_GAP) + 8
    body: list[str] = [f'<text x="4" y="18" class="t">{_esc(title)}</text>']
    first_y = _TOP
    last_y = _TOP + (len(panels) - 1) * (_PANEL_H + _PANEL_GAP) + _PANEL_H
    # Mode spans and settling windows, under everything else.
    for index, spec in enumerate(specs):
        begin, end = timeline.bounds[index], timeline.bounds[index + 1]
        x0, x1 = x_of(begin), x_of(end)
        settle_x = x_of(min(begin + timeline.settle, end))
        for p in range(len(panels)):
            top = _TOP + p * (_PANEL_H + _PANEL_GAP)
            body.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0):.1f}" '
                f'height="{_PANEL_H}" fill="{palette[spec]}" fill-opacity="0.13"/>'
                f'<rect x="{x0:.1f}" y="{top}" width="{max(settle_x - x0, 0):.1f}" '
                f'height="{_PANEL_H}" fill="url(#settle)"/>'
            )
        name = spec if _CHAR_W * len(spec) < x1 - x0 else spec.split(",")[0]
        body.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{first_y - 24:.1f}" class="m" '
            f'fill="{palette[spec]}">{_esc(name)}</text>'
        )
    for p, (name, points, log, label) in enumerate(panels):
        y = _TOP + p * (_PANEL_H + _PANEL_GAP)
        body += _panel(y, name, points, x_of, log=log, label=label)
    # Switch instants.
    for cost in costs:
        x = x_of(cost.at)
        drained = _ms(cost.drain) if cost.engine_changed else "same engine"
        body.append(
            f'<line x1="{x:.1f}" y1="{first_y - 20:.1f}" x2="{x:.1f}" y2="{last_y:.1f}" '
            f'class="s"><title>switch {cost.number}: {_esc(cost.previous)} → '
            f"{_esc(cost.mode)} at {cost.at:.2f} s; old engine drained in {drained}, "
            f"{cost.finished_on_old} requests finished on it</title></line>"
        )
    # The time axis.
    step = _nice(duration / 10)
    tick = 0.0
    axis_y = last_y + 14
    while tick <= duration + 1e-9:
        body.append(f'<text x="{x_of(tick):.1f}" y="{axis_y:.1f}" class="c">{tick:g}</text>')
        tick += step
    body.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{axis_y + 14:.1f}" class="c h">seconds since '
        "fio's first request · shaded: the mode serving · grey hatching: settling window "
        "left out of the phase table · dashed: switch requested</text>"
    )
    style = (
        "<style>text{font-family:sans-serif;font-size:11px;fill:#222}"
        ".t{font-size:13px;font-weight:bold}.t2{font-weight:bold}.h{fill:#666}"
        ".l{text-anchor:end}.c{text-anchor:middle}.m{text-anchor:middle;font-weight:bold}"
        ".g{stroke:#e4e4e4}.s{stroke:#222;stroke-dasharray:4 3;stroke-width:1.2}</style>"
    )
    settle = (
        '<pattern id="settle" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="2" height="6" fill="#888" '
        'fill-opacity="0.35"/></pattern>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" role="img">'
        f"<title>{_esc(title)}: IOPS, p99 latency, loop lag and in-flight depth over time"
        f"</title><defs>{settle}</defs>{style}"
        '<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n"
    )


def html_page(
    title: str,
    svg: str,
    sentences: Sequence[str],
    summary: str,
    intent: str,
    environment: Mapping[str, Any],
) -> str:
    """A self-contained page: findings, the chart, the tables as printed, the job and
    the environment. No scripts, no external resources."""
    env_rows = "".join(
        f"<tr><th>{_esc(str(key))}</th><td>{_esc(str(value))}</td></tr>"
        for key, value in environment.items()
    )
    items = "".join(f"<li>{_esc(sentence)}</li>" for sentence in sentences)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_esc(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
            "pre{font-size:12px;overflow-x:auto;background:#f6f6f6;padding:1em}"
            "th{text-align:left;padding-right:1em;vertical-align:top}"
            "td{font-family:monospace}</style></head><body>",
            f"<h1>{_esc(title)}</h1>",
            f"<h2>Findings</h2><ul>{items}</ul>",
            "<h2>Timeline</h2>",
            svg,
            f"<h2>Phases and switches</h2><pre>{_esc(summary)}</pre>",
            f"<h2>Job</h2><p>{_esc(intent)}</p>",
            f"<h2>Environment</h2><table>{env_rows}</table>",
            "</body></html>\n",
        ]
    )
