"""What the Linux AIO engine does beyond the contract (tests/test_engines.py covers that):
O_DIRECT for aligned requests, honest counts of what completed inside ``io_submit``,
batching, back-pressure, cancellation and closing with operations in the kernel, and
the one-line reasons of `AioEngine.probe`.

An operation that must still be in the kernel when the test acts is a read of the gate
daemon's file, which the daemon holds until the test lets it go. Nothing sleeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from iofs.backends import (
    DIRECT_ALIGN,
    Buffer,
    EngineConfig,
    EngineUnavailable,
    create_engine,
    forget_probes,
    running,
)
from iofs.backends import aio as aio_module
from iofs.backends.aio import AioEngine

from .conftest import FUSE_UNAVAILABLE
from .gate_daemon import pattern
from .test_engine_loop import TIMEOUT, Gate, gate  # noqa: F401 (gate: the fixture, see gated)

UNAVAILABLE = AioEngine.probe()
needs_aio = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

#: Size of the files on disk: an O_DIRECT read of them goes to the device, so it cannot
#: complete inside io_submit.
BIG = 4 << 20


@pytest.fixture
async def engine() -> AsyncIterator[AioEngine]:
    """The aio engine with its defaults (O_DIRECT on), started and drained."""
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    async with running(AioEngine()) as started:
        assert isinstance(started, AioEngine)
        yield started


@contextlib.contextmanager
def _open(engine: AioEngine, path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Iterator[int]:
    fd = os.open(path, flags, 0o644)
    try:
        yield fd
    finally:
        engine.forget(fd)  # closes the O_DIRECT twin opened for it
        os.close(fd)


@pytest.fixture
def rw_fd(engine: AioEngine, tmp_path: Path) -> Iterator[int]:
    with _open(engine, tmp_path / "data") as fd:
        yield fd


@pytest.fixture
def on_disk_fd(engine: AioEngine, tmp_path: Path) -> Iterator[int]:
    """A file of `BIG` bytes of `_pattern` whose data is on disk, not only in the cache."""
    path = tmp_path / "on-disk"
    with path.open("wb") as file:
        file.write(_pattern(BIG))
        os.fsync(file.fileno())
    with _open(engine, path, os.O_RDONLY) as fd:
        yield fd


def _pattern(size: int) -> bytes:
    return bytes(range(251)) * (size // 251) + bytes(range(size % 251))


def _details(engine: AioEngine) -> dict[str, int]:
    return dict(engine.statistics().details)


def _o_direct_fds_on(path: Path) -> int:
    """How many of our fds are open on *path* with O_DIRECT (from /proc/self/fdinfo)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != str(path):
                continue
            info = Path(f"/proc/self/fdinfo/{name}").read_text()
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        flags = int(info.split("flags:")[1].split()[0], 8)
        count += bool(flags & os.O_DIRECT)
    return count


# -- which path each request takes ------------------------------------------------------
@pytest.mark.trio
async def test_aligned_requests_go_through_o_direct(
    engine: AioEngine, rw_fd: int, tmp_path: Path
) -> None:
    assert engine.direct  # the engine's default
    await engine.write(rw_fd, 0, b"a" * 8192)  # aligned: the O_DIRECT twin
    await engine.write(rw_fd, 100, b"b" * 10)  # unaligned: the buffered fd
    assert await engine.read(rw_fd, 4096, 4096) == b"a" * 4096  # aligned: the twin
    assert await engine.read(rw_fd, 95, 20) == b"a" * 5 + b"b" * 10 + b"a" * 5  # bounced
    stats = engine.statistics()
    assert (stats.direct_ops, stats.bounced, stats.buffered) == (2, 1, 1)
    assert stats.submits == stats.completions == 4  # each one an AIO operation
    assert _details(engine)["buffered_submits"] == 1  # only the unaligned write
    assert _o_direct_fds_on(tmp_path / "data") == 1  # the twin really is O_DIRECT


@pytest.mark.trio
async def test_o_direct_reads_are_submitted_asynchronously(
    engine: AioEngine, on_disk_fd: int
) -> None:
    """An O_DIRECT read is not done inside io_submit. Whether it is reaped right after
    the submit or by the reaper depends on the disk (a host cache may answer at once);
    that a read held elsewhere completes through the reaper is shown deterministically
    by tests/test_engine_loop.py, on a FUSE file whose reads wait for the test."""
    assert await engine.read(on_disk_fd, 0, BIG) == _pattern(BIG)
    details = _details(engine)
    assert details["buffered_submits"] == 0
    assert details["inline_reaps"] + details["reaper_reaps"] == 1, details


@pytest.mark.trio
async def test_buffered_submissions_complete_inside_io_submit(tmp_path: Path) -> None:
    """Without O_DIRECT the kernel does the I/O in io_submit: counted, and no wakeups."""
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    async with running(AioEngine(EngineConfig(direct=False))) as engine:
        assert isinstance(engine, AioEngine)
        with _open(engine, tmp_path / "buffered") as fd:
            assert await engine.write(fd, 0, b"0123456789") == 10
            assert await engine.read(fd, 0, 4096) == b"0123456789"  # short: end of file
        details = _details(engine)
        assert details["buffered_submits"] == 2
        assert details["inline_reaps"] == 2
        assert (details["reaper_reaps"], details["reaper_wakeups"]) == (0, 0)


# -- batching and back-pressure ---------------------------------------------------------
@pytest.mark.trio
async def test_operations_of_one_tick_share_one_io_submit(
    engine: AioEngine, on_disk_fd: int
) -> None:
    results: dict[int, Buffer] = {}

    async def read(i: int) -> None:
        results[i] = await engine.read(on_disk_fd, i * DIRECT_ALIGN, DIRECT_ALIGN)

    async with trio.open_nursery() as nursery:
        for i in range(16):  # all start in the same tick
            nursery.start_soon(read, i)
    stats = engine.statistics()
    assert (stats.submits, stats.max_batch, stats.completions) == (1, 16, 16)
    expected = _pattern(16 * DIRECT_ALIGN)
    for i, data in results.items():
        assert data == expected[i * DIRECT_ALIGN : (i + 1) * DIRECT_ALIGN]


@pytest.mark.trio
async def test_queue_depth_caps_what_is_in_the_kernel(tmp_path: Path) -> None:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    depth, tasks, size = 4, 40, 64 * 1024
    payload = os.urandom(size)
    async with running(AioEngine(EngineConfig(queue_depth=depth))) as engine:
        assert isinstance(engine, AioEngine)
        with _open(engine, tmp_path / "pressure") as fd:
            os.ftruncate(fd, tasks * size)  # writes into holes: really asynchronous

            async def write_then_read(i: int) -> None:
                assert await engine.write(fd, i * size, payload) == size
                assert await engine.read(fd, i * size, size) == payload

            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    nursery.start_soon(write_then_read, i)
        stats = engine.statistics()
        details = _details(engine)
    assert (stats.writes, stats.reads, stats.errors) == (tasks, tasks, 0)
    assert details["max_outstanding"] == depth  # full, and never more
    assert stats.max_batch <= depth
    assert details["slot_waits"] >= tasks - depth
    # The base class counts requests waiting for a slot as in flight too.
    assert stats.max_in_flight > depth


@pytest.mark.trio
async def test_a_refused_operation_fails_alone(engine: AioEngine, tmp_path: Path) -> None:
    """io_submit refuses one iocb of a batch: that operation fails, the others run."""
    (tmp_path / "f").write_bytes(b"x" * 100)
    outcomes: dict[str, object] = {}

    async def read(name: str, fd: int) -> None:
        try:
            outcomes[name] = bytes(await engine.read(fd, 0, 100))
        except OSError as exc:
            outcomes[name] = exc.errno

    with (
        _open(engine, tmp_path / "f", os.O_RDONLY) as readable,
        _open(engine, tmp_path / "f", os.O_WRONLY) as write_only,
    ):
        async with trio.open_nursery() as nursery:  # one tick, so one batch
            nursery.start_soon(read, "first", readable)
            nursery.start_soon(read, "refused", write_only)  # reading it: EBADF
            nursery.start_soon(read, "third", readable)
    assert outcomes == {"first": b"x" * 100, "refused": errno.EBADF, "third": b"x" * 100}
    assert _details(engine)["submit_errors"] == 1
    assert engine.statistics().completions == 2


# -- fsync --------------------------------------------------------------------------------
@pytest.mark.trio
async def test_fsync_is_an_aio_operation(engine: AioEngine, rw_fd: int) -> None:
    await engine.write(rw_fd, 0, b"dirty" * 1000)
    before = engine.statistics().submits
    await engine.fsync(rw_fd, datasync=False)
    await engine.fsync(rw_fd, datasync=True)
    stats = engine.statistics()
    assert (stats.fsyncs, stats.fdatasyncs, stats.submits - before) == (1, 1, 2)
    assert (_details(engine)["fsync_fallbacks"], stats.fallbacks) == (0, 0)


@pytest.mark.trio
async def test_fsync_refused_by_aio_falls_back_to_the_plain_call(engine: AioEngine) -> None:
    """A pipe has no fsync: io_submit says EINVAL, so does the fallback, and we pass it on."""
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            await engine.fsync(read_end, datasync=False)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(read_end)
        os.close(write_end)
    assert _details(engine)["fsync_fallbacks"] == 1
    assert engine.statistics().fallbacks == 1


# -- cancellation and closing with an operation in the kernel ---------------------------
# The read goes to the gate daemon's file (tests/gate_daemon.py), which holds it until
# the test opens the gate: "in the kernel" is a state the test controls.
@pytest.fixture
def gated(request: pytest.FixtureRequest) -> Gate:
    if FUSE_UNAVAILABLE is not None:
        pytest.skip(FUSE_UNAVAILABLE)
    gate_ = request.getfixturevalue("gate")
    assert isinstance(gate_, Gate)
    return gate_


@pytest.fixture
def gate_fd(engine: AioEngine, gated: Gate) -> Iterator[int]:
    with _open(engine, gated.gate, os.O_RDONLY) as fd:
        yield fd


@pytest.mark.trio
async def test_cancellation_waits_for_the_operation_in_the_kernel(
    engine: AioEngine, gated: Gate, gate_fd: int
) -> None:
    scope = trio.CancelScope()
    outstanding_on_exit: list[int] = []

    async def read() -> None:
        try:
            with scope:
                await engine.read(gate_fd, 0, DIRECT_ALIGN)
        finally:
            outstanding_on_exit.append(_details(engine)["outstanding"])

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                assert await trio.to_thread.run_sync(gated.wait_parked) == 1
                assert _details(engine)["outstanding"] == 1
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert outstanding_on_exit == []  # still waiting: the kernel has the buffer
            finally:
                await trio.to_thread.run_sync(gated.open)
    assert scope.cancelled_caught  # delivered, once the kernel was done with the buffer
    assert outstanding_on_exit == [0]
    stats = engine.statistics()
    assert (stats.submits, stats.completions, stats.in_flight) == (1, 1, 0)


@pytest.mark.trio
async def test_aclose_waits_for_the_operation_in_the_kernel(
    engine: AioEngine, gated: Gate, gate_fd: int
) -> None:
    results: list[Buffer] = []
    closed = trio.Event()

    async def read() -> None:
        results.append(await engine.read(gate_fd, 0, DIRECT_ALIGN))

    async def close() -> None:
        await engine.aclose()
        closed.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                assert await trio.to_thread.run_sync(gated.wait_parked) == 1
                nursery.start_soon(close)
                await trio.testing.wait_all_tasks_blocked()
                assert not closed.is_set()  # draining
                assert _details(engine)["outstanding"] == 1
            finally:
                await trio.to_thread.run_sync(gated.open)
    assert closed.is_set()
    assert [bytes(data) for data in results] == [pattern(0, DIRECT_ALIGN)]
    assert _details(engine)["outstanding"] == 0
    with pytest.raises(trio.ClosedResourceError):
        await engine.read(gate_fd, 0, 1)


@pytest.mark.trio
async def test_without_start_a_waiting_operation_blocks_in_io_getevents(
    tmp_path: Path,
) -> None:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    engine = AioEngine()
    path = tmp_path / "unstarted"
    with path.open("wb") as file:
        file.write(_pattern(BIG))
        os.fsync(file.fileno())
    try:
        with _open(engine, path, os.O_RDONLY) as fd:
            assert await engine.read(fd, 0, BIG) == _pattern(BIG)
        details = _details(engine)
        # No reaper runs: reaped right after the submit (a fast disk), else waited for.
        assert details["reaper_reaps"] == 0, details
        assert details["inline_reaps"] == 1 or details["blocking_waits"] >= 1, details
    finally:
        await engine.aclose()


# -- probe ------------------------------------------------------------------------------
@pytest.fixture
def libaio_unloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next import of libaio load it afresh (monkeypatch restores the modules)."""
    for name in list(sys.modules):
        if name == "libaio" or name.startswith("libaio."):
            monkeypatch.delitem(sys.modules, name)
    forget_probes()  # create_engine probes afresh, without the library


def test_probe_without_libaio_so(monkeypatch: pytest.MonkeyPatch, libaio_unloaded: None) -> None:
    real_cdll = ctypes.CDLL

    def cdll(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        if name.startswith("libaio.so"):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    reason = AioEngine.probe()
    assert reason is not None and "install libaio1" in reason
    assert "\n" not in reason
    with pytest.raises(EngineUnavailable, match=r"engine 'aio' cannot run here: libaio\.so\.1"):
        create_engine("aio")


def test_probe_without_python_libaio(
    monkeypatch: pytest.MonkeyPatch, libaio_unloaded: None
) -> None:
    monkeypatch.setitem(sys.modules, "libaio", None)
    assert AioEngine.probe() == "python-libaio is not installed (pip install libaio)"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EAGAIN, "fs.aio-max-nr"),  # with the figures when /proc has them
        (errno.ENOSYS, "this kernel has no Linux AIO"),
        (errno.EPERM, "io_setup failed: Operation not permitted"),
    ],
)
def test_probe_when_io_setup_fails(
    monkeypatch: pytest.MonkeyPatch, code: int, expected: str
) -> None:
    def io_setup(nr_events: int, context: object) -> int:
        raise OSError(code, "io_setup")

    fake = types.ModuleType("libaio.libaio")
    fake.io_context_t = ctypes.c_void_p  # type: ignore[attr-defined]
    fake.io_setup = io_setup  # type: ignore[attr-defined]
    monkeypatch.setattr(aio_module, "_binding", lambda: fake)
    forget_probes()
    reason = AioEngine.probe()
    assert reason is not None and expected in reason
    assert "\n" not in reason


@needs_aio
def test_a_queue_depth_beyond_aio_max_nr_is_one_clear_error() -> None:
    depth = int(Path("/proc/sys/fs/aio-max-nr").read_text()) + 1
    with pytest.raises(
        EngineUnavailable, match=f"engine 'aio' cannot run here: an AIO context .*{depth} events"
    ):
        create_engine("aio", EngineConfig(queue_depth=depth))
