"""The io_uring ring module (iofs/backends/iouring_abi.py) and what the engine built on it
promises beyond the shared contract: batching, back-pressure, wake-ups on the ring fd,
cancellation and closing with operations in flight.

Operations that must stay in flight until the test says so read from a pipe: the
kernel completes them when the test writes to it. Nothing sleeps.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from iofs.backends import EngineConfig, running
from iofs.backends import iouring_abi as uring
from iofs.backends import seccomp as seccomp_module
from iofs.backends.completion import EARLY_SUBMIT, READ, Slot
from iofs.backends.io_uring import IoUringEngine

REASON = uring.probe()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"io_uring unusable: {REASON}")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def address_of(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    """A file holding 64 KiB of a known pattern, open for reading and writing."""
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 256)
    fd = os.open(path, os.O_RDWR)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe: a read of it stays in flight until the test writes."""
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.fixture
async def engine() -> AsyncIterator[IoUringEngine]:
    async with running(IoUringEngine()) as started:
        assert isinstance(started, IoUringEngine)
        yield started


# -- the ring ------------------------------------------------------------------------------
def test_setup_and_close_release_every_fd() -> None:
    before = open_fds()
    ring = uring.Ring(100)
    assert (ring.entries, ring.cq_entries) == (128, 256)  # rounded up; CQ twice the SQ
    assert not ring.closed
    assert open_fds() > before
    ring.close()
    ring.close()  # idempotent
    assert ring.closed
    assert open_fds() == before


def test_ring_size_is_checked() -> None:
    with pytest.raises(ValueError, match="entries"):
        uring.Ring(0)
    with pytest.raises(ValueError, match="entries"):
        uring.Ring(uring.MAX_ENTRIES + 1)


def test_read_write_and_fsync(data_fd: int) -> None:
    buffer = mmap.mmap(-1, 4096)
    with uring.Ring(4) as ring:
        buffer[:5] = b"hello"
        ring.prepare(uring.OP_WRITE, data_fd, address_of(buffer), 5, 100, 0, 1)
        assert ring.submit() == 1
        ring.wait(1)
        assert ring.reap() == [(1, 5, 0)]
        ring.prepare(uring.OP_READ, data_fd, address_of(buffer), 4096, 96, 0, 2)
        ring.prepare(uring.OP_FSYNC, data_fd, 0, 0, 0, uring.FSYNC_DATASYNC, 3)
        assert ring.submit() == 2
        completions: list[tuple[int, int, int]] = []
        while len(completions) < 2:
            ring.wait(1)
            completions += ring.reap()
        assert sorted(completions) == [(2, 4096, 0), (3, 0, 0)]
        assert buffer[:9] == bytes([96, 97, 98, 99]) + b"hello"
    buffer.close()


def test_errors_come_back_as_negative_errnos(tmp_path: Path) -> None:
    buffer = mmap.mmap(-1, 4096)
    results: dict[int, int] = {}
    with uring.Ring(4) as ring:
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        closed = os.dup(fd)
        os.close(closed)  # a number nothing else has now
        try:
            ring.prepare(uring.OP_READ, fd, address_of(buffer), 10, 0, 0, 1)
            ring.prepare(uring.OP_READ, closed, address_of(buffer), 10, 0, 0, 2)
            ring.submit()
            while len(results) < 2:
                ring.wait(1)
                results.update((user_data, res) for user_data, res, _ in ring.reap())
        finally:
            os.close(fd)
    buffer.close()
    assert results == {1: -errno.EISDIR, 2: -errno.EBADF}
    with pytest.raises(OSError) as info:
        uring.check(results[2])
    assert info.value.errno == errno.EBADF
    assert uring.check(7) == 7


def test_setup_falls_back_to_fewer_flags_on_einval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that refuses a flag (EINVAL) gets the next set of flags tried."""
    unknown = 1 << 31  # no such IORING_SETUP_* flag
    monkeypatch.setattr(uring, "_SETUP_FLAGS", (unknown | uring._SETUP_CLAMP, 0))
    with uring.Ring(2) as ring:
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 7)
        assert ring.submit() == 1
        ring.wait(1)
        assert ring.reap() == [(7, 0, 0)]


def test_pending_follows_prepare_submit_and_discard() -> None:
    with uring.Ring(4) as ring:
        for user_data in range(3):
            ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, user_data)
        assert ring.pending == 3
        assert ring.submit() == 3
        assert ring.pending == 0
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 3)
        assert ring.pending == 1
        assert ring.discard_pending() == [3]
        assert ring.pending == 0
        ring.wait(3)
        assert [user_data for user_data, _, _ in ring.reap()] == [0, 1, 2]


def test_a_full_submission_queue_is_refused_until_submitted() -> None:
    with uring.Ring(2) as ring:
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 10)
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 11)
        with pytest.raises(uring.RingFull):
            ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 12)
        assert ring.discard_pending() == [10, 11]
        assert ring.pending == 0
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 13)
        assert ring.submit() == 1
        ring.wait(1)
        assert ring.reap() == [(13, 0, 0)]  # the discarded ones never ran


def test_indices_wrap_around_both_rings() -> None:
    """Many rounds of varying size: the CQ is read across its end, in order."""
    seen: list[int] = []
    with uring.Ring(4) as ring:  # 4 SQEs, 8 CQEs
        next_id = 0
        for size in [3, 3, 4, 1, 4, 2, 4, 4, 3] * 3:
            for _ in range(size):
                ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, next_id)
                next_id += 1
            assert ring.submit() == size
            ring.wait(size)
            seen += [user_data for user_data, res, _ in ring.reap()]
    assert seen == list(range(next_id))


def test_the_ring_fd_polls_readable_while_cqes_wait() -> None:
    poller = select.poll()
    with uring.Ring(4) as ring:
        poller.register(ring.fd, select.POLLIN)
        assert poller.poll(0) == []
        ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 1)
        ring.submit()
        ring.wait(1)
        assert poller.poll(0) == [(ring.fd, select.POLLIN)]
        assert poller.poll(0) == [(ring.fd, select.POLLIN)]  # a level: still there
        assert ring.reap() == [(1, 0, 0)]
        assert poller.poll(0) == []  # moving the CQ head resets it


def test_a_registered_eventfd_is_signalled_when_completions_are_posted() -> None:
    eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with uring.Ring(4) as ring:
            ring.register_eventfd(eventfd)
            with pytest.raises(BlockingIOError):
                os.eventfd_read(eventfd)
            for user_data in range(3):
                ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, user_data)
            ring.submit()
            ring.wait(3)
            assert os.eventfd_read(eventfd) >= 1  # CQEs posted together may share a signal
            ring.unregister_eventfd()
            ring.prepare(uring.OP_NOP, -1, 0, 0, 0, 0, 9)
            ring.submit()
            ring.wait(1)
            with pytest.raises(BlockingIOError):
                os.eventfd_read(eventfd)
    finally:
        os.close(eventfd)


def test_the_kernel_reports_the_operations_used() -> None:
    with uring.Ring(1) as ring:
        assert {uring.OP_READ, uring.OP_WRITE, uring.OP_FSYNC} <= ring.supported_ops()


def test_next_power_of_two() -> None:
    assert [uring.next_power_of_two(n) for n in (0, 1, 2, 3, 64, 65)] == [1, 1, 2, 4, 64, 128]


# -- probe: one sentence per reason ------------------------------------------------------
def test_probe_says_when_the_sysctl_disables_io_uring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring, "_sysctl", lambda name: 2)
    assert uring.probe() == (
        "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)"
    )


@pytest.mark.parametrize(
    ("err", "disabled", "seccomp", "expected"),
    [
        (errno.EPERM, 1, False, "restricted to privileged processes and the group"),
        (errno.EPERM, 0, True, "refused (EPERM) by a seccomp filter"),
        (errno.ENOSYS, 0, True, "a seccomp filter hides it"),
        (errno.ENOSYS, 0, False, "built without CONFIG_IO_URING"),
        (errno.ENOMEM, 0, False, "cannot be set up here: Cannot allocate memory"),
    ],
)
def test_probe_explains_a_refused_setup(
    monkeypatch: pytest.MonkeyPatch, err: int, disabled: int, seccomp: bool, expected: str
) -> None:
    def refuse(entries: int) -> uring.Ring:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(uring, "Ring", refuse)
    monkeypatch.setattr(uring, "_sysctl", lambda name: disabled)
    monkeypatch.setattr(seccomp_module, "seccomp_filtered", lambda: seccomp)
    reason = uring.probe()
    assert reason is not None
    assert expected in reason
    assert "\n" not in reason


# -- the engine: batching, back-pressure, wakeups -----------------------------------------
@pytest.mark.trio
async def test_operations_started_in_one_tick_share_one_submission(
    engine: IoUringEngine, data_fd: int
) -> None:
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        results[i] = bytes(await engine.read(data_fd, i * 4096, 4096))

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(read, i)
    stats = engine.statistics()
    assert stats.max_batch == 16
    assert stats.submits == 1
    assert stats.completions == 16
    assert stats.details["inline_reaps"] == 16  # cached: complete inside io_uring_enter
    assert results == {i: (bytes(range(256)) * 16) for i in range(16)}


class TaskSteps(trio.abc.Instrument):
    """Counts the steps (runs between two switches) of the tasks named *name*."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.steps += 1


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    """Four pipes: reads of them stay in flight until the test writes."""
    made = [os.pipe() for _ in range(4)]
    try:
        yield made
    finally:
        for read_end, write_end in made:
            os.close(read_end)
            os.close(write_end)


@pytest.mark.trio
async def test_after_a_batch_left_in_flight_operations_park_at_once(
    engine: IoUringEngine, pipes: list[tuple[int, int]]
) -> None:
    """Once a batch did not complete inline, only the operation that opens the next
    batch yields; the others park at once and still share its submission."""
    results: dict[int, bytes] = {}

    async def read(i: int) -> None:
        results[i] = bytes(await engine.read(pipes[i][0], 0, 3))

    async def one_round(tag: bytes) -> int:
        steps = TaskSteps("reader")
        trio.lowlevel.add_instrument(steps)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(pipes)):
                    nursery.start_soon(read, i, name="reader")
                await trio.testing.wait_all_tasks_blocked()  # all four in flight
                for i, (_, write_end) in enumerate(pipes):
                    os.write(write_end, tag + bytes([48 + i]))
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert results == {i: tag + bytes([48 + i]) for i in range(len(pipes))}
        return steps.steps

    first = await one_round(b"ab")  # every reader yields, then parks
    second = await one_round(b"cd")  # one reader yields, the others park at once
    stats = engine.statistics()
    assert (stats.submits, stats.max_batch, stats.completions) == (2, 4, 8)
    assert second == first - (len(pipes) - 1)


@pytest.mark.trio
async def test_a_batch_bound_for_the_device_is_submitted_in_early_chunks(
    engine: IoUringEngine,
) -> None:
    """After a batch went to the device, every EARLY_SUBMIT SQEs are submitted at once,
    so the device starts on them while the loop prepares the rest of the tick's."""
    count = 3 * EARLY_SUBMIT + 1
    made = [os.pipe() for _ in range(count)]
    try:

        async def read(i: int, into: dict[int, bytes]) -> None:
            into[i] = bytes(await engine.read(made[i][0], 0, 2))

        async def one_round(tag: bytes) -> None:
            results: dict[int, bytes] = {}
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(read, i, results)
                await trio.testing.wait_all_tasks_blocked()  # all of them in flight
                for _, write_end in made:
                    os.write(write_end, tag)
            assert results == dict.fromkeys(range(count), tag)

        await one_round(b"ab")  # no batch went to the device yet: one submission
        assert (engine.statistics().submits, engine.statistics().max_batch) == (1, count)
        await one_round(b"cd")  # three early chunks, then the remainder at the tick's end
        stats = engine.statistics()
        assert (stats.submits, stats.max_batch, stats.completions) == (5, count, 2 * count)
    finally:
        for read_end, write_end in made:
            os.close(read_end)
            os.close(write_end)


@pytest.mark.trio
async def test_cancelled_while_parked_at_once_still_waits_for_the_completion(
    engine: IoUringEngine, pipes: list[tuple[int, int]]
) -> None:
    (first_end, first_writer), (second_end, second_writer) = pipes[:2]
    async with trio.open_nursery() as nursery:  # a batch left in flight
        nursery.start_soon(engine.read, first_end, 0, 1)
        await trio.testing.wait_all_tasks_blocked()
        os.write(first_writer, b"x")
    returned: list[bytes] = []

    async def read(fd: int) -> None:
        returned.append(bytes(await engine.read(fd, 0, 4)))

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, first_end)  # one opens the batch, one parks at once
            nursery.start_soon(read, second_end)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.testing.wait_all_tasks_blocked()
                assert engine.statistics().in_flight == 2  # the kernel owns both buffers
                os.write(first_writer, b"1111")
                os.write(second_writer, b"2222")
    assert scope.cancelled_caught
    assert returned == []  # delivered to both, after their completions
    stats = engine.statistics()
    assert (stats.in_flight, stats.completions, stats.submits) == (0, 3, 2)
    for fd in (first_end, second_end):
        os.set_blocking(fd, False)
        with pytest.raises(BlockingIOError):
            os.read(fd, 1)  # the kernel did read the data


@pytest.mark.trio
async def test_a_reaper_stopped_mid_batch_submits_what_is_queued(
    pipes: list[tuple[int, int]],
) -> None:
    """The reaper leaves while SQEs are queued and their tasks parked: it submits them.

    Which of the reaper and the readers runs first in the tick is up to trio, so
    each order is likely among the rounds; none may strand a reader.
    """
    for _ in range(20):
        engine = IoUringEngine()
        returned: list[bytes] = []

        async def read(fd: int, engine: IoUringEngine, returned: list[bytes]) -> None:
            returned.append(bytes(await engine.read(fd, 0, 2)))

        with trio.fail_after(10):
            async with trio.open_nursery() as outer, trio.open_nursery() as engine_nursery:
                engine.start(engine_nursery)
                outer.start_soon(read, pipes[0][0], engine, returned)  # left in flight
                await trio.testing.wait_all_tasks_blocked()
                os.write(pipes[0][1], b"ok")
                await trio.testing.wait_all_tasks_blocked()
                os.write(pipes[1][1], b"hi")  # ready: these complete inline
                os.write(pipes[2][1], b"yo")
                outer.start_soon(read, pipes[1][0], engine, returned)
                outer.start_soon(read, pipes[2][0], engine, returned)
                engine_nursery.cancel_scope.cancel()
            await engine.aclose()
        assert sorted(returned) == [b"hi", b"ok", b"yo"]
        assert engine.statistics().completions == 3


@pytest.mark.trio
async def test_direct_reads_go_through_the_slot_scratch(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "direct"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        async with running(IoUringEngine(EngineConfig(direct=True))) as engine:
            try:
                cases = [
                    (0, 4096),  # aligned
                    (8192, 65536),  # aligned, the whole scratch
                    (4096, 65536 + 4096),  # aligned, too large: a buffer of its own
                    (100, 300),  # unaligned: bounced
                    (4000, 200),  # unaligned, across a block boundary
                    (196608, 8192),  # aligned, short at end of file
                    (200_000, 4096),  # at end of file (unaligned)
                    (303_104, 4096),  # aligned, past it
                ]
                for offset, size in cases:
                    assert await engine.read(fd, offset, size) == data[offset : offset + size]
                stats = engine.statistics()
            finally:
                engine.forget(fd)
    finally:
        os.close(fd)
    if not stats.direct_ops:
        pytest.skip("this file system refuses O_DIRECT")
    assert (stats.direct_ops, stats.bounced) == (5, 3)


@pytest.mark.trio
async def test_more_operations_than_slots_wait_their_turn(data_fd: int) -> None:
    async with running(IoUringEngine(EngineConfig(queue_depth=3))) as engine:
        assert engine.statistics().details["ring_entries"] == 4
        sizes: list[int] = []

        async def read(i: int) -> None:
            sizes.append(len(await engine.read(data_fd, (i % 16) * 4096, 4096)))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(read, i)
        stats = engine.statistics()
    assert sizes == [4096] * 50
    assert stats.max_batch == 3  # never more SQEs than slots
    assert stats.details["slot_waits"] == 47
    assert stats.completions == 50


@pytest.mark.trio
async def test_completions_after_submit_wake_the_reaper(
    engine: IoUringEngine, pipe: tuple[int, int], data_fd: int
) -> None:
    read_end, write_end = pipe

    async def write_later() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the read is in flight
        assert engine.statistics().in_flight == 1
        os.write(write_end, b"abc")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_later)
        assert await engine.read(read_end, 0, 3) == b"abc"
    await engine.fsync(data_fd, datasync=False)  # done by a kernel worker: most likely later
    stats = engine.statistics()
    assert stats.completions == 2
    assert stats.details["reaper_reaps"] >= 1  # the read, at least: it waited for the write
    assert stats.details["reaper_wakeups"] >= 1
    assert stats.details["blocking_waits"] == 0


@pytest.mark.trio
async def test_an_engine_not_started_waits_by_blocking(data_fd: int) -> None:
    engine = IoUringEngine()
    try:
        assert await engine.write(data_fd, 0, b"xyz") == 3
        await engine.fsync(data_fd, datasync=True)
        assert await engine.read(data_fd, 0, 4) == b"xyz\x03"
        details = engine.statistics().details
        # The fsync, at least: it writes the dirty page and commits the journal, which
        # takes far longer than the moment between submitting and reaping inline.
        assert details["blocking_waits"] >= 1
        assert details["reaper_wakeups"] == 0
    finally:
        await engine.aclose()


# -- the engine: buffers, short reads, errors ---------------------------------------------
@pytest.mark.trio
async def test_every_kind_of_buffer_is_written(engine: IoUringEngine, data_fd: int) -> None:
    payload = os.urandom(300)
    mapping = mmap.mmap(-1, 300)
    mapping[:] = payload
    with memoryview(mapping) as mapped:
        kinds: list[bytes | bytearray | memoryview] = [
            payload,
            bytearray(payload),
            memoryview(payload),  # read-only
            memoryview(b"--" + payload)[2:],  # read-only, not at the start of its object
            memoryview(bytearray(payload)),
            mapped,
        ]
        for i, data in enumerate(kinds):
            assert await engine.write(data_fd, i * 1000, data) == 300
            assert os.pread(data_fd, 300, i * 1000) == payload
    mapping.close()  # the engine holds no view of it any more
    assert await engine.write(data_fd, 0, b"") == 0


@pytest.mark.trio
async def test_large_reads_use_their_own_buffer(engine: IoUringEngine, data_fd: int) -> None:
    expected = os.pread(data_fd, 65536, 0)
    assert await engine.read(data_fd, 0, 65536) == expected  # the slot's scratch buffer
    assert await engine.read(data_fd, 0, 65537) == expected  # larger: its own
    assert await engine.read(data_fd, 1, 200_000) == expected[1:]


class ShortReadsEngine(IoUringEngine):
    """Reads return at most 1000 bytes, as io_uring may do mid-file."""

    async def _io(
        self, slot: Slot, op: int, fd: int, address: int, length: int, offset: int
    ) -> int:
        if op == READ:
            length = min(length, 1000)
        return await super()._io(slot, op, fd, address, length, offset)


@pytest.mark.trio
async def test_short_reads_are_continued_until_end_of_file(data_fd: int) -> None:
    expected = os.pread(data_fd, 65536, 0)
    async with running(ShortReadsEngine()) as engine:
        assert await engine.read(data_fd, 10, 4096) == expected[10:4106]
        submits = engine.statistics().submits
        assert await engine.read(data_fd, 65000, 4096) == expected[65000:]
        # The last read ended at end of file: no further read to find a 0.
        assert engine.statistics().submits == submits + 1
        assert engine.statistics().details["short_reads"] == 4


@pytest.mark.trio
async def test_errors_carry_the_kernels_errno(
    engine: IoUringEngine, tmp_path: Path, pipe: tuple[int, int]
) -> None:
    read_end, _ = pipe
    with pytest.raises(OSError) as info:
        await engine.write(read_end, 0, b"x")  # the read end is not writable
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        await engine.fsync(read_end, datasync=False)  # a pipe cannot be synced
    assert info.value.errno == errno.EINVAL
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            await engine.read(fd, 0, 10)
        assert info.value.errno == errno.EISDIR
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        await engine.read(fd, 0, 10)  # closed now
    assert info.value.errno == errno.EBADF
    assert engine.statistics().errors == 4


# -- the engine: cancellation and closing --------------------------------------------------
@pytest.mark.trio
async def test_cancellation_waits_for_the_completion(
    engine: IoUringEngine, pipe: tuple[int, int]
) -> None:
    read_end, write_end = pipe
    returned: list[bytes] = []

    async def read() -> None:
        returned.append(bytes(await engine.read(read_end, 0, 4)))

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            # Cancelled, but the kernel still owns the buffer: the read stays in flight.
            with trio.CancelScope(shield=True):
                await trio.testing.wait_all_tasks_blocked()
                assert engine.statistics().in_flight == 1
                os.write(write_end, b"data")
    assert scope.cancelled_caught
    assert returned == []  # the cancellation was delivered, after the completion
    stats = engine.statistics()
    assert (stats.in_flight, stats.completions) == (0, 1)
    os.set_blocking(read_end, False)
    with pytest.raises(BlockingIOError):
        os.read(read_end, 1)  # the kernel did read the data


@pytest.mark.trio
async def test_close_while_busy_drains_then_releases_everything(
    pipe: tuple[int, int],
) -> None:
    read_end, write_end = pipe
    before = open_fds()
    engine = IoUringEngine()
    returned: list[bytes] = []

    async def read() -> None:
        returned.append(bytes(await engine.read(read_end, 0, 4)))

    async def close() -> None:
        await engine.aclose()
        closed.set()

    closed = trio.Event()
    async with trio.open_nursery() as nursery:
        engine.start(nursery)
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # waiting for the read
        with pytest.raises(trio.ClosedResourceError):
            await engine.read(read_end, 0, 1)  # no new operation meanwhile
        os.write(write_end, b"done")
    assert closed.is_set()
    assert returned == [b"done"]
    assert open_fds() == before  # the ring and its mappings are gone


@pytest.mark.trio
async def test_a_cancelled_reaper_still_completes_what_is_in_flight(
    pipe: tuple[int, int],
) -> None:
    """The reaper's nursery is cancelled before aclose: no operation is stranded."""
    read_end, write_end = pipe
    engine = IoUringEngine()
    returned: list[bytes] = []

    async def read() -> None:
        returned.append(bytes(await engine.read(read_end, 0, 2)))

    async with trio.open_nursery() as outer:
        outer.start_soon(read)
        async with trio.open_nursery() as engine_nursery:
            engine.start(engine_nursery)
            await trio.testing.wait_all_tasks_blocked()
            engine_nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.testing.wait_all_tasks_blocked()
                assert returned == []  # the reaper stays until the read completes
                os.write(write_end, b"ok")
    assert returned == [b"ok"]
    # Without a reaper the engine still works, waiting by blocking.
    os.write(write_end, b"hi")
    assert await engine.read(read_end, 0, 2) == b"hi"
    await engine.aclose()
