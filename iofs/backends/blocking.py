"""The baseline engine: plain blocking system calls on the event-loop thread.

Every data request stalls the whole filesystem until the kernel returns, which is
exactly what makes it the reference the other engines are measured against.
"""

from __future__ import annotations

import os

from .base import Buffer, Capability, Engine, sync_file


class BlockingEngine(Engine):
    name = "blocking"
    capabilities = Capability.BLOCKS_LOOP
    summary = "pread/pwrite/fsync on the event-loop thread (the baseline)"

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
