"""The schedule of ``iofs switch``: ``SETTING:DURATION ...``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iofs.backends import ENGINES
from iofs.modes import MODES, parse_setting
from iofs.schedule import (
    MIN_PHASE,
    BadSchedule,
    Phase,
    boundaries,
    parse_duration,
    parse_phase,
    parse_schedule,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("2.5", 2.5),
        ("0.75s", 0.75),
        ("1h", 3600.0),  # the one syntax of every time option (iofs.durations)
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "ms", "m", "10x", "-1s", "1.2.3s", "ten"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(BadSchedule, match="not a duration"):
        parse_duration(text)


def test_the_issues_schedule() -> None:
    phases = parse_schedule(["blocking:10s", "xfs:10s", "btrfs,engine=aio:10s", "nonblocking:10s"])
    assert [p.setting.spec for p in phases] == [
        "blocking",
        "xfs",
        "btrfs,engine=aio",
        "nonblocking",
    ]
    assert phases[2].setting.engine == "aio" and phases[2].setting.metadata == "queue"
    assert boundaries(phases) == [0.0, 10.0, 20.0, 30.0, 40.0]
    # One argument with the phases spaced out means the same.
    assert parse_schedule(["blocking:10s xfs:10s  btrfs,engine=aio:10s\tnonblocking:10s"]) == phases


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "empty schedule"),
        (["xfs"], "expected SETTING:DURATION"),
        ([":3s"], "expected SETTING:DURATION"),
        (["xfs:"], "not a duration"),
        (["zfs:3s"], "unknown mode 'zfs'"),
        (["xfs,engine=spdk:3s"], "unknown engine 'spdk'"),
        (["xfs,direct=maybe:3s"], "direct must be on or off"),
        (["xfs:0.2s"], f"at least {MIN_PHASE:g}s"),
    ],
)
def test_bad_schedules_say_which_part_and_why(parts: list[str], message: str) -> None:
    with pytest.raises(BadSchedule, match=message):
        parse_schedule(parts)


settings = st.builds(
    lambda mode, engine, direct, cache: ",".join(
        [mode]
        + ([f"engine={engine}"] if engine else [])
        + ([f"direct={direct}"] if direct else [])
        + ([f"cache={cache}"] if cache else [])
    ),
    st.sampled_from(sorted(MODES)),
    st.none() | st.sampled_from(sorted(ENGINES)),
    st.none() | st.sampled_from(["on", "off"]),
    st.none() | st.sampled_from(["kernel", "none"]),
)
durations = st.decimals(min_value="0.5", max_value="3600", places=3).map(float)


@given(st.lists(st.tuples(settings, durations), min_size=1, max_size=8))
def test_a_schedule_parses_to_its_phases_and_back(items: list[tuple[str, float]]) -> None:
    text = " ".join(f"{spec}:{seconds!r}s" for spec, seconds in items)
    phases = parse_schedule([text])
    assert phases == tuple(Phase(parse_setting(spec), seconds) for spec, seconds in items)
    assert parse_schedule([p.spec for p in phases]) == phases
    assert boundaries(phases)[-1] == pytest.approx(sum(seconds for _, seconds in items))


@given(st.text(max_size=40))
def test_any_text_is_a_phase_or_a_bad_schedule(text: str) -> None:
    try:
        phase = parse_phase(text)
    except BadSchedule as exc:
        assert str(exc)
    else:
        assert phase.seconds >= MIN_PHASE
