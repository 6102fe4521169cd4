"""I/O engines, registered by name in one place.

Adding an engine is adding one module and one line to `ENGINES`. The package holds
three kinds of module, named for what they are:

- the engines, one a module named after the engine: ``blocking.py``, ``threads.py``,
  ``nowait.py``, ``aio.py``, ``io_uring.py``; and what they are written against,
  ``base.py`` (`Engine`, `EngineConfig`, `Capability`, `EngineStatistics`, O_DIRECT
  twins);
- the core the kernel-async engines share, ``completion.py`` (slots, batching, the
  reaper, short reads; aio and io_uring supply only prepare, commit and get-events);
- what engines use but is no engine: ``iouring_abi.py`` (the io_uring ring's system
  calls and memory layout, also used by the FUSE-over-io_uring transport),
  ``addresses.py`` (buffer addresses handed to the kernel), ``seccomp.py`` (whether a
  filter explains a refused system call, for a probe's reason).

Every engine's ``probe()`` says why it cannot run here (None: it can); `probe` below
remembers one that passed.
"""

from __future__ import annotations

from collections.abc import Collection

from .aio import AioEngine
from .base import (
    DIRECT_ALIGN,
    Buffer,
    Capability,
    Engine,
    EngineConfig,
    EngineStatistics,
    EngineUnavailable,
    running,
)
from .blocking import BlockingEngine
from .io_uring import IoUringEngine
from .nowait import NowaitEngine
from .threads import ThreadsEngine

ENGINES: dict[str, type[Engine]] = {
    BlockingEngine.name: BlockingEngine,
    ThreadsEngine.name: ThreadsEngine,
    NowaitEngine.name: NowaitEngine,
    AioEngine.name: AioEngine,
    IoUringEngine.name: IoUringEngine,
}

DEFAULT_ENGINE = BlockingEngine.name

#: Engines whose probe passed in this process. A probe checks what does not change
#: while a process runs (a library, a system call, a kernel feature) and can cost tens
#: of milliseconds on the event loop (AIO's io_setup + io_destroy waits for an RCU grace
#: period): it runs once. A refusal is probed again, and whatever depends on the
#: configuration (a queue depth beyond fs.aio-max-nr or IORING_MAX_ENTRIES) is checked
#: by the engine's constructor, for every engine made.
_PROBE_PASSED: set[type[Engine]] = set()


def probe(cls: type[Engine]) -> str | None:
    """`cls.probe()`, remembered once it passes (see `_PROBE_PASSED`)."""
    if cls in _PROBE_PASSED:
        return None
    reason = cls.probe()
    if reason is None:
        _PROBE_PASSED.add(cls)
    return reason


def forget_probes() -> None:
    """Probe every engine afresh next time (for tests that change what a probe sees)."""
    _PROBE_PASSED.clear()


def engine_class(name: str) -> type[Engine]:
    """The engine registered as *name*, checked to run on this machine.

    Raises `EngineUnavailable` with a one-line reason if the name is unknown or the
    engine cannot run here.
    """
    try:
        cls = ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise EngineUnavailable(f"unknown engine {name!r} (known: {known})") from None
    reason = probe(cls)
    if reason is not None:
        raise EngineUnavailable(f"engine {name!r} cannot run here: {reason}")
    return cls


def fallback_engine(
    name: str, failure: str | None = None, tried: Collection[str] = ()
) -> tuple[str, str] | None:
    """What to use when the engine *name* cannot run here, if the user allows a fallback.

    Returns ``(engine, reason)``: *reason* is why *name* cannot run, *engine* the
    registered engine that runs here and shares most of its capabilities, preferring
    one that keeps the event loop free (so io_uring and aio stand in for each other,
    and a thread pool for both). None if *name* runs here or nothing else does.
    *failure* is why making *name* failed although its probe passes (e.g. its queue
    depth is beyond a system limit): it stands for the probe's reason. Engines in
    *tried* (that failed the same way before) are not chosen.
    """
    wanted = ENGINES[name].capabilities
    reason = probe(ENGINES[name]) or failure
    if reason is None:
        return None

    def shared(flags: Capability) -> int:
        return bin((flags & wanted).value).count("1")

    candidates = [
        (other, cls)
        for other, cls in ENGINES.items()
        if other != name and other not in tried and probe(cls) is None
    ]
    if not candidates:
        return None
    # max() keeps the first of equals: registry order breaks ties.
    best, _ = max(
        candidates,
        key=lambda item: (
            Capability.BLOCKS_LOOP not in item[1].capabilities or Capability.BLOCKS_LOOP in wanted,
            shared(item[1].capabilities),
        ),
    )
    return best, reason


def create_engine(name: str, config: EngineConfig | None = None) -> Engine:
    """Instantiate the engine registered as *name* (see `engine_class`)."""
    return engine_class(name)(config)


__all__ = [
    "DEFAULT_ENGINE",
    "DIRECT_ALIGN",
    "ENGINES",
    "Buffer",
    "Capability",
    "Engine",
    "EngineConfig",
    "EngineStatistics",
    "EngineUnavailable",
    "create_engine",
    "engine_class",
    "fallback_engine",
    "forget_probes",
    "probe",
    "running",
]
