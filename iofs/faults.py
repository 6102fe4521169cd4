"""Fault injection: make chosen data operations fail or wait, like dm-flakey and dm-delay.

A *fault spec* says which data operations (read, write, fsync) are affected and how:

    off | OPTION[,OPTION...]

    eio=FRACTION         fail this fraction of the matching operations (0 < F <= 1, or P%)
    every=N              fail every Nth matching operation instead (deterministic)
    errno=NAME           the error they fail with (default EIO; e.g. ENOSPC, EROFS)
    delay=TIME[:FRACTION]  delay matching operations (all, or this fraction) by TIME
                         (ns, us, ms or s; at most 60 s)
    ops=OP[+OP...]       which operations match: read, write, fsync (default all three;
                         fsync covers fdatasync too)
    range=START-[END]    only reads and writes touching bytes [START, END) of a file
                         (K, M, G, T: binary multiples); fsync has no range and matches
    seed=N               seed of the random choices (default: a fresh one, reported)

`parse_faults` is the one place that reads this text, and `FaultSpec.text` the one that
writes it; ``parse_faults(spec.text) == spec``. Anything that does not parse raises
`BadFaults` with one line saying why.

The `FaultInjector` lives on the filesystem, in front of whatever engine is current, so
a mode switch keeps it. It decides before the engine is called: a failed write has
written nothing, a delay is a `trio.sleep` (the event loop goes on serving others).
"""

from __future__ import annotations

import errno
import math
import os
import random
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

#: The data operations faults apply to, in the order specs and reports list them.
OPERATIONS = ("read", "write", "fsync")
ALL_OPERATIONS = frozenset(OPERATIONS)

#: The longest delay a spec may ask for: longer would look like a hung mount.
MAX_DELAY_NS = 60 * 10**9
#: A longer spec is garbage, not a spec (the control xattr refuses it with EINVAL).
MAX_SPEC = 300
#: Seeds are unsigned 64-bit numbers.
_SEED_LIMIT = 1 << 64
#: Largest byte offset a range may name (off_t).
_OFFSET_LIMIT = 1 << 63

_TIME_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9}
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_SIZE = re.compile(r"([0-9]+)([KMGT]?)", re.IGNORECASE)
_OPTIONS = ("eio", "every", "errno", "delay", "ops", "range", "seed")
#: ENOSYS tells the kernel the operation is not implemented: it stops sending fsync
#: and reports success from then on, which is not a fault but a silent change.
_REFUSED_ERRNOS = {errno.ENOSYS: "the kernel takes ENOSYS as 'not implemented'"}


class BadFaults(ValueError):
    """A fault spec that does not parse or is inconsistent (one line)."""


@dataclass(frozen=True)
class FaultSpec:
    """What to inject; the default is ``off``. See the module docstring for the grammar."""

    #: Fraction of matching operations that fail (0: none); excludes *every*.
    fraction: float = 0.0
    #: Every Nth matching operation fails (0: none); excludes *fraction*.
    every: int = 0
    #: The errno failed operations get.
    error: int = errno.EIO
    #: Added latency of delayed operations, in nanoseconds (0: none).
    delay_ns: int = 0
    #: Fraction of matching operations that are delayed.
    delay_fraction: float = 1.0
    ops: frozenset[str] = ALL_OPERATIONS
    #: Reads and writes match only if they touch bytes [start, end) (end None: no end).
    start: int = 0
    end: int | None = None
    #: Seed of the random choices; None: a fresh one each time the spec is set.
    seed: int | None = None

    @property
    def fails(self) -> bool:
        return bool(self.fraction or self.every)

    @property
    def random(self) -> bool:
        """Whether the spec makes random choices (a fraction of errors or of delays)."""
        return bool(self.fraction) or (bool(self.delay_ns) and self.delay_fraction < 1)

    @property
    def active(self) -> bool:
        """Whether the spec does anything (``off`` does not)."""
        return self.fails or bool(self.delay_ns)

    @property
    def text(self) -> str:
        """The canonical text of the spec, which `parse_faults` reads back unchanged."""
        if not self.active:
            return "off"
        parts = []
        if self.fraction:
            parts.append(f"eio={self.fraction!r}")
        if self.every:
            parts.append(f"every={self.every}")
        if self.error != errno.EIO:
            parts.append(f"errno={errno.errorcode[self.error]}")
        if self.delay_ns:
            share = "" if self.delay_fraction == 1 else f":{self.delay_fraction!r}"
            parts.append(f"delay={format_time(self.delay_ns)}{share}")
        if self.ops != ALL_OPERATIONS:
            parts.append("ops=" + "+".join(op for op in OPERATIONS if op in self.ops))
        if self.start or self.end is not None:
            end = "" if self.end is None else format_size(self.end)
            parts.append(f"range={format_size(self.start)}-{end}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)

    def touches(self, offset: int, size: int) -> bool:
        """Whether a read or write of *size* bytes at *offset* touches the spec's range."""
        return (self.end is None or offset < self.end) and offset + max(size, 1) > self.start

    def describe(self) -> str:
        """The spec in words, e.g. ``every 4th read fails with EIO``."""
        if not self.active:
            return "off: no faults are injected"
        ops = [op for op in OPERATIONS if op in self.ops]
        every = _listed(ops, "and") if len(ops) == 1 or self.every == 1 else _listed(ops, "or")
        plural = _listed([op + "s" for op in ops], "and")
        error = errno.errorcode[self.error]
        sentences = []
        if self.every:
            nth = "" if self.every == 1 else f"{_ordinal(self.every)} "
            sentences.append(f"every {nth}{every} fails with {error}")
        elif self.fraction:
            sentences.append(f"{_percent(self.fraction)} of {plural} fail with {error}")
        if self.delay_ns:
            share = "all" if self.delay_fraction == 1 else f"{_percent(self.delay_fraction)} of"
            sentences.append(f"{share} {plural} wait {format_time(self.delay_ns)} first")
        if self.start or self.end is not None:
            end = "the end" if self.end is None else format_size(self.end)
            sentences.append(
                f"only reads and writes touching bytes {format_size(self.start)} to {end}"
            )
        return "; ".join(sentences)


OFF = FaultSpec()


def _listed(words: list[str], conjunction: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.6g}%"


def format_time(ns: int) -> str:
    """Nanoseconds in the largest unit that keeps the number whole: ``20ms``, ``1500us``."""
    for unit in ("s", "ms", "us"):
        scale = _TIME_UNITS[unit]
        if ns % scale == 0:
            return f"{ns // scale}{unit}"
    return f"{ns}ns"


def format_size(count: int) -> str:
    """Bytes in the largest binary unit that keeps the number whole: ``4K``, ``1536``."""
    for unit in ("T", "G", "M", "K"):
        scale = _SIZE_UNITS[unit]
        if count and count % scale == 0:
            return f"{count // scale}{unit}"
    return str(count)


# -- parsing ---------------------------------------------------------------------------
def parse_faults(text: str) -> FaultSpec:
    """Read a fault spec (see the module docstring); `BadFaults` says what is wrong."""
    if len(text) > MAX_SPEC:
        raise BadFaults(f"a fault spec is at most {MAX_SPEC} characters")
    text = text.strip()
    if text.lower() == "off":
        return OFF
    if not text:
        raise BadFaults("empty fault spec (use 'off' to turn faults off)")
    values: dict[str, str] = {}
    for option in (part.strip() for part in text.split(",")):
        key, sep, value = option.partition("=")
        key = key.strip().lower()
        if not sep or key not in _OPTIONS:
            raise BadFaults(f"bad fault option {option!r} (expected {'=, '.join(_OPTIONS)}=)")
        if key in values:
            raise BadFaults(f"{key}= given twice")
        values[key] = value.strip()
    fraction = _fraction("eio=", values["eio"]) if "eio" in values else 0.0
    every = _whole("every", values["every"], 1, 1 << 63) if "every" in values else 0
    if fraction and every:
        raise BadFaults("eio= and every= exclude each other (choose a fraction or a pattern)")
    delay_ns, delay_fraction = _delay(values["delay"]) if "delay" in values else (0, 1.0)
    if not (fraction or every or delay_ns):
        raise BadFaults("a fault spec needs eio=, every= or delay= (or is 'off')")
    error = errno.EIO
    if "errno" in values:
        if not (fraction or every):
            raise BadFaults("errno= needs eio= or every= (which operations fail)")
        error = _errno(values["errno"])
    ops = _ops(values["ops"]) if "ops" in values else ALL_OPERATIONS
    start, end = _range(values["range"]) if "range" in values else (0, None)
    if (start or end is not None) and not ops & {"read", "write"}:
        raise BadFaults("range= selects reads and writes, but ops= has neither")
    seed = _whole("seed", values["seed"], 0, _SEED_LIMIT - 1) if "seed" in values else None
    return FaultSpec(
        fraction=fraction,
        every=every,
        error=error,
        delay_ns=delay_ns,
        delay_fraction=delay_fraction,
        ops=ops,
        start=start,
        end=end,
        seed=seed,
    )


def _fraction(label: str, text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise BadFaults(f"{label} needs a fraction like 0.05 or 5%, not {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise BadFaults(f"{label} must be more than 0 and at most 1 (100%), not {text!r}")
    return value


def _whole(key: str, text: str, lowest: int, highest: int) -> int:
    if not text.isdecimal() or not text.isascii():
        raise BadFaults(f"{key}= needs a whole number, not {text!r}")
    value = int(text)
    if not lowest <= value <= highest:
        raise BadFaults(f"{key}= must be within {lowest}..{highest}, not {value}")
    return value


def _delay(text: str) -> tuple[int, float]:
    time_text, sep, share = text.partition(":")
    fraction = _fraction("the delayed fraction (delay=TIME:F)", share) if sep else 1.0
    number = _NUMBER.match(time_text)
    unit = time_text[number.end() :] if number else ""
    if number is None or unit not in _TIME_UNITS:
        raise BadFaults(f"delay= needs a time like 20ms (ns, us, ms or s), not {time_text!r}")
    whole, _, decimals = number.group().partition(".")
    scale = _TIME_UNITS[unit]
    ns = int(whole) * scale + (int(decimals) * scale // 10 ** len(decimals) if decimals else 0)
    if not 0 < ns <= MAX_DELAY_NS:
        raise BadFaults(f"delay= must be more than 0 and at most 60s, not {time_text!r}")
    return ns, fraction


def _errno(text: str) -> int:
    name = text.upper()
    value: object = None
    if name.isascii() and name.isdecimal():
        value = int(name)
    elif name.startswith("E") and name.isidentifier():
        value = getattr(errno, name, None)
    if not isinstance(value, int) or value not in errno.errorcode:
        raise BadFaults(f"errno= needs an error name like EIO or ENOSPC, not {text!r}")
    if value in _REFUSED_ERRNOS:
        raise BadFaults(f"errno={errno.errorcode[value]} is refused: {_REFUSED_ERRNOS[value]}")
    return value


def _ops(text: str) -> frozenset[str]:
    names = [name.strip().lower() for name in text.split("+")]
    unknown = [name for name in names if name not in ALL_OPERATIONS]
    if unknown or not names:
        raise BadFaults(f"ops= takes {'+'.join(OPERATIONS)} joined by '+', not {text!r}")
    return frozenset(names)


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise BadFaults(f"range= needs byte offsets like 4096 or 1M, not {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _range(text: str) -> tuple[int, int | None]:
    start_text, sep, end_text = text.partition("-")
    if not sep:
        raise BadFaults(f"range= needs START-END or START- (e.g. 0-4K), not {text!r}")
    start = _size(start_text) if start_text else 0
    end = _size(end_text) if end_text else None
    if start >= _OFFSET_LIMIT or (end is not None and end > _OFFSET_LIMIT):
        raise BadFaults(f"range= reaches past the largest file offset: {text!r}")
    if end is not None and end <= start:
        raise BadFaults(f"range= must end after it starts: {text!r}")
    return start, end


# -- injecting ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultCounters:
    """What fault injection did to one operation since the mount started."""

    #: Operations the spec's ops= and range= selected.
    matched: int = 0
    #: Of those, failed on purpose, and delayed on purpose.
    errors: int = 0
    delays: int = 0
    #: Latency added by the delays, in nanoseconds.
    delay_ns: int = 0


@dataclass(frozen=True)
class FaultStatistics:
    """A snapshot of fault injection: the current spec and counters per operation."""

    #: The spec in force (``off`` if none), and the seed of its random choices (None if
    #: it makes none).
    spec: str
    seed: int | None
    operations: Mapping[str, FaultCounters] = field(default_factory=dict)


class _Counting:
    __slots__ = ("delay_ns", "delays", "errors", "matched")

    def __init__(self) -> None:
        self.matched = self.errors = self.delays = self.delay_ns = 0


class FaultInjector:
    """Applies a `FaultSpec` to the data operations the filesystem is about to run.

    The filesystem calls `inject` before it hands an operation to the engine, only while
    `armed` (so ``off`` costs one attribute test per operation). Counters accumulate for
    the mount's life; the every= pattern and the random choices restart with each `set`.
    """

    def __init__(self, spec: FaultSpec = OFF) -> None:
        self._counters = {op: _Counting() for op in OPERATIONS}
        #: Whether any spec other than ``off`` was ever set (statistics show faults then).
        self.ever_armed = False
        self.set(spec)

    def set(self, spec: FaultSpec) -> None:
        """Inject *spec* from now on (`OFF` stops injecting)."""
        self.spec = spec
        #: The seed in use: the spec's, or a fresh one (reported, to repeat a run).
        self.seed = spec.seed if spec.seed is not None else secrets.randbits(32)
        self._random = random.Random(self.seed)
        self._serial = 0  # matching operations since the spec was set (for every=)
        self.armed = spec.active
        self.ever_armed = self.ever_armed or self.armed

    async def inject(self, op: str, offset: int = 0, size: int | None = None) -> None:
        """Before *op* (read or write of *size* bytes at *offset*; fsync: no size).

        Sleeps if the spec delays this operation, then raises `OSError` with the spec's
        errno if it fails it. Both are decided before the sleep, so a spec set meanwhile
        applies from the next operation on.
        """
        spec = self.spec
        if op not in spec.ops or (size is not None and not spec.touches(offset, size)):
            return
        counters = self._counters[op]
        counters.matched += 1
        self._serial += 1
        choose = self._random.random
        delay = spec.delay_ns if spec.delay_fraction >= 1 or choose() < spec.delay_fraction else 0
        if spec.every:
            fail = self._serial % spec.every == 0
        else:
            fail = bool(spec.fraction) and choose() < spec.fraction
        if delay:
            counters.delays += 1
            counters.delay_ns += delay
            await trio.sleep(delay / 1e9)
        if fail:
            counters.errors += 1
            raise OSError(spec.error, os.strerror(spec.error))

    def statistics(self) -> FaultStatistics:
        return FaultStatistics(
            spec=self.spec.text,
            seed=self.seed if self.spec.random else None,
            operations={
                op: FaultCounters(c.matched, c.errors, c.delays, c.delay_ns)
                for op, c in self._counters.items()
            },
        )
