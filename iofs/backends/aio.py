"""The Linux AIO engine: ``io_submit`` and ``io_getevents`` through python-libaio's ctypes
layer (``libaio.libaio``), completions signalled through an eventfd.

Linux AIO is asynchronous only on O_DIRECT files, so the engine prefers direct I/O:
aligned requests go through the O_DIRECT twins base.py opens. Requests that come on a
buffered fd (direct I/O off, unaligned writes, files that refuse O_DIRECT) are still
submitted through AIO, but the kernel does their I/O inside ``io_submit``, on the loop
thread, exactly as the blocking engine would: they are counted as ``buffered_submits``.
Some O_DIRECT requests complete inside ``io_submit`` too (on ext4, writes that extend
the file). ``inline_reaps`` counts every operation found complete right after its
``io_submit``, ``reaper_reaps`` those that completed later, asynchronously (see
`completion.CompletionCounters`).

Slots, batching, parking, the reaper and short reads are the completion core's
(`completion.CompletionEngine`); this file is the kernel side only. A batch is one
``io_submit`` of the iocbs prepared in a loop tick; reaping is a non-blocking
``io_getevents`` (libaio answers that from the shared ring, without a system call, when
it is empty), so buffered operations, already complete, are found by their tasks on
resuming without a trip through epoll. Every iocb asks the kernel to signal the
engine's eventfd on completion: that is the fd the core's reaper waits on. No threads.
Without a started reaper, a task that must wait blocks in ``io_getevents``.

fsync and fdatasync are AIO operations too (IOCB_CMD_FSYNC/FDSYNC, Linux 4.18+): the
kernel runs them on a worker, so they do not block the loop even on a buffered fd.
Where ``io_submit`` refuses them with EINVAL (an older kernel, or a file system without
AIO fsync), a plain fsync runs on the loop thread instead, counted as ``fsync_fallbacks``.

At most ``config.queue_depth`` operations are in flight (the AIO context is created for
that many events); further operations wait for a slot. A task cancelled while its
operation is in flight keeps waiting (the kernel owns its buffer) and receives the
cancellation once the operation has completed.

Errors carry the errno ``pread``/``pwrite``/``fsync`` would give, with one translation:
AIO refuses a read of a directory with EINVAL, reported as EISDIR as by ``pread``. One
difference remains: AIO reads and writes pipes and FIFOs (blocking inside ``io_submit``)
where ``pread`` answers ESPIPE; backing files are regular files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import trio

from .base import Capability, EngineConfig, EngineUnavailable, sync_file
from .completion import WRITE, CompletionCounters, CompletionEngine, SubmitRefused
from .seccomp import seccomp_filtered


def _binding() -> ModuleType:
    """python-libaio's ctypes layer; importing it loads libaio.so.1.

    Raises ImportError when python-libaio is missing, OSError when libaio.so.1 is.
    """
    return importlib.import_module("libaio.libaio")


def _setup_failure(exc: OSError, events: int) -> str:
    """One sentence saying why ``io_setup`` for *events* events failed with *exc*."""
    if exc.errno == errno.ENOSYS:
        if seccomp_filtered():
            return "io_setup is not available (ENOSYS): a seccomp filter hides it"
        return "this kernel has no Linux AIO (io_setup: ENOSYS, built without CONFIG_AIO)"
    if exc.errno == errno.EAGAIN:
        return _beyond_aio_max_nr(events)
    if exc.errno == errno.EINVAL and events > 1:
        return f"an AIO context cannot have {events} events (lower the queue depth)"
    return f"io_setup failed: {os.strerror(exc.errno or errno.EIO)}"


def _free_aio_events() -> int | None:
    """The events an AIO context may still have (fs.aio-max-nr less fs.aio-nr), or None
    if they cannot be read (io_setup decides then)."""
    try:
        limit = int(Path("/proc/sys/fs/aio-max-nr").read_text())
        in_use = int(Path("/proc/sys/fs/aio-nr").read_text())
    except (OSError, ValueError):
        return None
    return max(limit - in_use, 0)


def _beyond_aio_max_nr(events: int) -> str:
    """Why an AIO context for *events* events does not fit in fs.aio-max-nr, with the
    figures: the limit, what other contexts hold (fs.aio-nr) and what would fit."""
    try:
        limit = int(Path("/proc/sys/fs/aio-max-nr").read_text())
        in_use = int(Path("/proc/sys/fs/aio-nr").read_text())
    except (OSError, ValueError):
        return (
            f"an AIO context for {events} events would exceed fs.aio-max-nr"
            " (raise it with sysctl, or lower the queue depth)"
        )
    free = max(limit - in_use, 0)
    return (
        f"an AIO context for {events} events does not fit in fs.aio-max-nr ({limit}, "
        f"{in_use} in use): use a queue depth of at most {free}, or raise it "
        f"(sysctl fs.aio-max-nr={in_use + events})"
    )


def _destroy(binding: ModuleType, context: object, eventfd: int) -> None:
    """Destroy the AIO context and close the eventfd (nothing may be in flight)."""
    binding.io_destroy(context)
    os.close(eventfd)


@dataclass(frozen=True)
class AioCounters(CompletionCounters):
    #: Reads and writes submitted on a buffered fd: the kernel did them in io_submit.
    buffered_submits: int
    #: fsyncs io_submit refused with EINVAL, run as the plain call on the loop thread.
    fsync_fallbacks: int


class AioEngine(CompletionEngine):
    name = "aio"
    capabilities = Capability.KERNEL_ASYNC | Capability.NEEDS_ALIGNED
    summary = "Linux AIO (io_submit) on O_DIRECT twins, completions via an eventfd"
    prefers_direct = True
    #: The core's operations are numbered as IOCB_CMD_*; AIO has no flags for them.
    OPCODES = ((0, 0), (1, 0), (2, 0), (3, 0))

    def __init__(self, config: EngineConfig | None = None) -> None:
        # Checked before the core makes a slot per operation in flight: a queue depth
        # of a billion would take tens of GiB before io_setup could refuse it.
        depth = (config or EngineConfig()).queue_depth
        if (free := _free_aio_events()) is not None and depth > free:
            reason = _beyond_aio_max_nr(depth)
            raise EngineUnavailable(f"engine {self.name!r} cannot run here: {reason}")
        super().__init__(config)
        aio = self._aio = _binding()
        self._context = aio.io_context_t()
        try:
            aio.io_setup(depth, ctypes.byref(self._context))
        except OSError as exc:  # e.g. a queue depth beyond fs.aio-max-nr
            reason = _setup_failure(exc, depth)
            raise EngineUnavailable(f"engine {self.name!r} cannot run here: {reason}") from None
        try:
            self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            aio.io_destroy(self._context)
            raise
        # A context is a system-wide resource (fs.aio-max-nr): give it back even if
        # the engine is dropped without aclose().
        self._finalizer = weakref.finalize(self, _destroy, aio, self._context, self._eventfd)
        # One iocb per slot. What never changes is set once: the eventfd to signal, and
        # the slot number, which comes back as the event's ``data``.
        self._iocbs = (aio.iocb * depth)()
        for slot, iocb in enumerate(self._iocbs):
            aio.io_set_eventfd(iocb, self._eventfd)
            iocb.data = slot
        #: Per slot: the iocb, and its part that says where the data goes.
        self._slot_iocbs = [(iocb, iocb.u.c) for iocb in self._iocbs]
        self._pointers = [ctypes.pointer(iocb) for iocb in self._iocbs]
        self._submit_list = (aio.iocb_p * depth)()
        self._pointer_size = ctypes.sizeof(aio.iocb_p)
        self._event_array = (aio.io_event * depth)()
        #: Completions a blocking wait took, for the next `_poll`.
        self._waited: list[tuple[int, int, int]] = []
        self._no_wait = aio.timespec(0, 0)
        #: Slots whose iocb is prepared but not yet submitted, in order.
        self._prepared: list[int] = []
        self._buffered_submits = 0
        self._fsync_fallbacks = 0
        self._prepare = self._prepare_iocb
        self._poll = self._poll_events
        self._wait_fd = self._eventfd

    @classmethod
    def probe(cls) -> str | None:
        try:
            aio = _binding()
        except ImportError:
            return "python-libaio is not installed (pip install libaio)"
        except OSError:
            return "libaio.so.1 cannot be loaded: install libaio1 (apt install libaio1)"
        context = aio.io_context_t()
        try:
            aio.io_setup(1, ctypes.byref(context))
        except OSError as exc:
            return _setup_failure(exc, 1)
        aio.io_destroy(context)
        return None

    async def _shutdown(self) -> None:
        await self._stop_core()
        if self._finalizer.alive:
            trio.lowlevel.notify_closing(self._eventfd)
            self._finalizer()

    # -- the completion core's hooks ---------------------------------------------------
    def _prepare_iocb(
        self, opcode: int, fd: int, address: int, length: int, offset: int, _: int, index: int
    ) -> None:
        if opcode <= WRITE and not self._is_direct(fd):
            self._buffered_submits += 1
        iocb, where = self._slot_iocbs[index]
        iocb.aio_lio_opcode = opcode
        iocb.aio_fildes = fd
        where.buf = address
        where.nbytes = length
        where.offset = offset
        self._prepared.append(index)

    def _commit(self) -> int:
        """One ``io_submit`` takes the whole batch unless the kernel refuses an iocb: it
        then takes those before it, the refused one fails with the errno the next call
        reports, and the rest go in a further call."""
        prepared, self._prepared = self._prepared, []
        submit_list, pointers = self._submit_list, self._pointers
        for position, index in enumerate(prepared):
            submit_list[position] = pointers[index]
        start = taken_total = 0
        while start < len(prepared):
            rest = submit_list
            if start:  # after a refused iocb: the list from the next one on
                rest = ctypes.cast(
                    ctypes.addressof(submit_list) + start * self._pointer_size,
                    self._aio.iocb_pp,
                )
            try:
                taken = self._aio.io_submit(self._context, len(prepared) - start, rest)
            except OSError as exc:
                self._refuse(prepared[start], -(exc.errno or errno.EIO))
                start += 1
                continue
            if not taken:  # the kernel took nothing and said nothing: do not spin
                for index in prepared[start:]:
                    self._refuse(index, -errno.EAGAIN)
                break
            taken_total += taken
            start += taken
        return taken_total

    def _events(self, wait: bool) -> list[tuple[int, int, int]]:
        events = self._event_array
        count = self._aio.io_getevents(
            self._context, 1 if wait else 0, len(events), events, None if wait else self._no_wait
        )
        # A c_void_p field reads 0 back as None.
        return [(event.data or 0, event.res, 0) for event in events[:count]]

    def _poll_events(self) -> list[tuple[int, int, int]]:
        if self._waited:  # what the blocking wait took
            waited, self._waited = self._waited, []
            return waited
        return self._events(wait=False)

    def _wait_for_completion(self) -> None:
        self._waited += self._events(wait=True)

    def _acknowledge_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wakeup for events already reaped
            os.eventfd_read(self._eventfd)  # reset it before reaping, so nothing is missed

    def counters(self) -> AioCounters:
        return AioCounters(
            **asdict(super().counters()),
            buffered_submits=self._buffered_submits,
            fsync_fallbacks=self._fsync_fallbacks,
        )

    # -- where AIO differs -------------------------------------------------------------
    async def _fsync(self, fd: int, datasync: bool) -> None:
        try:
            await super()._fsync(fd, datasync)
        except SubmitRefused as exc:
            if exc.errno != errno.EINVAL:
                raise
            # No AIO fsync for this file (Linux < 4.18, or its file system): the plain
            # call, on the loop thread. It raises EINVAL too if the file has no fsync.
            self._fsync_fallbacks += 1
            self._fallbacks += 1
            self._submitted()
            sync_file(fd, datasync)
            self._completed()
