"""The contract every registered I/O engine keeps (see iofs/backends/base.py)."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs.backends import (
    ENGINES,
    Capability,
    Engine,
    EngineConfig,
    EngineUnavailable,
    create_engine,
    engine_class,
    fallback_engine,
    forget_probes,
    running,
)

ENGINE_SETUPS = [(name, direct) for name in sorted(ENGINES) for direct in (False, True)]


@pytest.fixture(
    params=ENGINE_SETUPS,
    ids=[f"{name}-{'direct' if d else 'buffered'}" for name, d in ENGINE_SETUPS],
)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """Every registered engine, with and without O_DIRECT twins, started and drained."""
    name, direct = request.param
    reason = ENGINES[name].probe()
    if reason is not None:
        pytest.skip(f"engine {name} cannot run here: {reason}")
    async with running(create_engine(name, EngineConfig(direct=direct))) as started:
        yield started


@pytest.fixture
def rw_fd(tmp_path: Path, engine: Engine) -> Iterator[int]:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        engine.forget(fd)
        os.close(fd)


@pytest.mark.trio
async def test_write_then_read(engine: Engine, rw_fd: int) -> None:
    payload = os.urandom(200_000)
    assert await engine.write(rw_fd, 4096, payload) == len(payload)
    assert await engine.read(rw_fd, 4096, len(payload)) == payload
    assert await engine.read(rw_fd, 0, 4096) == bytes(4096)  # the hole reads as zeros


@pytest.mark.trio
async def test_read_is_short_only_at_end_of_file(engine: Engine, rw_fd: int) -> None:
    await engine.write(rw_fd, 0, b"0123456789")
    assert await engine.read(rw_fd, 6, 100) == b"6789"
    assert await engine.read(rw_fd, 10, 100) == b""
    assert await engine.read(rw_fd, 1 << 40, 100) == b""


@pytest.mark.trio
async def test_fsync_and_fdatasync(engine: Engine, rw_fd: int) -> None:
    await engine.write(rw_fd, 0, b"x")
    await engine.fsync(rw_fd, datasync=False)
    await engine.fsync(rw_fd, datasync=True)
    stats = engine.statistics()
    assert (stats.fsyncs, stats.fdatasyncs) == (1, 1)


@pytest.mark.trio
async def test_errors_carry_the_errno(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "ro").write_bytes(b"abc")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            await engine.write(fd, 0, b"x")
        assert info.value.errno == errno.EBADF
    finally:
        engine.forget(fd)  # the contract: forget an fd before closing it
        os.close(fd)
    with pytest.raises(OSError) as info:
        await engine.read(fd, 0, 1)  # closed
    assert info.value.errno == errno.EBADF
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            await engine.read(dir_fd, 0, 1)
        assert info.value.errno == errno.EISDIR
    finally:
        engine.forget(dir_fd)
        os.close(dir_fd)
    assert engine.statistics().errors == 3


@pytest.fixture
def file_size_limit(rw_fd: int) -> int:
    """The backing filesystem's largest file size (found by probing with sparse writes):
    a write across it stops short, a write at it fails with EFBIG.

    (Not RLIMIT_FSIZE: that limit is per process and would also stop pytest's own
    output when it goes to a file.)
    """
    return _largest_file_size(rw_fd)


def _largest_file_size(fd: int) -> int:
    low, high = 0, (1 << 63) - 1  # a byte can be written at low, not at high
    while high - low > 1:
        middle = (low + high) // 2
        try:
            os.pwrite(fd, b"x", middle)
        except OSError:
            high = middle
        else:
            low = middle
    os.ftruncate(fd, 0)
    return high


@pytest.mark.trio
async def test_write_stopped_part_way_returns_the_short_count(
    engine: Engine, rw_fd: int, file_size_limit: int
) -> None:
    limit = file_size_limit
    assert await engine.write(rw_fd, limit - 1000, b"x" * 10_000) == 1000
    with pytest.raises(OSError) as info:
        await engine.write(rw_fd, limit, b"y")
    assert info.value.errno in (errno.EFBIG, errno.EINVAL)  # ext4/XFS: EFBIG
    assert os.fstat(rw_fd).st_size == limit
    assert await engine.read(rw_fd, limit - 1000, 4096) == b"x" * 1000


@pytest.mark.trio
async def test_statistics_count_what_was_done(engine: Engine, rw_fd: int) -> None:
    await engine.write(rw_fd, 0, b"a" * 1000)
    await engine.write(rw_fd, 1000, b"b" * 24)
    await engine.read(rw_fd, 0, 4096)
    stats = engine.statistics()
    assert stats.engine == engine.name
    assert (stats.writes, stats.bytes_written) == (2, 1024)
    assert (stats.reads, stats.bytes_read) == (1, 1024)
    assert stats.in_flight == 0
    assert stats.max_in_flight >= 1
    with pytest.raises(AttributeError):
        stats.reads = 0  # type: ignore[misc]


@pytest.mark.trio
async def test_the_blocking_engines_own_read_and_write_do_what_the_base_class_does(
    tmp_path: Path,
) -> None:
    """BlockingEngine serves buffered reads and writes without the base class's layers:
    the same operations through both give the same results, errors and statistics
    (short writes at the file size limit, end of file, a bad descriptor included)."""
    own, base = create_engine("blocking", EngineConfig()), create_engine("blocking", EngineConfig())
    fds = [os.open(tmp_path / name, os.O_RDWR | os.O_CREAT, 0o644) for name in ("own", "base")]
    limit = _largest_file_size(fds[0])
    bad = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    operations = [
        ("write", 0, b"a" * 1000),
        ("write", 1000, b"b" * 24),
        ("read", 0, 4096),
        ("read", 1 << 20, 4096),
        ("write", limit - 1000, b"x" * 10_000),
        ("write", limit, b"y"),
        ("read", limit - 1000, 4096),
        ("read", -1, 10),
        ("read a directory", 0, 1),
    ]
    try:
        outcomes = []
        for engine, fd, read, write in (
            (own, fds[0], own.read, own.write),
            (
                base,
                fds[1],
                functools.partial(Engine.read, base),
                functools.partial(Engine.write, base),
            ),
        ):
            done: list[bytes | int | None] = []
            for kind, offset, argument in operations:
                target = bad if kind == "read a directory" else fd
                try:
                    if kind.startswith("read"):
                        assert isinstance(argument, int)
                        done.append(bytes(await read(target, offset, argument)))
                    else:
                        assert isinstance(argument, bytes)
                        done.append(await write(target, offset, argument))
                except OSError as exc:
                    done.append(exc.errno)
            outcomes.append((done, engine.statistics()))
        (own_done, own_stats), (base_done, base_stats) = outcomes
        assert own_done == base_done
        assert own_done[4] == 1000  # the short write
        assert own_stats == base_stats
        assert (own_stats.writes, own_stats.errors) == (3, 3)
    finally:
        for fd in (*fds, bad):
            os.close(fd)
        await own.aclose()
        await base.aclose()


def test_engines_declare_capabilities() -> None:
    for name, cls in ENGINES.items():
        assert cls.name == name
        assert isinstance(cls.capabilities, Capability)


def test_unknown_engine_is_one_clear_error() -> None:
    with pytest.raises(EngineUnavailable, match=r"unknown engine .nope. \(known: "):
        create_engine("nope")


# -- sizes, alignment and large requests ------------------------------------------------
@pytest.mark.trio
async def test_large_requests_at_unaligned_offsets(engine: Engine, rw_fd: int) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)
    assert await engine.write(rw_fd, 777, payload) == len(payload)
    assert await engine.read(rw_fd, 777, len(payload)) == payload
    assert await engine.read(rw_fd, 4096, 1 << 20) == payload[4096 - 777 : 4096 - 777 + (1 << 20)]
    assert os.pread(rw_fd, len(payload), 777) == payload  # what the kernel has, not a cache


@pytest.mark.trio
async def test_direct_engines_use_o_direct_for_aligned_requests(engine: Engine, rw_fd: int) -> None:
    await engine.write(rw_fd, 0, b"a" * 8192)  # aligned
    await engine.write(rw_fd, 100, b"b" * 10)  # unaligned
    await engine.read(rw_fd, 4096, 4096)  # aligned
    await engine.read(rw_fd, 90, 30)  # unaligned
    stats = engine.statistics()
    if engine.direct:
        assert (stats.direct_ops, stats.buffered, stats.bounced) == (2, 1, 1)
        assert os.pread(rw_fd, 30, 90) == b"a" * 10 + b"b" * 10 + b"a" * 10
    else:
        assert (stats.direct_ops, stats.buffered, stats.bounced) == (0, 0, 0)


@pytest.mark.trio
async def test_forget_closes_what_the_engine_opened_for_an_fd(
    engine: Engine, tmp_path: Path
) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    await engine.write(fd, 0, b"z" * 4096)
    before = len(os.listdir("/proc/self/fd"))
    engine.forget(fd)
    os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before - 1 - (1 if engine.direct else 0)


@pytest.mark.trio
async def test_einval_from_the_kernel_is_passed_on(engine: Engine, tmp_path: Path) -> None:
    """An fd the caller opened O_DIRECT refuses unaligned offsets with EINVAL."""
    if engine.direct:
        pytest.skip("with direct on, unaligned reads are bounced through aligned ones")
    (tmp_path / "d").write_bytes(b"q" * 8192)
    fd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as info:
            await engine.read(fd, 1, 4096)
        assert info.value.errno == errno.EINVAL
    finally:
        engine.forget(fd)
        os.close(fd)


@pytest.fixture
def tiny_fs() -> Iterator[Path]:
    """A 64 KiB tmpfs, so that ENOSPC can be arranged."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="iofs-tiny-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tiny", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


@pytest.mark.trio
async def test_a_full_file_system_gives_a_short_count_then_enospc(
    engine: Engine, tiny_fs: Path
) -> None:
    fd = os.open(tiny_fs / "big", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        written = await engine.write(fd, 0, b"x" * (1 << 20))
        assert 0 < written < 1 << 20
        with pytest.raises(OSError) as info:
            await engine.write(fd, written, b"y" * 8192)
        assert info.value.errno == errno.ENOSPC
        assert await engine.read(fd, 0, written) == b"x" * written
    finally:
        engine.forget(fd)
        os.close(fd)


# -- concurrency, cancellation and closing ----------------------------------------------
@pytest.mark.trio
async def test_many_concurrent_operations(engine: Engine, rw_fd: int) -> None:
    chunks = {i: os.urandom(4096 + 513 * (i % 5)) for i in range(200)}
    stride = 8 * 4096

    async def write_then_read(i: int) -> None:
        assert await engine.write(rw_fd, i * stride, chunks[i]) == len(chunks[i])
        assert await engine.read(rw_fd, i * stride, len(chunks[i])) == chunks[i]

    async with trio.open_nursery() as nursery:
        for i in chunks:
            nursery.start_soon(write_then_read, i)
    stats = engine.statistics()
    assert (stats.reads, stats.writes, stats.in_flight) == (200, 200, 0)
    if not engine.capabilities & Capability.BLOCKS_LOOP:
        assert stats.max_in_flight > 1


@pytest.mark.trio
async def test_cancellation_never_abandons_an_operation(engine: Engine, rw_fd: int) -> None:
    payload = os.urandom(1 << 20)
    await engine.write(rw_fd, 0, payload)
    finished: list[bytes] = []

    async def read() -> None:
        finished.append(bytes(await engine.read(rw_fd, 0, len(payload))))

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    # Every task has exited: none may have left an operation behind.
    assert engine.statistics().in_flight == 0
    assert all(data == payload for data in finished)
    assert await engine.read(rw_fd, 0, len(payload)) == payload  # still works


@pytest.mark.trio
async def test_close_while_busy_drains_then_refuses(engine: Engine, rw_fd: int) -> None:
    payload = os.urandom(256 * 1024)
    results: list[int] = []

    async def write(i: int) -> None:
        results.append(await engine.write(rw_fd, i * len(payload), payload))

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(write, i)
        await trio.testing.wait_all_tasks_blocked()
        await engine.aclose()
        assert engine.statistics().in_flight == 0
    assert results == [len(payload)] * 16
    assert os.pread(rw_fd, len(payload), 15 * len(payload)) == payload
    with pytest.raises(trio.ClosedResourceError):
        await engine.read(rw_fd, 0, 1)
    await engine.aclose()  # closing twice is harmless


# -- a property: any sequence of writes and reads matches an in-memory model ------------
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "read", "fsync"]),
        st.integers(0, 3 << 20),  # offset: aligned and not
        st.integers(0, (1 << 20) + 4096),  # size: zero, small, large
    ),
    max_size=12,
)


@pytest.mark.parametrize(
    ("name", "direct"),
    ENGINE_SETUPS,
    ids=[f"{n}-{'direct' if d else 'buffered'}" for n, d in ENGINE_SETUPS],
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS, aligned=st.booleans())
def test_reads_and_writes_match_a_model(
    name: str, direct: bool, tmp_path: Path, ops: list[tuple[str, int, int]], aligned: bool
) -> None:
    reason = ENGINES[name].probe()
    if reason is not None:
        pytest.skip(f"engine {name} cannot run here: {reason}")
    if aligned:  # make alignment likely, so the O_DIRECT paths get exercised
        ops = [(op, offset & ~4095, size & ~4095) for op, offset, size in ops]
    model = bytearray()
    path = tmp_path / "model"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    async def run() -> None:
        async with running(create_engine(name, EngineConfig(direct=direct))) as engine:
            try:
                for op, offset, size in ops:
                    if op == "write":
                        data = os.urandom(size)
                        assert await engine.write(fd, offset, data) == size
                        if size:
                            model.extend(bytes(max(0, offset + size - len(model))))
                            model[offset : offset + size] = data
                    elif op == "read":
                        assert await engine.read(fd, offset, size) == model[offset : offset + size]
                    else:
                        await engine.fsync(fd, datasync=bool(size % 2))
            finally:
                engine.forget(fd)

    try:
        trio.run(run)
        assert os.pread(fd, len(model) + 1, 0) == model
    finally:
        os.close(fd)


@pytest.mark.trio
async def test_nowait_reads_half_cached_ranges_completely(tmp_path: Path) -> None:
    """RWF_NOWAIT stops at the first uncached page: the rest must come from the fallback."""
    engines = [n for n, c in ENGINES.items() if c.capabilities & Capability.NOWAIT_FIRST]
    payload = os.urandom(1 << 20)
    path = tmp_path / "half"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        for name in engines:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead
            os.pread(fd, 64 * 1024, 0)  # the first 64 KiB are cached again
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_NORMAL)
            async with running(create_engine(name)) as engine:
                assert await engine.read(fd, 0, len(payload)) == payload
                stats = engine.statistics()
                engine.forget(fd)
            assert stats.fallbacks >= 1, stats
    finally:
        os.close(fd)


# -- probes: once per process ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ENGINES))
def test_a_passed_probe_is_not_run_again(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that passed is remembered (AIO's costs an RCU grace period on the loop);
    what depends on the configuration is still checked for every engine made."""
    cls = ENGINES[name]
    if cls.probe() is not None:
        pytest.skip(f"engine {name} cannot run here")
    forget_probes()
    calls: list[str] = []
    real_probe = cls.probe

    def counted() -> str | None:
        calls.append(name)
        return real_probe()

    monkeypatch.setattr(cls, "probe", counted)
    assert engine_class(name) is cls
    assert engine_class(name) is cls
    assert fallback_engine(name) is None
    assert calls == [name]


def test_a_refused_probe_is_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    forget_probes()
    answers = iter(["not today", None])
    monkeypatch.setattr(ENGINES["blocking"], "probe", lambda: next(answers))
    with pytest.raises(EngineUnavailable, match="cannot run here: not today"):
        engine_class("blocking")
    assert engine_class("blocking") is ENGINES["blocking"]


def test_a_config_refusal_is_checked_after_a_cached_probe() -> None:
    """io_uring's probe passes once; a queue depth beyond its ring still fails, each time."""
    if ENGINES["io_uring"].probe() is not None:
        pytest.skip("io_uring cannot run here")
    engine_class("io_uring")  # the probe passes, and is remembered
    for _ in range(2):
        with pytest.raises(EngineUnavailable, match="a ring holds at most"):
            create_engine("io_uring", EngineConfig(queue_depth=1 << 20))
