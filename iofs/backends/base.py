"""The I/O engine interface: the data operations the filesystem needs, and nothing else.

Shaped like fio's ops table. The filesystem calls `read`, `write` and `fsync` on an
engine; those public methods keep the statistics and delegate to the three private
hooks `_read`, `_write` and `_fsync` that each engine implements. How an engine submits
and reaps its I/O stays private to it.

Contract for every engine (checked by ``tests/test_engines.py`` for each registered one):
- `read` returns at most *size* bytes starting at *offset*; fewer only at end of file.
- `write` writes all of *data* at *offset* and returns ``len(data)``, or returns the
  short count if the backing file system stopped part way (e.g. ENOSPC after some
  bytes), or raises `OSError` if it wrote nothing.
- `fsync` returns only after ``fsync(2)`` (or ``fdatasync(2)`` when *datasync*) on the
  backing fd has succeeded.
- Errors are raised as `OSError` carrying the backing file system's errno.
- A cancelled operation is never abandoned while the kernel may still own its buffer.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import ClassVar


class Capability(enum.Flag):
    """What an engine does, for tests and reports to branch on (never on names)."""

    #: Data calls run on the event-loop thread: a slow disk stalls every FUSE request.
    BLOCKS_LOOP = enum.auto()
    #: I/O is submitted to the kernel and completes asynchronously (io_uring, Linux AIO).
    KERNEL_ASYNC = enum.auto()
    #: I/O runs on worker threads; completions come back to the event loop.
    THREADED = enum.auto()
    #: Needs buffers, offsets and lengths aligned for O_DIRECT.
    NEEDS_ALIGNED = enum.auto()


@dataclass(frozen=True)
class EngineStatistics:
    """A snapshot of one engine's counters since it was created."""

    engine: str
    reads: int
    writes: int
    fsyncs: int
    fdatasyncs: int
    bytes_read: int
    bytes_written: int
    errors: int
    in_flight: int
    max_in_flight: int


class EngineUnavailable(Exception):
    """The engine cannot run on this machine; the message says why, in one line."""


class Engine(abc.ABC):
    """Base class of all I/O engines. Subclasses set `name` and `capabilities`."""

    name: ClassVar[str]
    capabilities: ClassVar[Capability]

    def __init__(self) -> None:
        self._reads = 0
        self._writes = 0
        self._fsyncs = 0
        self._fdatasyncs = 0
        self._bytes_read = 0
        self._bytes_written = 0
        self._errors = 0
        self._in_flight = 0
        self._max_in_flight = 0

    @classmethod
    def probe(cls) -> str | None:
        """Return None if the engine can run here, else one line saying why not."""
        return None

    # -- the hooks each engine implements -------------------------------------------
    @abc.abstractmethod
    async def _read(self, fd: int, offset: int, size: int) -> bytes: ...

    @abc.abstractmethod
    async def _write(self, fd: int, offset: int, data: bytes) -> int: ...

    @abc.abstractmethod
    async def _fsync(self, fd: int, datasync: bool) -> None: ...

    async def aclose(self) -> None:
        """Release the engine's resources once no operation is in flight."""

    # -- the interface the filesystem uses ------------------------------------------
    def _start(self) -> None:
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        self._start()
        try:
            data = await self._read(fd, offset, size)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1
        self._reads += 1
        self._bytes_read += len(data)
        return data

    async def write(self, fd: int, offset: int, data: bytes) -> int:
        self._start()
        try:
            written = await self._write(fd, offset, data)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1
        self._writes += 1
        self._bytes_written += written
        return written

    async def fsync(self, fd: int, datasync: bool) -> None:
        self._start()
        try:
            await self._fsync(fd, datasync)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._in_flight -= 1
        if datasync:
            self._fdatasyncs += 1
        else:
            self._fsyncs += 1

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            engine=self.name,
            reads=self._reads,
            writes=self._writes,
            fsyncs=self._fsyncs,
            fdatasyncs=self._fdatasyncs,
            bytes_read=self._bytes_read,
            bytes_written=self._bytes_written,
            errors=self._errors,
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
        )
