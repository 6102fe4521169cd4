"""The io_uring engine: reads, writes and fsyncs go through one ring (`uring.Ring`),
submitted in batches and completed through an eventfd the event loop waits on.

Batching: an operation writes its SQE and yields once (a schedule point, not a cancel
point). Every task that ran in the same loop tick has queued its SQE by then, so the
first of them to resume submits them all with one ``io_uring_enter``. It then reaps the
completion queue straight away: page-cache hits complete inside the system call, so
their tasks find the result on resuming and never wait on the loop's epoll.

Completions that come later (cold data, O_DIRECT, buffered writes, fsync) signal the
eventfd registered with the ring. One reaper task, started by `start` in the caller's
nursery, waits for it with `trio.lowlevel.wait_readable` while something is outstanding,
reaps, and wakes the tasks whose operations completed. While nothing is outstanding it
waits on an event instead, so that the eventfd signals of inline completions do not wake
it for nothing. Without a started reaper (an engine used before `start`), a task that
must wait does so with a blocking ``io_uring_enter``, like the blocking engine.

At most ``config.queue_depth`` operations are in flight (the ring has the next power of
two entries); further operations wait for a slot. Each slot keeps a scratch mapping for
small buffered reads, so the hot path creates no ctypes objects. A task cancelled while
its operation is in flight keeps waiting (the kernel owns its buffer) and receives the
cancellation once the operation has completed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import weakref

import outcome
import trio

from . import uring
from .base import Buffer, Capability, Engine, EngineConfig

#: Buffered reads up to this size go through the slot's scratch mapping and are copied
#: out; larger ones are read straight into a buffer of their own.
_SCRATCH_SIZE = 64 * 1024


def _address(buffer: memoryview) -> int:
    """The address of *buffer*'s first byte (0 if it is empty); it must be writable."""
    if not buffer.nbytes:
        return 0
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def _bytes_address(data: bytes) -> int:
    """The address of the first byte of *data* (read-only, so not through from_buffer)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


class IoUringEngine(Engine):
    name = "io_uring"
    capabilities = Capability.KERNEL_ASYNC
    summary = "io_uring via ctypes: SQEs batched per loop tick, completions via an eventfd"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        depth = self.config.queue_depth
        self._ring = uring.Ring(uring.next_power_of_two(min(depth, uring.MAX_ENTRIES)))
        self._eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Closed once: by _shutdown, or when an engine that was never closed is collected.
        self._close_eventfd = weakref.finalize(self, os.close, self._eventfd)
        try:
            self._ring.register_eventfd(self._eventfd)
        except BaseException:
            self._ring.close()
            self._close_eventfd()
            raise
        slots = min(depth, self._ring.entries)
        self._free_slots = list(range(slots - 1, -1, -1))
        #: Tasks waiting for a slot, oldest first (a dict as an ordered set).
        self._slot_waiters: dict[trio.lowlevel.Task, None] = {}
        #: Per slot: the CQE's result once reaped, and the task waiting for it, if any.
        self._results: list[int | None] = [None] * slots
        self._waiters: list[trio.lowlevel.Task | None] = [None] * slots
        self._scratch: list[tuple[mmap.mmap, int] | None] = [None] * slots
        #: Submitted operations whose CQE has not been reaped yet.
        self._outstanding = 0
        #: Calls of _submit so far: tells an operation whether its SQE is still queued.
        self._flushes = 0
        self._reaper_scope: trio.CancelScope | None = None
        self._reaper_running = False
        self._reaper_done = trio.Event()
        self._reaper_work = trio.Event()  # set when the idle reaper has something to wait for
        # Counters for statistics().
        self._inline_reaps = 0
        self._reaper_reaps = 0
        self._eventfd_wakeups = 0
        self._empty_wakeups = 0
        self._blocking_waits = 0
        self._slot_waits = 0
        self._short_reads = 0
        self._submit_errors = 0

    @classmethod
    def probe(cls) -> str | None:
        return uring.probe()

    # -- lifecycle -------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        if self._reaper_scope is not None:
            raise RuntimeError(f"engine {self.name} is already started")
        self._reaper_scope = trio.CancelScope()
        try:
            nursery.start_soon(self._reap_completions, name="iofs-io_uring-reaper")
        except BaseException:
            self._reaper_scope = None
            raise
        self._reaper_running = True  # from now on, waiting tasks park for the reaper

    async def _shutdown(self) -> None:
        if self._reaper_scope is not None:
            self._reaper_scope.cancel()
            with trio.CancelScope(shield=True):  # it leaves at once: nothing is in flight
                await self._reaper_done.wait()
        self._ring.close()
        if self._close_eventfd.alive:
            trio.lowlevel.notify_closing(self._eventfd)
            self._close_eventfd()
        for index, scratch in enumerate(self._scratch):
            if scratch is not None:
                scratch[0].close()
                self._scratch[index] = None

    async def _reap_completions(self) -> None:
        """The reaper: wait on the eventfd while anything is outstanding, reap, repeat.

        Leaves only when cancelled and nothing is outstanding any more.
        """
        assert self._reaper_scope is not None
        try:
            with self._reaper_scope:
                reaped = 0
                while True:
                    # Idle while nothing is outstanding, unless the last wakeup found
                    # completions: then more are likely (O_DIRECT, cold data), and
                    # staying on the eventfd saves a hop through this Event per op.
                    if not self._outstanding and not reaped:
                        self._reaper_work = trio.Event()
                        await self._reaper_work.wait()
                    reaped = await self._reap_when_signalled()
        finally:
            # However the reaper was stopped (by _shutdown, or by its nursery being
            # cancelled), operations still in flight keep their tasks waiting and the
            # kernel their buffers: see them through before leaving.
            with trio.CancelScope(shield=True):
                while self._outstanding:
                    await self._reap_when_signalled()
            self._reaper_running = False
            self._reaper_done.set()

    async def _reap_when_signalled(self) -> int:
        """Wait for the eventfd, reap, and return how many CQEs that found."""
        await trio.lowlevel.wait_readable(self._eventfd)
        self._eventfd_wakeups += 1
        with contextlib.suppress(BlockingIOError):  # a wakeup for CQEs already reaped
            os.eventfd_read(self._eventfd)  # reset it before reaping, so nothing is missed
        reaped = self._reap()
        self._reaper_reaps += reaped
        if not reaped:
            self._empty_wakeups += 1  # signalled by CQEs already reaped inline
        return reaped

    # -- submitting and completing ---------------------------------------------------
    async def _acquire(self) -> int:
        """A free slot, waiting for one when ``queue_depth`` operations are in flight.

        A cancel point. Waiters are served in order: a released slot is handed to the
        first of them, never taken by an operation that started later.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._free_slots and not self._slot_waiters:
            return self._free_slots.pop()
        self._slot_waits += 1
        task = trio.lowlevel.current_task()
        self._slot_waiters[task] = None

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            del self._slot_waiters[task]  # nothing was handed to it yet
            return trio.lowlevel.Abort.SUCCEEDED

        slot: int = await trio.lowlevel.wait_task_rescheduled(abort)
        return slot

    def _release(self, slot: int) -> None:
        if self._slot_waiters:
            task = next(iter(self._slot_waiters))
            del self._slot_waiters[task]
            trio.lowlevel.reschedule(task, outcome.Value(slot))
        else:
            self._free_slots.append(slot)

    async def _io(
        self, slot: int, opcode: int, fd: int, address: int, length: int, offset: int, flags: int
    ) -> int:
        """Run one operation in *slot* and return its result (`OSError` for an errno).

        The buffer at *address* must stay put until this returns. Once the SQE is
        written, this returns only after its completion, even when cancelled.
        """
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._ring.prepare(opcode, fd, address, length, offset, flags, slot)
        # Let every task that is running in this tick queue its SQE too; the first of
        # them to resume submits all of them at once. The others find theirs submitted
        # and leave the SQEs queued since then to their own tasks: flushing those too
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
            raise OSError(-result, os.strerror(-result))
        return result

    def _submit(self) -> None:
        """Submit every queued SQE with one system call, then reap what completed inline.

        Afterwards no SQE is queued: any the kernel did not take has failed.
        """
        self._flushes += 1
        ring = self._ring
        batch = ring.pending
        try:
            taken = ring.submit()
        except OSError as exc:
            taken = batch - ring.pending
            self._fail_pending(-(exc.errno or errno.EIO))
        if taken < batch and ring.pending:  # the kernel took no more, and said nothing
            self._fail_pending(-errno.EAGAIN)
        if taken:
            self._submitted(taken)
            self._outstanding += taken
        reaped = self._reap()
        self._inline_reaps += reaped
        if self._outstanding and self._reaper_running:
            self._reaper_work.set()

    def _fail_pending(self, result: int) -> None:
        """Take back the SQEs the kernel did not take; their operations fail with *result*.

        Nothing is lost: whoever waits for them sees the error.
        """
        self._submit_errors += 1
        for slot in self._ring.discard_pending():
            self._finish(slot, result)

    def _finish(self, slot: int, result: int) -> None:
        self._results[slot] = result
        task = self._waiters[slot]
        if task is not None:
            self._waiters[slot] = None
            trio.lowlevel.reschedule(task)

    def _reap(self) -> int:
        cqes = self._ring.reap()
        if not cqes:
            return 0
        results, waiters = self._results, self._waiters
        for slot, result, _ in cqes:  # _finish, inlined: this is the hot loop
            results[slot] = result
            task = waiters[slot]
            if task is not None:
                waiters[slot] = None
                trio.lowlevel.reschedule(task)
        self._outstanding -= len(cqes)
        self._completed(len(cqes))
        return len(cqes)

    async def _wait(self, slot: int) -> int:
        """Wait for the CQE of *slot* and take its result.

        Shielded: a cancellation is delivered only after the completion.
        """
        cancelled = False
        if not self._reaper_running:
            while self._results[slot] is None:
                self._blocking_waits += 1
                self._ring.wait(1)
                self._reap()
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

    # -- the engine hooks ------------------------------------------------------------
    async def _read_rest(
        self, slot: int, fd: int, address: int, size: int, offset: int, done: int, length: int
    ) -> int:
        """Continue a read of *size* bytes that asked for *length* and got *done*.

        Reads are short only at end of file (see base.py).

        Further operations read the rest until the buffer is full or one returns 0.
        (The kernel finishes partial reads of regular files itself; this keeps the
        contract wherever it does not, and splits requests larger than it takes.) A
        short read on an O_DIRECT fd is taken as end of file, the only place the kernel
        returns one: its rest would be unaligned, and refused, and the file may have
        grown since.
        """
        count = done
        while True:
            if count < length:  # short, not just split
                if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                    return done
                if offset + done >= os.fstat(fd).st_size:
                    return done  # end of file: spare the read that would return 0
                self._short_reads += 1
            length = min(size - done, uring.MAX_LENGTH)
            count = await self._io(
                slot, uring.OP_READ, fd, address + done, length, offset + done, 0
            )
            done += count
            if done == size or count == 0:
                return done

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        if size > _SCRATCH_SIZE:
            return await super()._pread(fd, size, offset)
        slot = await self._acquire()
        try:
            scratch, address = self._scratch[slot] or self._new_scratch(slot)
            count = await self._io(slot, uring.OP_READ, fd, address, size, offset, 0)
            if 0 < count < size:
                count = await self._read_rest(slot, fd, address, size, offset, count, size)
            return scratch[:count]  # a copy: the slot's next operation reuses the scratch
        finally:
            self._release(slot)

    def _new_scratch(self, slot: int) -> tuple[mmap.mmap, int]:
        mapping = mmap.mmap(-1, _SCRATCH_SIZE)
        # The address stays valid while the mapping is open; the ctypes object need not
        # live (and must not, or closing the mapping would fail).
        scratch = self._scratch[slot] = (mapping, _address(memoryview(mapping)))
        return scratch

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        # Our own view holds the buffer in place (no resize, no close) while the kernel
        # writes into it; it is released before returning, so the caller may release its.
        pin = memoryview(buffer)
        try:
            address, size = _address(pin), pin.nbytes
            length = min(size, uring.MAX_LENGTH)
            slot = await self._acquire()
            try:
                count = await self._io(slot, uring.OP_READ, fd, address, length, offset, 0)
                if 0 < count < size:
                    count = await self._read_rest(slot, fd, address, size, offset, count, length)
                return count
            finally:
                self._release(slot)
        finally:
            pin.release()

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        pin: memoryview | None = None
        if isinstance(data, bytes):
            address = _bytes_address(data)  # immutable: our reference keeps them in place
        else:
            pin = memoryview(data)  # holds a bytearray's bytes in place, as in _preadinto
            if pin.readonly:  # e.g. a view of bytes: ctypes cannot take its address
                data = copy = pin.tobytes()
                pin.release()
                pin = None
                address = _bytes_address(copy)
            else:
                address = _address(pin)
        length = min(len(data), uring.MAX_LENGTH)  # a short count is continued by base
        try:
            slot = await self._acquire()
            try:
                return await self._io(slot, uring.OP_WRITE, fd, address, length, offset, 0)
            finally:
                self._release(slot)
        finally:
            if pin is not None:
                pin.release()

    async def _fsync(self, fd: int, datasync: bool) -> None:
        flags = uring.FSYNC_DATASYNC if datasync else 0
        slot = await self._acquire()
        try:
            await self._io(slot, uring.OP_FSYNC, fd, 0, 0, 0, flags)
        finally:
            self._release(slot)

    def _extra_statistics(self) -> dict[str, int]:
        return {
            "ring_entries": self._ring.entries,
            "outstanding": self._outstanding,
            "inline_reaps": self._inline_reaps,
            "reaper_reaps": self._reaper_reaps,
            "eventfd_wakeups": self._eventfd_wakeups,
            "empty_wakeups": self._empty_wakeups,
            "blocking_waits": self._blocking_waits,
            "slot_waits": self._slot_waits,
            "short_reads": self._short_reads,
            "submit_errors": self._submit_errors,
        }
