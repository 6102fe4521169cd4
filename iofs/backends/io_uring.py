"""The io_uring engine: reads, writes and fsyncs go through one ring (`iouring_abi.Ring`),
submitted in batches; the event loop's epoll tells when completions are waiting.

This file is the engine's kernel side only: how an operation becomes an SQE, how a
batch is submitted and CQEs are reaped, and the fd to wait on. Slots, batching,
parking, early submission, the reaper and short reads are the completion core's
(`completion.CompletionEngine`); what follows explains the design they share.

Batching: the first operation to write its SQE in a loop tick opens a batch and yields
once (a schedule point, not a cancel point). Every task that runs in the same tick
queues its SQE by then, so that task submits them all with one ``io_uring_enter`` when
it resumes. It then reaps the completion queue straight away: page-cache hits complete
inside the system call, so their tasks find the result on resuming and never wait on
the loop's epoll.

Completions that come later (cold data, O_DIRECT, buffered writes, fsync) are reaped by
one reaper task, started by `start` in the caller's nursery. While something is
outstanding it waits with `trio.lowlevel.wait_readable` on the ring's own fd, which
polls readable exactly while the completion queue holds CQEs; then it reaps, and wakes
the tasks whose operations completed. While nothing is outstanding it parks instead.
Without a started reaper (an engine used before `start`), a task that must wait does so
with a blocking ``io_uring_enter``, like the blocking engine.

Cost per operation. The engine runs on the event-loop thread, and at c=16 the loop and
the disk take turns: the disk here completes the requests it holds together (16 in
about 200-250 µs, one alone in about 40 µs), then sits idle while the loop handles the
16 completions and prepares 16 new requests, 20-30 µs of CPU each in Python. Each µs
per operation costs 16 µs a round, so the hot path is kept short (trio task steps per
O_DIRECT read: 3.06 before, 2.14 now; loop CPU per read with a fake ring that takes no
kernel time: 19 µs before, 12 µs now):

- Overlap. When the last batch went to the device (the core's `_park_early`), a batch that
  reaches `EARLY_SUBMIT` SQEs is submitted at once rather than at the end of the tick:
  the disk starts on those while the loop still handles the rest of the completions
  that just came in, instead of idling until all 16 are ready. Measured with
  ``iofs engines --bench`` (5 rounds, side by side): O_DIRECT 4 KiB reads at c=16
  went from 1.39-1.57x the blocking engine to 1.78-2.11x (chunks of 4; 8 did the same,
  2 and 1 less: each system call has its cost); cold buffered c=16 is noisier
  (1.42-1.60x before, 1.26-2.14x after). The loop's heartbeat lag rises a little with
  the throughput. Page-cache hits complete inside the system call, keep `_park_early`
  false and are batched per tick as before.
- Task switches (about 2-4 µs each in trio here). An operation that has to wait parks
  with `trio.lowlevel.wait_task_rescheduled`, and whoever reaps its CQE (the submitting
  task, inline, or the reaper) reschedules it directly: no Event, no second hop. When
  the last batch left operations in flight (O_DIRECT, cold reads), an operation that
  joins an open batch parks at once instead of yielding first, for the task that opened
  it submits its SQE: one switch per operation where there were two. When batches
  complete inline (hot data) every operation yields once as before, which is cheaper
  than parking (no abort callback, no wake-up by hand).
- Allocations. Each slot is a `completion.Slot` made once, with its result, its parked task, its
  abort callback and a scratch mapping; parked tasks are rescheduled with one shared
  outcome (`_RESUME`) rather than a new `outcome.Value` each time.
- Buffers. Buffered reads up to 64 KiB and aligned O_DIRECT reads up to 64 KiB go
  through the slot's page-aligned scratch mapping, whose address is known, and are
  copied out: no pooled buffer, no memoryview, no ctypes object per read.
- Wake-ups. The reaper waits on the ring fd rather than on an eventfd registered with
  the ring: its readiness is the state of the completion queue, so there is nothing to
  reset (an eventfd costs a read per wake-up) and no wake-up for CQEs that the
  submitting task already reaped inline (with an eventfd, about a third of the
  reaper's wake-ups on cold buffered reads found nothing).
- The ring (see `iouring_abi`): the SQ head is cached (the kernel moves it only inside
  ``io_uring_enter``), an SQE is one ``struct.pack_into``, and the ring is set up with
  IORING_SETUP_COOP_TASKRUN, so completions are not pushed onto the loop thread with an
  interrupt while it runs Python (it enters the kernel every tick anyway; asleep in
  epoll_wait, it is still woken).

Considered and left out: IORING_SETUP_DEFER_TASKRUN (CQEs are posted only inside an
``io_uring_enter`` with GETEVENTS: an extra system call per wake-up, for interrupts
COOP_TASKRUN already avoids) and IORING_SETUP_SINGLE_ISSUER (no measurable gain here,
and it would tie the ring to one thread). Waiting with ``io_uring_enter`` and a minimum
count would block the loop, so epoll stays the only way to wait.

At most ``config.queue_depth`` operations are in flight (the ring has the next power of
two entries); further operations wait for a slot. A task cancelled while its operation
is in flight keeps waiting (the kernel owns its buffer) and receives the cancellation
once the operation has completed.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass

import trio

from . import iouring_abi
from .base import Capability, EngineConfig, EngineUnavailable
from .completion import EARLY_SUBMIT, CompletionCounters, CompletionEngine

__all__ = ["EARLY_SUBMIT", "IoUringCounters", "IoUringEngine"]


@dataclass(frozen=True)
class IoUringCounters(CompletionCounters):
    #: Entries of the ring (``queue_depth`` rounded up to a power of two).
    ring_entries: int


class IoUringEngine(CompletionEngine):
    name = "io_uring"
    capabilities = Capability.KERNEL_ASYNC
    summary = "io_uring via ctypes: SQEs batched per loop tick, completions polled on the ring fd"
    OPCODES = (
        (iouring_abi.OP_READ, 0),
        (iouring_abi.OP_WRITE, 0),
        (iouring_abi.OP_FSYNC, 0),
        (iouring_abi.OP_FSYNC, iouring_abi.FSYNC_DATASYNC),
    )

    def __init__(self, config: EngineConfig | None = None) -> None:
        # Checked before the core makes a slot per operation in flight: a queue depth
        # of a billion would take tens of GiB before the ring could refuse it.
        depth = (config or EngineConfig()).queue_depth
        if depth > iouring_abi.MAX_ENTRIES:
            raise EngineUnavailable(
                f"engine {self.name!r} cannot run here: a ring holds at most "
                f"{iouring_abi.MAX_ENTRIES} entries (IORING_MAX_ENTRIES): use a queue depth "
                f"of at most {iouring_abi.MAX_ENTRIES}"
            )
        super().__init__(config)
        self._ring = iouring_abi.Ring(iouring_abi.next_power_of_two(depth))
        # Bound straight to the ring: no call in between on the hot path.
        self._prepare = self._ring.prepare
        self._poll = self._ring.reap
        # Readable exactly while the CQ holds CQEs (a level, not an edge): reaping, which
        # moves the CQ head, is all the resetting it takes.
        self._wait_fd = self._ring.fd

    @classmethod
    def probe(cls) -> str | None:
        return iouring_abi.probe()

    async def _shutdown(self) -> None:
        await self._stop_core()
        if not self._ring.closed:
            trio.lowlevel.notify_closing(self._ring.fd)  # epoll may still watch it
            self._ring.close()

    # -- the completion core's hooks ---------------------------------------------------
    def _commit(self) -> int:
        """One ``io_uring_enter`` for the batch; SQEs it did not take are refused."""
        ring = self._ring
        batch = ring.pending
        try:
            taken = ring.submit()
        except OSError as exc:
            taken = batch - ring.pending
            for index in ring.discard_pending():
                self._refuse(index, -(exc.errno or errno.EIO))
            return taken
        if taken < batch and ring.pending:  # the kernel took no more, and said nothing
            for index in ring.discard_pending():
                self._refuse(index, -errno.EAGAIN)
        return taken

    def _wait_for_completion(self) -> None:
        self._ring.wait(1)

    def counters(self) -> IoUringCounters:
        return IoUringCounters(**asdict(super().counters()), ring_entries=self._ring.entries)
