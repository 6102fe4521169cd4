"""The completion core of the kernel-async engines (aio, io_uring): fio's split, where the
core owns queueing and reaping and each engine is a small table of kernel hooks.

Why this module is long: slots, batching, the reaper, cancellation and the task-free
reads share the in-flight state and its invariants (a slot is the kernel's until its
completion is reaped), which read best in one place.

`CompletionEngine` owns everything that is the same whatever the kernel interface:

- Slots. At most ``config.queue_depth`` operations are in flight; each has a `Slot`
  made once (its result, its parked task, its abort callback, a scratch mapping), so
  the hot path allocates nothing. Further operations wait for a slot, in order: a
  released slot is handed to the oldest waiter, never taken by a later operation.
- Batching. The first operation to prepare in a loop tick opens a batch and yields once
  (a schedule point, not a cancel point). Every task that runs in the same tick
  prepares its operation by then, so that task commits them all with one system call
  when it resumes, then reaps at once: what completed inside the call (page-cache hits,
  buffered AIO) is found by its task on resuming, without a trip through epoll.
- Parking and early submission. When the last batch left operations in flight
  (O_DIRECT, cold data), an operation that joins an open batch parks at once rather
  than yielding first (one task switch where there were two), and a batch that reaches
  `EARLY_SUBMIT` operations is committed at once, so the device starts on those while
  the loop still prepares the rest. Whoever reaps a completion reschedules its parked
  task directly, with one shared outcome (`_RESUME`).
- The reaper. One task, started by `start` in the caller's nursery, waits with
  `trio.lowlevel.wait_readable` on the engine's `_wait_fd` while anything is
  outstanding, reaps and wakes the tasks whose operations completed; while nothing is
  outstanding it parks. Without a started reaper (an engine used before `start`), a
  task that must wait blocks in the kernel (`_wait_for_completion`), like the
  blocking engine.
- Cancellation. A task cancelled while its operation is in flight keeps waiting (the
  kernel owns its buffer) and receives the cancellation once the operation completed.
- Reads: short ones continued (`_read_rest`), small ones through the slot's scratch
  mapping (`_pread`). Counters: a frozen `CompletionCounters`; engines extend it.
- Task-free reads (`start_read`): an aligned read through an O_DIRECT twin, small
  enough for a slot's scratch mapping, is prepared by its caller without a task; the
  caller commits a batch of them (`commit`), and whoever reaps a completion calls the
  caller's function with the data (the dev transport replies from there). No task is
  started or switched to per read; the statistics and the drain count it all the same.

An engine supplies only the kernel side, as fio's engines supply ``prep``/``commit``/
``getevents``: `_prepare` (fill one request), `_commit` (hand the prepared ones to
the kernel), `_poll` (take completions) and `_wait_for_completion`, and the
fd `_wait_fd` that polls readable while completions wait (`_acknowledge_wakeup` resets
it if it is an edge, like an eventfd). `OPCODES` maps `READ`, `WRITE`, `FSYNC` and
`FDATASYNC` to the engine's own; each completion carries back its slot's index.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Final, TypeVar

import outcome
import trio

from .addresses import address_of, write_source
from .base import _OFF_MAX, DIRECT_ALIGN, Buffer, Engine, EngineConfig

#: The operations an engine prepares (the kernel's IOCB_CMD_* numbers, so that AIO
#: needs no translation).
READ: Final = 0
WRITE: Final = 1
FSYNC: Final = 2
FDATASYNC: Final = 3
#: Most bytes one read or write transfers (the kernel's MAX_RW_COUNT); ask for less.
MAX_LENGTH: Final = 0x7FFFF000
#: Reads up to this size (buffered, or aligned for O_DIRECT) go through the slot's
#: scratch mapping and are copied out; larger ones are read straight into a buffer.
SCRATCH_SIZE: Final = 64 * 1024
#: Operations after which a batch bound for the device is committed without waiting
#: for the end of the loop tick (measured: chunks of 4 and 8 did best, 1 and 2 less).
EARLY_SUBMIT: Final = 4

_T = TypeVar("_T")
#: What a task-free read calls on completion: ``done(token, count, data)``, *data* the
#: bytes read (a view valid only during the call) or None when *count* is ``-errno``
#: (``-EINVAL``: O_DIRECT refused the range; the caller reads it the usual way).
ReadDone = Callable[[Any, int, "memoryview | None"], None]


def _is_directory(fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        return False


class SubmitRefused(OSError):
    """The kernel refused the operation when it was committed: it never started."""


class _Resume(outcome.Outcome[None]):
    """What a parked task is rescheduled with: ``outcome.Value(None)``, made once.

    A fresh `outcome.Value` per wake-up (reschedule's default) cost about 0.7 µs here;
    this one may be unwrapped any number of times. The result travels in the `Slot`.
    """

    __slots__ = ()

    def unwrap(self) -> None:
        return None

    def send(self, gen: Generator[_T, None, object]) -> _T:
        return gen.send(None)

    async def asend(self, agen: AsyncGenerator[_T, None]) -> _T:
        return await agen.asend(None)


_RESUME = _Resume()


class Slot:
    """One of the ``queue_depth`` operation slots, made once; its index comes back
    with the operation's completion, its abort function is bound once."""

    __slots__ = (
        "abort",
        "cancelled",
        "done",
        "index",
        "refused",
        "result",
        "scratch",
        "scratch_address",
        "task",
        "token",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        #: The completion's result once reaped, until the operation takes it.
        self.result: int | None = None
        #: The kernel refused the operation at commit (`result` says why).
        self.refused = False
        #: The task parked until the completion is reaped, if one is.
        self.task: trio.lowlevel.Task | None = None
        #: That task was cancelled meanwhile: deliver it once the operation is done.
        self.cancelled = False
        self.abort = self._abort
        #: A page-aligned mapping for reads up to `SCRATCH_SIZE`, made on first use.
        self.scratch: mmap.mmap | None = None
        self.scratch_address = 0
        #: A task-free read's function to call on completion, and its argument.
        self.done: ReadDone | None = None
        self.token: Any = None

    def _abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self.cancelled = True
        return trio.lowlevel.Abort.FAILED  # the kernel still owns the buffer


@dataclass(frozen=True)
class CompletionCounters:
    """What the completion core counts, for `EngineStatistics.details`."""

    #: Committed operations whose completion has not been reaped yet, and the most ever.
    outstanding: int
    max_outstanding: int
    #: Completions reaped right after a commit (they completed inside the system call).
    inline_reaps: int
    #: Completions reaped by the reaper task (they completed later, asynchronously).
    reaper_reaps: int
    #: Times the reaper woke on the wait fd, and of those, times it found nothing.
    reaper_wakeups: int
    empty_wakeups: int
    #: Waits that blocked the loop thread in the kernel (no reaper started).
    blocking_waits: int
    #: Operations that waited for a free slot (``queue_depth`` in flight).
    slot_waits: int
    #: Reads the kernel returned short before end of file, continued.
    short_reads: int
    #: Operations the kernel refused at commit (they fail with its errno).
    submit_errors: int
    #: Reads started without a task (`start_read`).
    task_free_reads: int


class CompletionEngine(Engine):
    """The shared core of the kernel-async engines (see the module docstring)."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._slots = [Slot(index) for index in range(self.config.queue_depth)]
        self._free_slots = self._slots[::-1]  # taken from the end: slot 0 first
        #: Tasks waiting for a slot, oldest first (a dict as an ordered set).
        self._slot_waiters: dict[trio.lowlevel.Task, None] = {}
        #: Operations prepared and not yet committed.
        self._queued = 0
        #: Committed operations whose completion has not been reaped yet.
        self._outstanding = 0
        #: Calls of _submit so far: tells an operation whether it is still queued.
        self._flushes = 0
        #: A task has prepared this tick's first operation and will commit the batch.
        self._batch_open = False
        #: The last batch left operations in flight: expect this one to as well.
        self._park_early = False
        #: fd -> whether it was opened O_DIRECT (forgotten in `forget`).
        self._fd_is_direct: dict[int, bool] = {}
        self._reaper_scope: trio.CancelScope | None = None
        self._reaper_running = False
        self._reaper_done = trio.Event()
        #: The reaper, while it is parked with nothing outstanding.
        self._idle_reaper: trio.lowlevel.Task | None = None
        self._max_outstanding = 0
        self._inline_reaps = 0
        self._reaper_reaps = 0
        self._reaper_wakeups = 0
        self._empty_wakeups = 0
        self._blocking_waits = 0
        self._slot_waits = 0
        self._short_reads = 0
        self._submit_errors = 0
        self._task_free_reads = 0

    # -- the kernel hooks each engine implements ------------------------------------
    #: The engine's ``(opcode, flags)`` for `READ`, `WRITE`, `FSYNC` and `FDATASYNC`.
    OPCODES: ClassVar[tuple[tuple[int, int], ...]]
    #: Fill one request ``(opcode, fd, address, length, offset, flags, index)``, *index*
    #: back with its completion; set by the constructor (io_uring: its ring's `prepare`).
    _prepare: Callable[[int, int, int, int, int, int, int], None]

    #: Take the completions posted so far, without waiting, as ``(index, result,
    #: flags)``, *result* a count or ``-errno``; set by the constructor (io_uring: its
    #: ring's `reap`). And the fd that polls readable while completions wait.
    _poll: Callable[[], Sequence[tuple[int, int, int]]]
    _wait_fd: int

    @abc.abstractmethod
    def _commit(self) -> int:
        """Hand every prepared request to the kernel, never waiting for completions;
        return how many it took, passing each it refused to `_refuse`."""

    @abc.abstractmethod
    def _wait_for_completion(self) -> None:
        """Block until a completion is posted (may raise `InterruptedError`)."""

    def _acknowledge_wakeup(self) -> None:
        """Reset `_wait_fd` after a wake-up, before reaping (for an edge, e.g. an eventfd)."""

    def counters(self) -> CompletionCounters:
        return CompletionCounters(
            outstanding=self._outstanding,
            max_outstanding=self._max_outstanding,
            inline_reaps=self._inline_reaps,
            reaper_reaps=self._reaper_reaps,
            reaper_wakeups=self._reaper_wakeups,
            empty_wakeups=self._empty_wakeups,
            blocking_waits=self._blocking_waits,
            slot_waits=self._slot_waits,
            short_reads=self._short_reads,
            submit_errors=self._submit_errors,
            task_free_reads=self._task_free_reads,
        )

    def _extra_statistics(self) -> dict[str, int]:
        return asdict(self.counters())

    # -- lifecycle -------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        if self._reaper_scope is not None:
            raise RuntimeError(f"engine {self.name} is already started")
        self._reaper_scope = trio.CancelScope()
        try:
            nursery.start_soon(self._reap_completions, name=f"iofs-{self.name}-reaper")
        except BaseException:
            self._reaper_scope = None
            raise
        self._reaper_running = True  # from now on, waiting tasks park for the reaper

    async def _stop_core(self) -> None:
        """From `_shutdown` (nothing in flight): stop the reaper, free the scratch."""
        if self._reaper_scope is not None:
            self._reaper_scope.cancel()
            with trio.CancelScope(shield=True):  # it leaves at once: nothing is in flight
                await self._reaper_done.wait()
        for slot in self._slots:
            if slot.scratch is not None:
                slot.scratch.close()
                slot.scratch = None
        self._fd_is_direct.clear()

    def forget(self, fd: int) -> None:
        self._fd_is_direct.pop(fd, None)
        self._fd_is_direct.pop(self._twins.get(fd, -1), None)
        super().forget(fd)

    async def _reap_completions(self) -> None:
        """The reaper: wait for completions while anything is outstanding, reap, repeat.

        Leaves only when cancelled and nothing is outstanding any more.
        """
        assert self._reaper_scope is not None
        try:
            with self._reaper_scope:
                reaped = 0
                while True:
                    # Idle while nothing is outstanding, unless the last wakeup found
                    # completions: then more are likely (O_DIRECT, cold data), and
                    # staying on the wait fd saves a hop through the idle wait per batch.
                    if not self._outstanding and not reaped:
                        await self._idle()
                    reaped = await self._reap_when_signalled()
        finally:
            # However the reaper was stopped (by _shutdown, or by its nursery being
            # cancelled), operations still in flight keep their tasks waiting and the
            # kernel their buffers: see them through before leaving. Operations still
            # queued (their tasks may be parked already) are committed first.
            with trio.CancelScope(shield=True):
                while self._outstanding or self._queued:
                    if self._queued:
                        self._submit()
                    if self._outstanding:
                        await self._reap_when_signalled()
            self._reaper_running = False
            self._reaper_done.set()

    async def _idle(self) -> None:
        """Park the reaper until `_submit` leaves something outstanding (cancellable)."""
        self._idle_reaper = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._idle_reaper = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _reap_when_signalled(self) -> int:
        """Wait until completions are waiting, reap, and return how many that found."""
        await trio.lowlevel.wait_readable(self._wait_fd)
        self._reaper_wakeups += 1
        self._acknowledge_wakeup()
        reaped = self._reap()
        self._reaper_reaps += reaped
        if not reaped:
            self._empty_wakeups += 1  # reaped inline between the wake-up and now
        return reaped

    # -- slots -------------------------------------------------------------------------
    async def _acquire(self) -> Slot:
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

        slot: Slot = await trio.lowlevel.wait_task_rescheduled(abort)
        return slot

    def _release(self, slot: Slot) -> None:
        if self._slot_waiters:
            task = next(iter(self._slot_waiters))
            del self._slot_waiters[task]
            trio.lowlevel.reschedule(task, outcome.Value(slot))
        else:
            self._free_slots.append(slot)

    # -- submitting and completing ---------------------------------------------------
    async def _io(
        self, slot: Slot, op: int, fd: int, address: int, length: int, offset: int
    ) -> int:
        """Run one operation in *slot* and return its result (`OSError` for an errno,
        `SubmitRefused` if the kernel refused it at commit).

        The buffer at *address* must stay put until this returns. Once the operation is
        prepared, this returns only after its completion, even when cancelled.
        """
        if offset < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        opcode, flags = self.OPCODES[op]
        self._prepare(opcode, fd, address, length, offset, flags, slot.index)
        self._queued += 1
        if self._park_early and self._reaper_running and self._queued >= EARLY_SUBMIT:
            # Enough for the device to start on while the loop prepares the rest.
            self._submit()
            if slot.result is None:
                result = await self._wait(slot)
            else:
                result = slot.result
                slot.result = None
        elif self._batch_open and self._park_early and self._reaper_running:
            # The task that prepared this tick's first operation commits ours with it,
            # and the last batch did not complete inline: park at once, for the reaper
            # (or that task's inline reap) to wake us when the completion is in.
            result = await self._wait(slot)
        else:
            # Let every task that is running in this tick prepare its operation too;
            # the first of them to resume commits all of them at once. The others find
            # theirs committed and leave those prepared since then to their own tasks:
            # committing those too would split the next tick's batch into batches of one.
            flushes = self._flushes
            self._batch_open = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self._flushes == flushes:
                self._submit()
            if slot.result is None:
                result = await self._wait(slot)
            else:
                result = slot.result
                slot.result = None
        if result < 0:
            code = -result
            if code == errno.EINVAL and op == READ and _is_directory(fd):
                code = (
                    errno.EISDIR
                )  # AIO refuses to read a directory with EINVAL; pread says EISDIR
            if slot.refused:
                slot.refused = False
                raise SubmitRefused(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        return result

    def _submit(self) -> None:
        """Commit every prepared operation, then reap what completed inside the call.

        Afterwards nothing is queued: any operation the kernel refused has failed.
        """
        self._flushes += 1
        self._batch_open = False
        self._queued = 0
        taken = self._commit()
        if taken:
            self._submitted(taken)
            self._outstanding += taken
            if self._outstanding > self._max_outstanding:  # noqa: PLR1730 (a call less)
                self._max_outstanding = self._outstanding
        self._inline_reaps += self._reap()
        self._park_early = self._outstanding > 0
        if self._outstanding and self._idle_reaper is not None:
            trio.lowlevel.reschedule(self._idle_reaper, _RESUME)
            self._idle_reaper = None

    def _refuse(self, index: int, result: int) -> None:
        """The kernel refused the operation prepared with *index* (``-errno``)."""
        self._submit_errors += 1
        slot = self._slots[index]
        slot.refused = True
        self._finish(slot, result)

    def _finish(self, slot: Slot, result: int) -> None:
        if slot.done is not None:
            self._read_done(slot, result)
            return
        slot.result = result
        task = slot.task
        if task is not None:
            slot.task = None
            trio.lowlevel.reschedule(task, _RESUME)

    def _reap(self, wait: bool = False) -> int:
        """Take every completion posted so far (with *wait*, block for one first)."""
        if wait:
            self._wait_for_completion()
        events = self._poll()
        if not events:
            return 0
        slots, reschedule = self._slots, trio.lowlevel.reschedule
        for index, result, _ in events:  # _finish, inlined: this is the hot loop
            slot = slots[index]
            if slot.done is not None:
                self._read_done(slot, result)
                continue
            slot.result = result
            task = slot.task
            if task is not None:
                slot.task = None
                reschedule(task, _RESUME)
        count = len(events)
        self._outstanding -= count
        self._completed(count)
        return count

    async def _wait(self, slot: Slot) -> int:
        """Wait for the completion of *slot* and take its result.

        Parks the task for whoever reaps the completion if the reaper runs, else blocks
        in the kernel (committing first whatever is still queued: a wait for an
        operation the kernel never got would not end). Shielded: a cancellation is
        delivered only after the completion.
        """
        if self._reaper_running:
            slot.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(slot.abort)
        else:
            if self._queued:
                self._submit()
            while slot.result is None:
                self._blocking_waits += 1
                with contextlib.suppress(InterruptedError):  # a signal: look again
                    self._reap(wait=True)
        result = slot.result
        assert result is not None
        slot.result = None
        if slot.cancelled:
            slot.cancelled = False
            await trio.lowlevel.checkpoint()  # delivers the cancellation, now safe
        return result

    def _is_direct(self, fd: int) -> bool:
        """Whether *fd* was opened O_DIRECT (remembered until `forget`)."""
        if (direct := self._fd_is_direct.get(fd)) is None:
            direct = self._fd_is_direct[fd] = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        return direct

    # -- task-free reads ----------------------------------------------------------------
    def task_free_twin(self, fd: int, offset: int, size: int) -> int:
        """The O_DIRECT twin of *fd* that `start_read` may read *size* bytes at *offset*
        from without a task, or -1 (then use `read`): the range is aligned and fits a
        scratch mapping, a slot is free with nobody waiting for one, and the reaper runs.
        """
        if (
            (offset | size) % DIRECT_ALIGN
            or not 0 < size <= SCRATCH_SIZE
            or not self._free_slots
            or self._slot_waiters
            or not self._reaper_running
            or self._closing
            or not self.direct
            or offset + size + DIRECT_ALIGN > _OFF_MAX
        ):
            return -1
        try:
            return self._twin(fd)
        except OSError:
            return -1  # the usual path says why

    def start_read(self, twin: int, offset: int, size: int, done: ReadDone, token: Any) -> None:
        """Prepare a read `task_free_twin` allowed (nothing may await in between) and
        return: ``done(token, ...)`` is called once it completed, from whoever reaps it
        (another task's commit may). The caller `commit`s the batch, at the latest
        before its task waits; in flight, the read counts as any other (drain, stats)."""
        self._begin()
        self._direct_ops += 1
        self._task_free_reads += 1
        slot = self._free_slots.pop()
        if slot.scratch is None:
            self._new_scratch(slot)
        slot.done, slot.token = done, token
        opcode, flags = self.OPCODES[READ]
        self._prepare(opcode, twin, slot.scratch_address, size, offset, flags, slot.index)
        # Committed by the caller once it has read what the kernel queued: one system
        # call for them all (committing every EARLY_SUBMIT, as `_io` does, measured a
        # quarter more CPU per read on ext4, three commits where one would do).
        self._queued += 1

    def commit(self) -> None:
        """Commit the operations prepared and not committed yet (`start_read`'s).

        Should the reaper have stopped meanwhile (its nursery cancelled), wait for them
        here, blocking, as `_wait` does without a reaper: nobody else would reap them.
        """
        if self._queued:
            self._submit()
        while self._outstanding and not self._reaper_running:
            self._blocking_waits += 1
            with contextlib.suppress(InterruptedError):  # a signal: look again
                self._reap(wait=True)

    def _read_done(self, slot: Slot, result: int) -> None:
        """A task-free read completed with *result*: hand it over, free its slot."""
        done, token = slot.done, slot.token
        slot.done = slot.token = None
        assert done is not None and slot.scratch is not None
        try:
            if result >= 0:
                self._reads += 1
                self._bytes_read += result
                with memoryview(slot.scratch)[:result] as data:
                    done(token, result, data)
            else:
                if result == -errno.EINVAL:  # read again the usual way, counted there
                    self._direct_ops -= 1
                else:
                    self._errors += 1
                done(token, result, None)
        finally:
            self._end()
            self._release(slot)

    async def aclose(self) -> None:
        self.commit()  # task-free reads prepared and not committed yet: the drain waits
        await super().aclose()

    # -- the engine hooks of base.py ---------------------------------------------------
    async def _read_rest(
        self, slot: Slot, fd: int, address: int, size: int, offset: int, done: int, length: int
    ) -> int:
        """Continue a read of *size* bytes that asked for *length* and got *done*.

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
                if self._is_direct(fd):
                    return done
                if offset + done >= os.fstat(fd).st_size:
                    return done  # end of file: spare the read that would return 0
                self._short_reads += 1
            length = min(size - done, MAX_LENGTH)
            count = await self._io(slot, READ, fd, address + done, length, offset + done)
            done += count
            if done == size or count == 0:
                return done

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        if size > SCRATCH_SIZE:
            return await super()._pread(fd, size, offset)
        slot = await self._acquire()
        try:
            scratch = slot.scratch or self._new_scratch(slot)
            address = slot.scratch_address
            count = await self._io(slot, READ, fd, address, size, offset)
            if 0 < count < size:
                count = await self._read_rest(slot, fd, address, size, offset, count, size)
            return scratch[:count]  # a copy: the slot's next operation reuses the scratch
        finally:
            self._release(slot)

    async def _read_aligned(
        self, twin: int, start: int, length: int, skip: int, size: int
    ) -> Buffer:
        """`Engine._read_aligned`, through the slot's scratch mapping when it fits.

        The mapping is page-aligned, as O_DIRECT needs, and its address is known: this
        spares the base class's pooled buffer, its memoryviews and the ctypes object
        that `_preadinto` makes for the address (about 3 µs of a 4 KiB read's ~15).
        """
        if length > SCRATCH_SIZE:
            return await super()._read_aligned(twin, start, length, skip, size)
        slot = await self._acquire()
        try:
            scratch = slot.scratch or self._new_scratch(slot)
            # Short only at end of file, on an O_DIRECT fd (see _read_rest).
            count = await self._io(slot, READ, twin, slot.scratch_address, length, start)
            return scratch[skip : max(skip, min(count, skip + size))]  # a copy, as in _pread
        finally:
            self._release(slot)

    @staticmethod
    def _new_scratch(slot: Slot) -> mmap.mmap:
        mapping = slot.scratch = mmap.mmap(-1, SCRATCH_SIZE)
        # The address stays valid while the mapping is open; the ctypes object need not
        # live (and must not, or closing the mapping would fail).
        slot.scratch_address = address_of(memoryview(mapping))
        return mapping

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        # Our own view holds the buffer in place (no resize, no close) while the kernel
        # writes into it; it is released before returning, so the caller may release its.
        pin = memoryview(buffer)
        try:
            address, size = address_of(pin), pin.nbytes
            length = min(size, MAX_LENGTH)
            slot = await self._acquire()
            try:
                count = await self._io(slot, READ, fd, address, length, offset)
                if 0 < count < size:
                    count = await self._read_rest(slot, fd, address, size, offset, count, length)
                return count
            finally:
                self._release(slot)
        finally:
            pin.release()

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        length = min(len(data), MAX_LENGTH)  # a short count is continued by base.py
        with write_source(data) as address:
            slot = await self._acquire()
            try:
                return await self._io(slot, WRITE, fd, address, length, offset)
            finally:
                self._release(slot)

    async def _fsync(self, fd: int, datasync: bool) -> None:
        slot = await self._acquire()
        try:
            await self._io(slot, FDATASYNC if datasync else FSYNC, fd, 0, 0, 0)
        finally:
            self._release(slot)
