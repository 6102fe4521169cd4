"""A schedule of mode settings for ``iofs switch``: ``SETTING:DURATION ...``.

Each phase is a mode setting as ``iofs mode`` takes it (``NAME[,engine=E][,direct=on|off]
[,cache=kernel|none]``) and how long it serves, e.g. ``blocking:10s`` or
``btrfs,engine=aio:2.5s``. Durations are ``500ms``, ``10s``, ``1m``, ``1m30s`` or plain
seconds, as everywhere in the command line. The first phase is the mode the mount starts
in; each later one is a live switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import durations
from .modes import BadSetting, Setting, parse_setting

#: The shortest phase: the statistics are sampled every 200 ms.
MIN_PHASE = 0.5


class BadSchedule(ValueError):
    """A schedule that does not parse; the message says which part and why."""


@dataclass(frozen=True)
class Phase:
    """One mode setting and how long it serves, in seconds."""

    setting: Setting
    seconds: float

    @property
    def spec(self) -> str:
        """``SETTING:SECONDSs``, the form `parse_schedule` reads (to the millisecond)."""
        return f"{self.setting.spec}:{seconds_text(self.seconds)}s"


def seconds_text(seconds: float) -> str:
    """*seconds* to the millisecond, without trailing zeros: ``2``, ``0.75``, ``1000.001``."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def parse_duration(text: str) -> float:
    """A duration as every command line option takes it (`iofs.durations`: ``500ms``,
    ``10s``, ``1m``, ``1m30s``, ``2.5``...) -> seconds; BadSchedule if not."""
    try:
        return durations.parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise BadSchedule(str(exc)) from None


def parse_phase(text: str) -> Phase:
    """``SETTING:DURATION`` -> a `Phase`."""
    setting_text, colon, duration_text = text.rpartition(":")
    if not colon or not setting_text:
        raise BadSchedule(f"{text!r}: expected SETTING:DURATION, e.g. xfs:10s")
    try:
        setting = parse_setting(setting_text)
    except BadSetting as exc:
        raise BadSchedule(f"{text!r}: {exc}") from None
    seconds = parse_duration(duration_text)
    if seconds < MIN_PHASE:
        raise BadSchedule(f"{text!r}: a phase lasts at least {MIN_PHASE:g}s")
    return Phase(setting, seconds)


def parse_schedule(parts: Sequence[str]) -> tuple[Phase, ...]:
    """The phases, in order; each part one ``SETTING:DURATION`` (or several, spaced)."""
    phases = tuple(parse_phase(word) for part in parts for word in part.split())
    if not phases:
        raise BadSchedule("an empty schedule: give at least one SETTING:DURATION")
    return phases


def boundaries(phases: Sequence[Phase]) -> list[float]:
    """Seconds from the start at which each phase begins, and the end: n + 1 values."""
    times = [0.0]
    for phase in phases:
        times.append(times[-1] + phase.seconds)
    return times
