"""The Linux AIO engine: ``io_submit`` and ``io_getevents`` through python-libaio's ctypes
layer (``libaio.libaio``), completions signalled through an eventfd.

Linux AIO is asynchronous only on O_DIRECT files, so the engine prefers direct I/O:
aligned requests go through the O_DIRECT twins base.py opens. Requests that come on a
buffered fd (direct I/O off, unaligned writes, files that refuse O_DIRECT) are still
submitted through AIO, but the kernel does their I/O inside ``io_submit``, on the loop
thread, exactly as the blocking engine would: they are counted as ``buffered_submits``.
Some O_DIRECT requests complete inside ``io_submit`` too (on ext4, writes that extend
the file). ``inline_reaps`` counts every operation found complete right after its
``io_submit``, ``reaper_reaps`` those that completed later, asynchronously.

Batching: an operation fills its iocb and yields once (a schedule point, not a cancel
point). Every task that ran in the same loop tick has queued its iocb by then, so the
first of them to resume submits them all with one ``io_submit``, then reaps straight
away with a non-blocking ``io_getevents`` (libaio answers that from the shared ring,
without a system call, when it is empty): buffered operations are already complete,
and their tasks find the result on resuming without a trip through epoll.

Reaping: every iocb asks the kernel to signal the engine's eventfd on completion. One
reaper task, started by `start` in the caller's nursery, waits for it with
`trio.lowlevel.wait_readable` while anything is outstanding, reaps with a non-blocking
``io_getevents`` and wakes the tasks whose operations completed. No threads. Without a
started reaper (an engine used before `start`), a task that must wait does so with a
blocking ``io_getevents``, like the blocking engine.

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
import fcntl
import importlib
import os
import stat
import weakref
from pathlib import Path
from types import ModuleType
from typing import Final

import trio

from .base import Buffer, Capability, EngineConfig, EngineUnavailable
from .kernel import ReapedEngine, address_of, write_source
from .uring import seccomp_filtered

# iocb opcodes: the kernel's IOCB_CMD_* (libaio's IO_CMD_*), needed before libaio loads.
_PREAD: Final = 0
_PWRITE: Final = 1
_FSYNC: Final = 2
_FDSYNC: Final = 3
#: Most bytes one read or write transfers (the kernel's MAX_RW_COUNT); ask for less.
_MAX_LENGTH: Final = 0x7FFFF000


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


def _is_directory(fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        return False


def _destroy(binding: ModuleType, context: object, eventfd: int) -> None:
    """Destroy the AIO context and close the eventfd (nothing may be in flight)."""
    binding.io_destroy(context)
    os.close(eventfd)


class _Refused(OSError):
    """``io_submit`` refused the operation: the kernel never started it."""


class AioEngine(ReapedEngine):
    name = "aio"
    capabilities = Capability.KERNEL_ASYNC | Capability.NEEDS_ALIGNED
    summary = "Linux AIO (io_submit) on O_DIRECT twins, completions via an eventfd"
    prefers_direct = True

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        aio = self._aio = _binding()
        depth = self.config.queue_depth
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
        self._events = (aio.io_event * depth)()
        self._no_wait = aio.timespec(0, 0)
        self._free_slots = list(range(depth - 1, -1, -1))
        self._slots = trio.Semaphore(depth)
        #: Per slot: the event's result once reaped, whether io_submit refused it, and
        #: the task waiting for it, if any.
        self._results: list[int | None] = [None] * depth
        self._refused = [False] * depth
        self._waiters: list[trio.lowlevel.Task | None] = [None] * depth
        #: Slots whose iocb is filled but not yet submitted, in order.
        self._queued: list[int] = []
        #: Calls of _submit so far: tells an operation whether its iocb is still queued.
        self._flushes = 0
        #: Submitted operations whose event has not been reaped yet.
        self._outstanding = 0
        #: fd -> whether it was opened O_DIRECT (forgotten in `forget`).
        self._fd_is_direct: dict[int, bool] = {}
        self._reaper_work = trio.Event()  # set when the idle reaper has something to wait for
        # Counters for statistics().
        self._max_outstanding = 0
        self._buffered_submits = 0
        self._inline_reaps = 0
        self._reaper_reaps = 0
        self._eventfd_wakeups = 0
        self._empty_wakeups = 0
        self._blocking_waits = 0
        self._slot_waits = 0
        self._submit_errors = 0
        self._fsync_fallbacks = 0

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

    # -- lifecycle -------------------------------------------------------------------
    async def _shutdown(self) -> None:
        await self._stop_reaper()
        if self._finalizer.alive:
            trio.lowlevel.notify_closing(self._eventfd)
            self._finalizer()
        self._fd_is_direct.clear()

    def forget(self, fd: int) -> None:
        self._fd_is_direct.pop(fd, None)
        self._fd_is_direct.pop(self._twins.get(fd, -1), None)
        super().forget(fd)

    async def _reap_completions(self) -> None:
        """The reaper: wait on the eventfd while anything is outstanding, reap, repeat."""
        assert self._reaper_scope is not None
        try:
            with self._reaper_scope:
                while True:
                    if not self._outstanding:
                        self._reaper_work = trio.Event()
                        await self._reaper_work.wait()
                    await self._reap_when_signalled()
        finally:
            # However the reaper was stopped (by _shutdown, or by its nursery being
            # cancelled), operations still in flight keep their tasks waiting and the
            # kernel their buffers: see them through before leaving.
            with trio.CancelScope(shield=True):
                while self._outstanding:
                    await self._reap_when_signalled()
            self._reaper_running = False
            self._reaper_done.set()

    async def _reap_when_signalled(self) -> None:
        await trio.lowlevel.wait_readable(self._eventfd)
        self._eventfd_wakeups += 1
        with contextlib.suppress(BlockingIOError):  # a wakeup for events already reaped
            os.eventfd_read(self._eventfd)  # reset it before reaping, so nothing is missed
        reaped = self._reap()
        self._reaper_reaps += reaped
        if not reaped:
            self._empty_wakeups += 1  # signalled by events already reaped inline

    # -- submitting and completing ---------------------------------------------------
    async def _acquire(self) -> int:
        """A free slot, waiting for one when ``queue_depth`` operations are in flight.

        A cancel point. Waiters are served in order (trio.Semaphore is fair).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._slots.acquire_nowait()  # no schedule point: the batching yield follows
        except trio.WouldBlock:
            self._slot_waits += 1
            await self._slots.acquire()
        return self._free_slots.pop()

    def _release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)
        self._slots.release()

    async def _io(
        self, slot: int, opcode: int, fd: int, address: int, length: int, offset: int
    ) -> int:
        """Run one operation in *slot* and return its result (`OSError` for an errno).

        The buffer at *address* must stay put until this returns. Once the iocb is
        queued, this returns only after its completion, even when cancelled.
        """
        iocb, where = self._slot_iocbs[slot]
        iocb.aio_lio_opcode = opcode
        iocb.aio_fildes = fd
        where.buf = address
        where.nbytes = length
        where.offset = offset
        self._queued.append(slot)
        # Let every task that is running in this tick queue its iocb too; the first of
        # them to resume submits all of them at once. The others find theirs submitted
        # and leave the iocbs queued since then to their own tasks: flushing those too
        # would split the next tick's batch into batches of one.
        flushes = self._flushes
        await trio.lowlevel.cancel_shielded_checkpoint()
        if self._flushes == flushes:
            self._submit()
        result = self._results[slot]
        if result is None:
            result = await self._wait(slot)
        else:
            self._results[slot] = None
        if result < 0:
            if self._refused[slot]:
                self._refused[slot] = False
                raise _Refused(-result, os.strerror(-result))
            raise OSError(-result, os.strerror(-result))
        return result

    def _submit(self) -> None:
        """Submit every queued iocb, then reap what completed inside ``io_submit``.

        One ``io_submit`` takes the whole batch unless the kernel refuses an iocb: it
        then takes those before it, and the refused one fails with the errno the next
        call reports. Afterwards nothing is queued.
        """
        self._flushes += 1
        queued, self._queued = self._queued, []
        submit_list, pointers = self._submit_list, self._pointers
        for index, slot in enumerate(queued):
            submit_list[index] = pointers[slot]
        start = 0
        while start < len(queued):
            rest = submit_list
            if start:  # after a refused iocb: the list from the next one on
                rest = ctypes.cast(
                    ctypes.addressof(submit_list) + start * self._pointer_size,
                    self._aio.iocb_pp,
                )
            try:
                taken = self._aio.io_submit(self._context, len(queued) - start, rest)
            except OSError as exc:
                self._submit_errors += 1
                slot = queued[start]
                self._refused[slot] = True
                self._finish(slot, -(exc.errno or errno.EIO))
                start += 1
                continue
            if not taken:  # the kernel took nothing and said nothing: do not spin
                for slot in queued[start:]:
                    self._finish(slot, -errno.EAGAIN)
                break
            self._submitted(taken)
            self._outstanding += taken
            self._max_outstanding = max(self._max_outstanding, self._outstanding)
            start += taken
        self._inline_reaps += self._reap()
        if self._outstanding and self._reaper_running:
            self._reaper_work.set()

    def _finish(self, slot: int, result: int) -> None:
        self._results[slot] = result
        task = self._waiters[slot]
        if task is not None:
            self._waiters[slot] = None
            trio.lowlevel.reschedule(task)

    def _reap(self, wait: bool = False) -> int:
        """Take every completion event posted so far; with *wait*, block for one first."""
        events = self._events
        count = self._aio.io_getevents(
            self._context, 1 if wait else 0, len(events), events, None if wait else self._no_wait
        )
        if not count:
            return 0
        results, waiters = self._results, self._waiters
        for event in events[:count]:  # _finish, inlined: this is the hot loop
            slot = event.data or 0  # a c_void_p field reads 0 back as None
            results[slot] = event.res
            task = waiters[slot]
            if task is not None:
                waiters[slot] = None
                trio.lowlevel.reschedule(task)
        self._outstanding -= count
        self._completed(count)
        return int(count)

    async def _wait(self, slot: int) -> int:
        """Wait for the event of *slot* and take its result.

        Shielded: a cancellation is delivered only after the completion.
        """
        cancelled = False
        if not self._reaper_running:
            while self._results[slot] is None:
                self._blocking_waits += 1
                with contextlib.suppress(InterruptedError):  # a signal: look again
                    self._reap(wait=True)
        else:

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                nonlocal cancelled
                cancelled = True
                return trio.lowlevel.Abort.FAILED  # the kernel still owns the buffer

            self._waiters[slot] = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(abort)
        result = self._results[slot]
        assert result is not None
        self._results[slot] = None
        if cancelled:
            await trio.lowlevel.checkpoint()  # delivers the cancellation, now safe
        return result

    def _is_direct(self, fd: int) -> bool:
        """Whether *fd* was opened O_DIRECT (its AIO is then asynchronous)."""
        direct = self._fd_is_direct.get(fd)
        if direct is None:
            direct = self._fd_is_direct[fd] = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        return direct

    # -- the engine hooks ------------------------------------------------------------
    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        # Our own view holds the buffer in place (no resize, no close) while the kernel
        # writes into it; it is released before returning, so the caller may release its.
        pin = memoryview(buffer)
        try:
            direct = self._is_direct(fd)
            slot = await self._acquire()
            try:
                return await self._read(slot, fd, address_of(pin), pin.nbytes, offset, direct)
            finally:
                self._release_slot(slot)
        except OSError as exc:
            if exc.errno == errno.EINVAL and _is_directory(fd):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR)) from None
            raise
        finally:
            pin.release()

    async def _read(
        self, slot: int, fd: int, address: int, size: int, offset: int, direct: bool
    ) -> int:
        """Read *size* bytes to *address*; short only at end of file (see base.py).

        The kernel finishes reads of regular files itself; further reads continue a
        short one wherever it does not, and split requests larger than it takes. A short
        read on an O_DIRECT fd is taken as end of file, the only place the kernel
        returns one: its rest would be unaligned, and refused.
        """
        done = 0
        while True:
            length = min(size - done, _MAX_LENGTH)
            if not direct:
                self._buffered_submits += 1
            count = await self._io(slot, _PREAD, fd, address + done, length, offset + done)
            done += count
            if done == size or not count:
                return done
            if count < length and (direct or offset + done >= os.fstat(fd).st_size):
                return done  # end of file: spare the read that would return 0

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        with write_source(data) as address:
            if not self._is_direct(fd):
                self._buffered_submits += 1
            length = min(len(data), _MAX_LENGTH)  # a short count is continued by base.py
            slot = await self._acquire()
            try:
                return await self._io(slot, _PWRITE, fd, address, length, offset)
            finally:
                self._release_slot(slot)

    async def _fsync(self, fd: int, datasync: bool) -> None:
        slot = await self._acquire()
        try:
            await self._io(slot, _FDSYNC if datasync else _FSYNC, fd, 0, 0, 0)
        except _Refused as exc:
            if exc.errno != errno.EINVAL:
                raise
            # No AIO fsync for this file (Linux < 4.18, or its file system): the plain
            # call, on the loop thread. It raises EINVAL too if the file has no fsync.
            self._fsync_fallbacks += 1
            self._fallbacks += 1
            self._submitted()
            if datasync:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
            self._completed()
        finally:
            self._release_slot(slot)

    def _extra_statistics(self) -> dict[str, int]:
        return {
            "outstanding": self._outstanding,
            "max_outstanding": self._max_outstanding,
            "buffered_submits": self._buffered_submits,
            "inline_reaps": self._inline_reaps,
            "reaper_reaps": self._reaper_reaps,
            "eventfd_wakeups": self._eventfd_wakeups,
            "empty_wakeups": self._empty_wakeups,
            "blocking_waits": self._blocking_waits,
            "slot_waits": self._slot_waits,
            "submit_errors": self._submit_errors,
            "fsync_fallbacks": self._fsync_fallbacks,
        }
