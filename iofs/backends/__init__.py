"""I/O engines, registered by name in one place.

Adding an engine is adding one module and one line to `ENGINES`.
"""

from __future__ import annotations

from .base import Capability, Engine, EngineStatistics, EngineUnavailable
from .blocking import BlockingEngine

ENGINES: dict[str, type[Engine]] = {
    BlockingEngine.name: BlockingEngine,
}

DEFAULT_ENGINE = BlockingEngine.name


def create_engine(name: str) -> Engine:
    """Instantiate the engine registered as *name*.

    Raises `EngineUnavailable` with a one-line reason if the name is unknown or the
    engine cannot run on this machine.
    """
    try:
        cls = ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise EngineUnavailable(f"unknown engine {name!r} (known: {known})") from None
    reason = cls.probe()
    if reason is not None:
        raise EngineUnavailable(f"engine {name!r} cannot run here: {reason}")
    return cls()


__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "Capability",
    "Engine",
    "EngineStatistics",
    "EngineUnavailable",
    "create_engine",
]
