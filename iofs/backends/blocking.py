"""The baseline engine: plain blocking system calls on the event-loop thread.

Every data request stalls the whole filesystem until the kernel returns, which is
exactly what makes it the reference the other engines are measured against.
"""

from __future__ import annotations

import os

from .base import Buffer, Capability, Engine, EngineConfig, sync_file


class BlockingEngine(Engine):
    name = "blocking"
    capabilities = Capability.BLOCKS_LOOP
    summary = "pread/pwrite/fsync on the event-loop thread (the baseline)"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        cls = type(self)
        #: Whether `read` and `write` may skip the hooks: not if a subclass overrides one.
        self._own_hooks = (cls._pread, cls._pwrite) == (
            BlockingEngine._pread,
            BlockingEngine._pwrite,
        )

    # The buffered read and write, the requests a blocking mode serves most, without the
    # base class's layers (`_begin`, `_pread`, `_submitted`... each a Python call or a
    # coroutine): the same counters, a few microseconds less per request. Direct I/O
    # (the twin, bounce buffers), a closed engine and a subclass with hooks of its own
    # go the base class's way.
    async def read(self, fd: int, offset: int, size: int) -> Buffer:
        if self.direct or self._closing or not self._own_hooks:
            return await super().read(fd, offset, size)
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:  # noqa: PLR1730  (cheaper than max())
            self._max_in_flight = self._in_flight
        self._submits += 1
        self._max_batch = self._max_batch or 1
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1  # never waits: closing cannot have begun meanwhile
        self._completions += 1
        self._reads += 1
        self._bytes_read += len(data)
        return data

    async def write(self, fd: int, offset: int, data: Buffer) -> int:
        if self.direct or self._closing or not self._own_hooks:
            return await super().write(fd, offset, data)
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:  # noqa: PLR1730
            self._max_in_flight = self._in_flight
        self._submits += 1
        self._max_batch = self._max_batch or 1
        try:
            done = os.pwrite(fd, data, offset)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1
        self._completions += 1
        size = len(data)
        while 0 < done < size:  # short: go on as `_write_all` does
            self._submits += 1
            try:
                written = os.pwrite(fd, memoryview(data)[done:], offset + done)
            except OSError:
                break  # report what was written, as write(2) does
            self._completions += 1
            if written == 0:
                break
            done += written
        self._writes += 1
        self._bytes_written += done
        return done

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        self._submitted()
        data = os.pread(fd, size, offset)
        self._completed()
        return data

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        self._submitted()
        count = os.preadv(fd, [buffer], offset)
        self._completed()
        return count

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        self._submitted()
        count = os.pwrite(fd, data, offset)
        self._completed()
        return count

    async def _fsync(self, fd: int, datasync: bool) -> None:
        self._submitted()
        sync_file(fd, datasync)
        self._completed()
