"""The baseline engine: plain blocking system calls on the event-loop thread.

Every data request stalls the whole filesystem until the kernel returns, which is
exactly what makes it the reference the other engines are measured against.
"""

from __future__ import annotations

import os

from .base import Capability, Engine


class BlockingEngine(Engine):
    name = "blocking"
    capabilities = Capability.BLOCKS_LOOP

    async def _read(self, fd: int, offset: int, size: int) -> bytes:
        return os.pread(fd, size, offset)

    async def _write(self, fd: int, offset: int, data: bytes) -> int:
        return write_all(fd, offset, data)

    async def _fsync(self, fd: int, datasync: bool) -> None:
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)


def write_all(fd: int, offset: int, data: bytes) -> int:
    """pwrite *data* completely, continuing after short writes.

    Returns the count written; raises only if nothing at all could be written, so a
    file system that fills up part way gives a short count, as write(2) does.
    """
    done = os.pwrite(fd, data, offset)  # all of it, nearly always
    while 0 < done < len(data):
        try:
            written = os.pwrite(fd, memoryview(data)[done:], offset + done)
        except OSError:
            break  # report what was written, as write(2) does
        if written == 0:
            break
        done += written
    return done
