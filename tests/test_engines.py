"""The contract every registered I/O engine keeps (see iofs/backends/base.py)."""

from __future__ import annotations

import errno
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofs.backends import ENGINES, Capability, Engine, EngineUnavailable, create_engine


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    name = request.param
    reason = ENGINES[name].probe()
    if reason is not None:
        pytest.skip(f"engine {name} cannot run here: {reason}")
    return create_engine(name)


@pytest.fixture
def rw_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
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
        os.close(dir_fd)
    assert engine.statistics().errors == 3


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """RLIMIT_FSIZE at 4 KiB (and SIGXFSZ ignored): writes past it stop short, then fail."""
    limit = 4096
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.trio
async def test_write_stopped_part_way_returns_the_short_count(
    engine: Engine, rw_fd: int, file_size_limit: int
) -> None:
    assert await engine.write(rw_fd, 1000, b"x" * 10_000) == file_size_limit - 1000
    with pytest.raises(OSError) as info:
        await engine.write(rw_fd, file_size_limit, b"y")
    assert info.value.errno == errno.EFBIG
    assert os.fstat(rw_fd).st_size == file_size_limit


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


def test_engines_declare_capabilities() -> None:
    for name, cls in ENGINES.items():
        assert cls.name == name
        assert isinstance(cls.capabilities, Capability)


def test_unknown_engine_is_one_clear_error() -> None:
    with pytest.raises(EngineUnavailable, match="unknown engine 'nope' \\(known: blocking"):
        create_engine("nope")
