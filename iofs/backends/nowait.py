"""The non-blocking engine: try ``preadv2/pwritev2(RWF_NOWAIT)`` inline, fall back to a
worker thread when the kernel says the call would block (ClickHouse's
``pread_threadpool``).

RWF_NOWAIT succeeds when the data is already in the page cache, so hot reads cost one
system call on the loop thread and cold ones pay for the thread hand-off only when they
must. A short result means part of the range was cached: the rest goes to the thread.
Where the file system does not support RWF_NOWAIT for an operation (buffered writes on
ext4 answer EOPNOTSUPP), the call goes to the thread too. O_DIRECT reads ignore the
flag on most file systems and block inline. fsync always runs on a worker.
"""

from __future__ import annotations

import errno
import os

from .base import Buffer, Capability, EngineConfig
from .threads import ThreadsEngine

#: errnos that mean "would block" or "not supported with RWF_NOWAIT": retry on a worker.
_FALL_BACK = frozenset({errno.EAGAIN, errno.EOPNOTSUPP})
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)


class NowaitEngine(ThreadsEngine):
    name = "nowait"
    capabilities = Capability.THREADED | Capability.NOWAIT_FIRST
    summary = "preadv2/pwritev2(RWF_NOWAIT) inline, a worker thread when it would block"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._hits = 0
        self._would_block = 0
        self._unsupported = 0
        self._partial = 0

    @classmethod
    def probe(cls) -> str | None:
        if not hasattr(os, "RWF_NOWAIT"):
            return "this Python has no os.RWF_NOWAIT (needs Linux 4.14+ and Python 3.7+)"
        return None

    def _inline(self) -> None:
        """Count a call that completed inline (attempts that would block are not)."""
        self._submitted()
        self._completed()

    def _missed(self, exc: OSError) -> None:
        if exc.errno not in _FALL_BACK:
            raise exc
        if exc.errno == errno.EAGAIN:
            self._would_block += 1
        else:
            self._unsupported += 1
        self._fallbacks += 1

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        # The hot path: one allocation, one system call, no further calls.
        buffer = bytearray(size)
        try:
            count = os.preadv(fd, (buffer,), offset, _RWF_NOWAIT)
        except OSError as exc:
            self._missed(exc)
            count = await super()._preadinto(fd, memoryview(buffer), offset)
        else:
            self._submits += 1
            self._completions += 1
            if count != size and count and offset + count < os.fstat(fd).st_size:
                self._partial += 1
                self._fallbacks += 1
                with memoryview(buffer)[count:] as rest:
                    count += await super()._preadinto(fd, rest, offset + count)
            else:
                self._hits += 1
        if count != size:
            del buffer[count:]
        return buffer

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        try:
            count = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
        except OSError as exc:
            self._missed(exc)
            return await super()._preadinto(fd, buffer, offset)
        self._inline()
        if count == len(buffer) or count == 0 or offset + count >= os.fstat(fd).st_size:
            self._hits += 1
            return count
        # Part of the range was cached: read the rest on a worker.
        self._partial += 1
        self._fallbacks += 1
        return count + await super()._preadinto(fd, buffer[count:], offset + count)

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        try:
            count = os.pwritev(fd, [data], offset, os.RWF_NOWAIT)
        except OSError as exc:
            self._missed(exc)
            return await super()._pwrite(fd, data, offset)
        self._inline()
        self._hits += 1
        return count  # a short count is continued by the caller, on the inline path first

    def _extra_statistics(self) -> dict[str, int]:
        return {
            **super()._extra_statistics(),
            "nowait_hits": self._hits,
            "nowait_would_block": self._would_block,
            "nowait_unsupported": self._unsupported,
            "nowait_partial": self._partial,
        }
