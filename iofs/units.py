"""Figures in human units, for every table and chart iofs prints: durations in the unit
that keeps three significant digits (ns, µs, ms, s), sizes in binary units (KiB, MiB,
GiB), rates, uptimes and wall-clock times. Plain text, no rich markup.
"""

from __future__ import annotations

import time


def significant(value: float) -> str:
    """Three significant digits for a value in [1, 1000) (9.996 is "10.0", not "10.00")."""
    if value < 9.995:
        return f"{value:.2f}"
    if value < 99.95:
        return f"{value:.1f}"
    return f"{value:.0f}"


def format_ns(ns: float) -> str:
    """A duration in nanoseconds, in the unit that keeps it between 1 and 1000."""
    if ns < 1_000:
        return f"{ns:.0f}ns"
    for unit, scale in (("µs", 1e3), ("ms", 1e6)):
        if ns < scale * 999.5:  # 999.7 µs is "1.00ms", not "1000µs"
            return significant(ns / scale) + unit
    return significant(ns / 1e9) + "s" if ns < 999.5e9 else f"{ns / 1e9:,.0f}s"


def format_bytes(count: float) -> str:
    """A byte count in binary units: ``512 B``, ``4.00 KiB``, ``1.50 GiB``."""
    if count < 1024:
        return f"{count:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 999.5:
            return f"{significant(count)} {unit}"
    return f"{count / 1024:,.1f} PiB"


def format_duration(seconds: float) -> str:
    """An uptime: ``42.0s``, ``12:03`` (minutes), ``1:02:03``, ``3d 01:02:03``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02}:{secs:02}" if hours or days else f"{minutes}:{secs:02}"
    return f"{days}d {clock}" if days else clock


def format_rate(per_second: float) -> str:
    """A rate: whole numbers with thousands separators, one decimal below 10."""
    return f"{per_second:.1f}" if 0 < per_second < 10 else f"{per_second:,.0f}"


def format_clock(at: float, *, date: bool = False) -> str:
    """A wall-clock time (Unix seconds) in local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(at))


def format_count(value: float) -> str:
    """A rate or count in three significant digits: ``950``, ``12.3k``, ``1.20M``."""
    if value < 999.5:
        return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"
    for unit, scale in (("k", 1e3), ("M", 1e6)):
        if value / scale < 999.5:
            return significant(value / scale) + unit
    return f"{value / 1e9:,.1f}G"


def format_ratio(value: float) -> str:
    """A ratio: ``0.87x``, ``12.3x``."""
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"
