"""The ordered metadata queue of the ``btrfs`` mode.

Metadata updates are sent to one task that applies them one at a time, in the order
they arrived, while everything else (lookups, getattr, reads) goes on being served by
the other request tasks. The requester waits for its update's outcome.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


@dataclass(eq=False)
class _Job(Generic[T]):
    run: Callable[[], Awaitable[T]]
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome[T] | None = None


class MetadataQueue:
    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[_Job[object]](math.inf)
        self.served = 0
        self.depth = 0
        self.max_depth = 0

    async def run(self, update: Callable[[], Awaitable[T]]) -> T:
        """Queue *update*; return (or raise) what it did once the queue has run it.

        A queued update always runs, even if the requester is cancelled meanwhile:
        the wait is shielded, like an I/O the kernel already owns.
        """
        job = _Job(update)
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self._send.send_nowait(job)  # type: ignore[arg-type]
        with trio.CancelScope(shield=True):
            await job.done.wait()
        assert job.result is not None
        return job.result.unwrap()

    async def serve(self) -> None:
        """Apply queued updates forever, one at a time (run in the daemon's nursery)."""
        async for job in self._receive:
            job.result = await outcome.acapture(job.run)
            self.depth -= 1
            self.served += 1
            job.done.set()

    def statistics(self) -> dict[str, int]:
        return {"served": self.served, "depth": self.depth, "max_depth": self.max_depth}
