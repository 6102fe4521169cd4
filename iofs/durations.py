"""One syntax for every time the command line asks for: ``1ms``, ``20ms``, ``2s``,
``10m``, ``1h``, ``1m30s``, ``500us`` (or ``500µs``, ``ns``), or plain seconds (``1.5``)."""

from __future__ import annotations

import re

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_TERM = r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)?"
_DURATION = re.compile(rf"(?:{_TERM})+")


def parse_duration(text: str, allow_zero: bool = False) -> float:
    """*text* in seconds; ValueError with a one-line reason if it is not a duration.

    A number without a unit is seconds, and only the last term may lack one
    (``1m30`` is 90 s).
    """
    compact = text.strip().lower()
    terms = re.findall(_TERM, compact) if _DURATION.fullmatch(compact) else []
    if not terms or any(not unit for _, unit in terms[:-1]):
        raise ValueError(f"not a duration: {text!r} (e.g. 20ms, 2s, 10m, 1h, or seconds)")
    value = sum(float(number) * _UNITS[unit or "s"] for number, unit in terms)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be more than 0: {text!r}")
    return value
