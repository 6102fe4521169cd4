"""The thread-pool engine: each call runs on a worker thread, its completion comes back
to the event loop as an event (libuv's and PostgreSQL's ``worker`` style).

The loop never blocks on the disk, at the price of a hand-off to a thread and back for
every request (~100 µs here), which dominates small cached reads. At most
``config.workers`` calls run at once; further requests queue for a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import trio

from .base import Buffer, Capability, Engine, EngineConfig, sync_file

T = TypeVar("T")


class ThreadsEngine(Engine):
    name = "threads"
    capabilities = Capability.THREADED
    summary = "each call on a worker thread, completions back to the loop as events"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._limiter = trio.CapacityLimiter(self.config.workers)
        self._queued = 0
        self._max_queued = 0

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """Run *call* on a worker. Cancellation waits for the call (never abandons it)."""
        self._queued += 1
        self._max_queued = max(self._max_queued, self._queued)
        try:
            self._submitted()
            result = await trio.to_thread.run_sync(call, limiter=self._limiter)
        finally:
            self._queued -= 1
        self._completed()
        return result

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        return await self._in_thread(lambda: os.pread(fd, size, offset))

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        return await self._in_thread(lambda: os.preadv(fd, [buffer], offset))

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        return await self._in_thread(lambda: os.pwrite(fd, data, offset))

    async def _fsync(self, fd: int, datasync: bool) -> None:
        await self._in_thread(lambda: sync_file(fd, datasync))

    def _extra_statistics(self) -> dict[str, int]:
        return {
            "workers": self.config.workers,
            "workers_busy": self._limiter.borrowed_tokens,
            "max_queued": self._max_queued,
        }
