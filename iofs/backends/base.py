"""The I/O engine interface: the data operations the filesystem needs, and nothing else.

Shaped like fio's ops table. The filesystem calls `read`, `write` and `fsync` on an
engine; those public methods keep the statistics, choose between the buffered backing
fd and its O_DIRECT twin, and delegate to the private hooks each engine implements:
`_preadinto`, `_pwrite` and `_fsync` (and optionally `_pread`, a faster buffered read).
How an engine submits and reaps its I/O stays private to it.

Lifecycle: create, `start(nursery)` (engines with background tasks, such as a
completion reaper, start them there), use, `await aclose()` (waits until nothing is in
flight, then stops the background tasks and releases kernel resources). The filesystem
calls `forget(fd)` before it closes a backing fd, so the engine can close what it
opened for that fd.

Contract for every engine (checked by ``tests/test_engines.py`` for each registered one):
- `read` returns at most *size* bytes starting at *offset*; fewer only at end of file.
- `write` writes all of *data* at *offset* and returns ``len(data)``, or returns the
  short count if the backing file system stopped part way (e.g. ENOSPC after some
  bytes), or raises `OSError` if it wrote nothing.
- `fsync` returns only after ``fsync(2)`` (or ``fdatasync(2)`` when *datasync*) on the
  backing fd has succeeded.
- Errors are raised as `OSError` carrying the backing file system's errno.
- A cancelled operation is never abandoned while the kernel may still own its buffer:
  it completes (shielded) and only then is the cancellation delivered.

Direct I/O: with ``direct`` on, each buffered backing fd gets an O_DIRECT twin opened
through ``/proc/self/fd``. Requests whose offset and length are multiples of
`DIRECT_ALIGN` go through the twin with a page-aligned buffer; unaligned reads read the
aligned range around them into a bounce buffer; unaligned writes (and files that refuse
O_DIRECT, or were opened O_APPEND) use the buffered fd. The page cache stays coherent:
the kernel writes back dirty pages before a direct read and drops cached pages after a
direct write. Each path is counted in the statistics.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import errno
import fcntl
import mmap
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import trio

#: What `write` accepts and `read` may return: any contiguous byte buffer.
Buffer = bytes | bytearray | memoryview

#: Offset, length and buffer alignment used for O_DIRECT (a page; every Linux block
#: device's logical block size divides it).
DIRECT_ALIGN = 4096

#: Largest offset a request may reach (off_t).
_OFF_MAX = (1 << 63) - 1


class Capability(enum.Flag):
    """What an engine does, for tests and reports to branch on (never on names)."""

    #: Data calls run on the event-loop thread: a slow disk stalls every FUSE request.
    BLOCKS_LOOP = enum.auto()
    #: I/O is submitted to the kernel and completes asynchronously (io_uring, Linux AIO).
    KERNEL_ASYNC = enum.auto()
    #: I/O runs on worker threads; completions come back to the event loop.
    THREADED = enum.auto()
    #: Only asynchronous for O_DIRECT-aligned requests (Linux AIO): buffered ones are
    #: done inside the submitting system call, on the loop thread.
    NEEDS_ALIGNED = enum.auto()
    #: Tries a non-blocking call inline first (RWF_NOWAIT) and falls back when it
    #: would block.
    NOWAIT_FIRST = enum.auto()


@dataclass(frozen=True)
class EngineConfig:
    """The knobs every engine accepts (an engine ignores what does not apply to it)."""

    #: Use O_DIRECT twins for aligned requests; None means the engine's own default.
    direct: bool | None = None
    #: Most operations in flight at once (ring size, AIO context size, worker queue);
    #: further operations wait for a slot.
    queue_depth: int = 64
    #: Worker threads, for engines that use them (threads, and nowait's fallback).
    workers: int = 8

    def __post_init__(self) -> None:
        if self.queue_depth < 1:
            raise ValueError("queue_depth must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")


@dataclass(frozen=True)
class EngineStatistics:
    """A snapshot of one engine's counters since it was created."""

    engine: str
    #: Whether aligned requests go through O_DIRECT twins.
    direct: bool
    queue_depth: int
    reads: int
    writes: int
    fsyncs: int
    fdatasyncs: int
    bytes_read: int
    bytes_written: int
    errors: int
    in_flight: int
    max_in_flight: int
    #: System calls (or worker hand-offs) that started I/O, and completions reaped.
    submits: int
    completions: int
    #: Most operations started by one submission.
    max_batch: int
    #: Requests served through an O_DIRECT twin, aligned as they came.
    direct_ops: int
    #: Unaligned reads served by an aligned direct read into a bounce buffer.
    bounced: int
    #: Requests that wanted direct I/O but used the buffered fd (unaligned write,
    #: O_APPEND, or a file that refuses O_DIRECT).
    buffered: int
    #: Requests an engine handed to its fallback path (e.g. nowait's EAGAIN).
    fallbacks: int
    #: Engine-specific counters.
    details: Mapping[str, int] = field(default_factory=dict)


def sync_file(fd: int, datasync: bool) -> None:
    """fdatasync(2) if *datasync*, else fsync(2), of *fd*, in the calling thread."""
    if datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


class EngineUnavailable(Exception):
    """The engine cannot run on this machine; the message says why, in one line."""


class AlignedBuffers:
    """A pool of page-aligned anonymous mappings, reused by size class."""

    _KEEP = 16  # buffers kept per size class

    def __init__(self) -> None:
        self._free: dict[int, list[mmap.mmap]] = {}

    @staticmethod
    def _size_class(size: int) -> int:
        return max(DIRECT_ALIGN, 1 << (size - 1).bit_length())

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least *size* bytes, aligned to a page."""
        size_class = self._size_class(size)
        free = self._free.get(size_class)
        return free.pop() if free else mmap.mmap(-1, size_class)

    def give(self, buffer: mmap.mmap) -> None:
        free = self._free.setdefault(len(buffer), [])
        if len(free) < self._KEEP:
            free.append(buffer)
        else:
            buffer.close()

    def close(self) -> None:
        for free in self._free.values():
            for buffer in free:
                with contextlib.suppress(BufferError):  # a view still held: GC unmaps it
                    buffer.close()
        self._free.clear()


class Engine(abc.ABC):
    """Base class of all I/O engines. Subclasses set `name` and `capabilities`."""

    name: ClassVar[str]
    capabilities: ClassVar[Capability]
    #: One line for `iofs engines`: how this engine does I/O.
    summary: ClassVar[str] = ""
    #: Whether the engine uses O_DIRECT twins unless configured otherwise.
    prefers_direct: ClassVar[bool] = False

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.direct = self.prefers_direct if self.config.direct is None else self.config.direct
        self._reads = 0
        self._writes = 0
        self._fsyncs = 0
        self._fdatasyncs = 0
        self._bytes_read = 0
        self._bytes_written = 0
        self._errors = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._submits = 0
        self._completions = 0
        self._max_batch = 0
        self._direct_ops = 0
        self._bounced = 0
        self._buffered = 0
        self._fallbacks = 0
        self._closing = False
        self._drained = trio.Event()
        #: buffered fd -> its O_DIRECT twin, or -1 when it has none.
        self._twins: dict[int, int] = {}
        self._buffers = AlignedBuffers()

    @classmethod
    def probe(cls) -> str | None:
        """Return None if the engine can run here, else one line saying why not."""
        return None

    # -- the hooks each engine implements -------------------------------------------
    @abc.abstractmethod
    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        """Read into *buffer* at *offset*; return the count (short only at EOF)."""

    @abc.abstractmethod
    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        """Write *data* at *offset*; return the count (may be short)."""

    @abc.abstractmethod
    async def _fsync(self, fd: int, datasync: bool) -> None: ...

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        """A buffered read; engines override it when they have a cheaper way."""
        buffer = bytearray(size)
        count = await self._preadinto(fd, memoryview(buffer), offset)
        del buffer[count:]
        return buffer

    def _extra_statistics(self) -> dict[str, int]:
        """Engine-specific counters for `EngineStatistics.details`."""
        return {}

    async def _shutdown(self) -> None:
        """Stop background tasks and release kernel resources; nothing is in flight."""

    # -- lifecycle -------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        """Start the engine's background tasks (if any) in *nursery*."""

    async def aclose(self) -> None:
        """Refuse new operations, wait for those in flight, then release everything."""
        self._closing = True
        if self._in_flight:
            with trio.CancelScope(shield=True):
                await self._drained.wait()
        await self._shutdown()
        for twin in self._twins.values():
            if twin >= 0:
                os.close(twin)
        self._twins.clear()
        self._buffers.close()

    def forget(self, fd: int) -> None:
        """*fd* is about to be closed: close the O_DIRECT twin opened for it."""
        twin = self._twins.pop(fd, -1)
        if twin >= 0:
            os.close(twin)

    # -- the interface the filesystem uses ------------------------------------------
    def _begin(self) -> None:
        if self._closing:
            raise trio.ClosedResourceError(f"engine {self.name} is closed")
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _end(self) -> None:
        self._in_flight -= 1
        if self._closing and not self._in_flight:
            self._drained.set()

    async def read(self, fd: int, offset: int, size: int) -> Buffer:
        self._begin()
        try:
            twin = self._twin(fd) if self.direct else -1
            if twin < 0 or offset + size + DIRECT_ALIGN > _OFF_MAX:
                data = await self._pread(fd, size, offset)
            else:
                try:
                    data = await self._read_direct(twin, offset, size)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # O_DIRECT refuses what a buffered read allows, e.g. an aligned
                    # range that reaches past the filesystem's largest file size.
                    self._buffered += 1
                    data = await self._pread(fd, size, offset)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._end()
        self._reads += 1
        self._bytes_read += len(data)
        return data

    async def write(self, fd: int, offset: int, data: Buffer) -> int:
        self._begin()
        try:
            written = await self._write_all(fd, offset, data)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._end()
        self._writes += 1
        self._bytes_written += written
        return written

    async def fsync(self, fd: int, datasync: bool) -> None:
        self._begin()
        try:
            await self._fsync(fd, datasync)
        except OSError:
            self._errors += 1
            raise
        finally:
            self._end()
        if datasync:
            self._fdatasyncs += 1
        else:
            self._fsyncs += 1

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            engine=self.name,
            direct=self.direct,
            queue_depth=self.config.queue_depth,
            reads=self._reads,
            writes=self._writes,
            fsyncs=self._fsyncs,
            fdatasyncs=self._fdatasyncs,
            bytes_read=self._bytes_read,
            bytes_written=self._bytes_written,
            errors=self._errors,
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            submits=self._submits,
            completions=self._completions,
            max_batch=self._max_batch,
            direct_ops=self._direct_ops,
            bounced=self._bounced,
            buffered=self._buffered,
            fallbacks=self._fallbacks,
            details=self._extra_statistics(),  # a fresh dict: the snapshot owns it
        )

    # -- helpers for engines ----------------------------------------------------------
    def _submitted(self, count: int = 1) -> None:
        """Count one submission that started *count* operations."""
        self._submits += 1
        self._max_batch = max(self._max_batch, count)

    def _completed(self, count: int = 1) -> None:
        self._completions += count

    # -- direct I/O --------------------------------------------------------------------
    def _twin(self, fd: int) -> int:
        """The O_DIRECT twin of *fd*, opened on first use; -1 if it cannot have one."""
        twin = self._twins.get(fd)
        if twin is None:
            twin = self._open_twin(fd)
            self._twins[fd] = twin
        return twin

    @staticmethod
    def _open_twin(fd: int) -> int:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_APPEND:
            return -1  # the kernel would ignore our offsets on the twin too
        try:
            return os.open(
                f"/proc/self/fd/{fd}",
                (flags & os.O_ACCMODE) | os.O_DIRECT | os.O_CLOEXEC,
            )
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP):
                return -1  # this file system (or file) refuses O_DIRECT
            raise

    async def _read_direct(self, twin: int, offset: int, size: int) -> Buffer:
        start = offset - offset % DIRECT_ALIGN
        end = -(-(offset + size) // DIRECT_ALIGN) * DIRECT_ALIGN
        if start == offset and end == offset + size:
            self._direct_ops += 1
        else:
            self._bounced += 1
        return await self._read_aligned(twin, start, end - start, offset - start, size)

    async def _read_aligned(
        self, twin: int, start: int, length: int, skip: int, size: int
    ) -> Buffer:
        """Read the aligned range of *length* bytes at *start* through the O_DIRECT
        *twin*; return its bytes from *skip* on, at most *size* (fewer at end of file).

        Engines that keep page-aligned buffers of their own override this.
        """
        buffer = self._buffers.take(length)
        try:
            with memoryview(buffer)[:length] as view:
                count = await self._preadinto(twin, view, start)
            return buffer[skip : max(skip, min(count, skip + size))]
        finally:
            self._buffers.give(buffer)

    async def _write_all(self, fd: int, offset: int, data: Buffer) -> int:
        """Write *data* completely, continuing after short writes (see the contract)."""
        size = len(data)
        done = await self._write_once(fd, offset, data)
        while 0 < done < size:
            try:
                written = await self._pwrite(fd, memoryview(data)[done:], offset + done)
            except OSError:
                break  # report what was written, as write(2) does
            if written == 0:
                break
            done += written
        return done

    async def _write_once(self, fd: int, offset: int, data: Buffer) -> int:
        if not self.direct:
            return await self._pwrite(fd, data, offset)
        size = len(data)
        twin = self._twin(fd)
        if twin < 0 or offset % DIRECT_ALIGN or size % DIRECT_ALIGN or not size:
            self._buffered += 1
            return await self._pwrite(fd, data, offset)
        self._direct_ops += 1
        buffer = self._buffers.take(size)
        try:
            with memoryview(buffer)[:size] as view:
                view[:] = data
                return await self._pwrite(twin, view, offset)
        finally:
            self._buffers.give(buffer)


@contextlib.asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    """Start *engine* in a nursery of its own and close (drain) it on the way out."""
    async with trio.open_nursery() as nursery:
        engine.start(nursery)
        try:
            yield engine
        finally:
            with trio.CancelScope(shield=True):
                await engine.aclose()
