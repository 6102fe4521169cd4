"""The operations called directly, without the kernel: inode bookkeeping and error mapping."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
from pyfuse3 import FUSEError, RequestContext

from iofs.backends import Buffer, Capability, Engine
from iofs.daemon_log import AbandonedReplies
from iofs.fs import Filesystem, _may_access


@dataclass
class FakeContext:
    uid: int = os.geteuid()
    gid: int = os.getegid()
    pid: int = os.getpid()
    umask: int = 0o022


CTX = cast(RequestContext, FakeContext())


class RecordingEngine(Engine):
    """A fake engine that does the I/O and remembers what it was asked to do."""

    name = "recording"
    capabilities = Capability.BLOCKS_LOOP

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, object]] = []
        self.fail_with: BaseException | None = None

    async def _preadinto(self, fd: int, buffer: memoryview, offset: int) -> int:
        self.calls.append(("read", offset, len(buffer)))
        if self.fail_with is not None:
            raise self.fail_with
        return os.preadv(fd, [buffer], offset)

    async def _pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        self.calls.append(("write", offset, len(data)))
        return os.pwrite(fd, data, offset)

    async def _fsync(self, fd: int, datasync: bool) -> None:
        self.calls.append(("fsync", fd, datasync))
        os.fsync(fd)


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Filesystem]:
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    filesystem = Filesystem(root_fd, RecordingEngine())
    try:
        yield filesystem
    finally:
        filesystem.close()
        os.close(root_fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.trio
async def test_lookups_are_counted_and_forget_closes_the_handle(
    fs: Filesystem, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    before = open_fds()
    first = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
    second = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
    assert first.st_ino == second.st_ino != pyfuse3.ROOT_INODE
    assert fs.inodes[first.st_ino].lookups == 2
    assert open_fds() == before + 1  # one O_PATH handle per inode, not per lookup
    await fs.forget([(first.st_ino, 1)])
    assert open_fds() == before + 1
    await fs.forget([(first.st_ino, 1)])
    assert open_fds() == before
    with pytest.raises(OSError, match="forgotten"):
        fs.inodes[first.st_ino]


@pytest.mark.trio
async def test_hard_links_and_renames_keep_one_inode(fs: Filesystem, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    d = await fs.lookup(pyfuse3.ROOT_INODE, b"d", CTX)
    f = await fs.lookup(d.st_ino, b"f", CTX)
    linked = await fs.link(f.st_ino, pyfuse3.ROOT_INODE, b"g", CTX)
    assert linked.st_ino == f.st_ino and linked.st_nlink == 2
    await fs.rename(pyfuse3.ROOT_INODE, b"d", pyfuse3.ROOT_INODE, b"renamed", 0, CTX)
    again = await fs.lookup(d.st_ino, b"f", CTX)  # the directory inode still works
    assert again.st_ino == f.st_ino
    assert (await fs.getattr(d.st_ino, CTX)).st_mode & stat.S_IFDIR


@pytest.mark.trio
async def test_backing_errors_keep_their_errno(fs: Filesystem) -> None:
    calls: list[tuple[Callable[[], Awaitable[object]], int]] = [
        (lambda: fs.rmdir(pyfuse3.ROOT_INODE, b"missing", CTX), errno.ENOENT),
        (lambda: fs.readlink(pyfuse3.ROOT_INODE, CTX), errno.EINVAL),
        (lambda: fs.read(12345, 0, 1), errno.EBADF),
    ]
    for call, expected in calls:
        with pytest.raises(FUSEError) as info:
            await call()
        assert info.value.errno == expected


@pytest.mark.trio
async def test_a_missing_name_is_a_negative_entry_kept_for_the_entry_timeout(
    fs: Filesystem, tmp_path: Path
) -> None:
    """A negative entry (node 0) with the entry timeout, so that the kernel does not ask
    again before an open(O_CREAT); none with a timeout of 0, where only ENOENT says it."""
    entry = await fs.lookup(pyfuse3.ROOT_INODE, b"missing", CTX)
    assert (entry.st_ino, entry.entry_timeout) == (0, fs.entry_timeout) and entry.entry_timeout
    assert fs.counters()["inodes"] == 1  # nothing was counted for the kernel to forget
    (tmp_path / "file").write_bytes(b"x")
    file = await fs.lookup(pyfuse3.ROOT_INODE, b"file", CTX)
    with pytest.raises(FUSEError) as info:  # other errors stay errors
        await fs.lookup(file.st_ino, b"x", CTX)
    assert info.value.errno == errno.ENOTDIR
    fs.mount_entry_timeout = 0
    with pytest.raises(FUSEError) as info:
        await fs.lookup(pyfuse3.ROOT_INODE, b"missing", CTX)
    assert info.value.errno == errno.ENOENT
    assert fs.statistics().operations["lookup"].errors == 1  # the ENOTDIR only


@pytest.mark.trio
async def test_data_goes_through_the_engine(fs: Filesystem) -> None:
    info, _ = await fs.create(pyfuse3.ROOT_INODE, b"new", 0o644, os.O_RDWR, CTX)
    assert await fs.write(info.fh, 0, b"hello") == 5
    assert await fs.read(info.fh, 1, 3) == b"ell"
    await fs.fsync(info.fh, True)
    await fs.fsync(info.fh, False)
    engine = cast(RecordingEngine, fs.engine)
    assert [c[0] for c in engine.calls] == ["write", "read", "fsync", "fsync"]
    assert [c[2] for c in engine.calls if c[0] == "fsync"] == [True, False]
    await fs.release(info.fh)
    assert fs.counters()["open_files"] == 0


@pytest.mark.trio
async def test_a_bug_becomes_eio_and_is_logged(
    fs: Filesystem, caplog: pytest.LogCaptureFixture
) -> None:
    info, _ = await fs.create(pyfuse3.ROOT_INODE, b"f", 0o644, os.O_RDWR, CTX)
    engine = cast(RecordingEngine, fs.engine)
    engine.fail_with = ZeroDivisionError("bug")
    with caplog.at_level(logging.ERROR), pytest.raises(FUSEError) as raised:
        await fs.read(info.fh, 0, 10)
    assert raised.value.errno == errno.EIO
    assert fs.unexpected_errors == 1
    assert "unexpected error in read" in caplog.text and "ZeroDivisionError" in caplog.text
    engine.fail_with = OSError(errno.ENOSPC, "full")
    with pytest.raises(FUSEError) as raised:
        await fs.read(info.fh, 0, 10)
    assert raised.value.errno == errno.ENOSPC
    assert fs.unexpected_errors == 1


def _st(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "want", "uid", "groups", "allowed"),
    [
        (stat.S_IFREG | 0o640, os.R_OK, 1000, {1000}, True),  # owner
        (stat.S_IFREG | 0o640, os.W_OK, 1000, {1000}, True),
        (stat.S_IFREG | 0o640, os.X_OK, 1000, {1000}, False),
        (stat.S_IFREG | 0o640, os.R_OK, 2000, {100}, True),  # group member
        (stat.S_IFREG | 0o640, os.W_OK, 2000, {100}, False),
        (stat.S_IFREG | 0o640, os.R_OK, 3000, {3000}, False),  # other
        (stat.S_IFREG | 0o604, os.R_OK, 2000, {100}, False),  # group bits win over other
        (stat.S_IFREG | 0o000, os.R_OK | os.W_OK, 0, {0}, True),  # root
        (stat.S_IFREG | 0o600, os.X_OK, 0, {0}, False),  # root needs some x bit
        (stat.S_IFDIR | 0o600, os.X_OK, 0, {0}, True),
        (stat.S_IFREG | 0o000, os.F_OK, 3000, {3000}, True),
    ],
)
def test_access_check(mode: int, want: int, uid: int, groups: set[int], allowed: bool) -> None:
    assert _may_access(_st(mode, 1000, 100), want, uid, groups) is allowed


@pytest.mark.trio
async def test_a_removed_file_is_let_go_before_the_kernel_forgets_it(
    fs: Filesystem, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"x" * 5000)
    before = open_fds()
    entry = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
    info = await fs.open(entry.st_ino, os.O_RDONLY, CTX)
    await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
    assert open_fds() == before + 2  # still open: nothing is let go
    await fs.release(info.fh)
    assert open_fds() == before  # no name, no open file: the handle is closed
    attrs = await fs.getattr(entry.st_ino, CTX)  # still answered, from the last stat
    assert (attrs.st_nlink, attrs.st_size) == (0, 5000)
    with pytest.raises(FUSEError) as info_err:
        await fs.setxattr(entry.st_ino, b"user.x", b"1", CTX)
    assert info_err.value.errno == errno.ESTALE
    # A new file may get the old backing inode number: it must be a new inode here.
    (tmp_path / "g").write_bytes(b"new")
    new = await fs.lookup(pyfuse3.ROOT_INODE, b"g", CTX)
    assert new.st_ino != entry.st_ino
    await fs.forget([(entry.st_ino, 1)])
    assert open_fds() == before + 1  # g's handle only


@pytest.mark.trio
async def test_rename_over_a_file_lets_the_replaced_one_go(fs: Filesystem, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    os.link(tmp_path / "b", tmp_path / "b2")
    a = await fs.lookup(pyfuse3.ROOT_INODE, b"a", CTX)
    b = await fs.lookup(pyfuse3.ROOT_INODE, b"b", CTX)
    await fs.rename(pyfuse3.ROOT_INODE, b"a", pyfuse3.ROOT_INODE, b"b", 0, CTX)
    assert fs.inodes[b.st_ino].fd >= 0  # b2 still names it
    await fs.rename(pyfuse3.ROOT_INODE, b"b", pyfuse3.ROOT_INODE, b"b2", 0, CTX)
    with pytest.raises(OSError) as info:
        fs.inodes[b.st_ino]
    assert info.value.errno == errno.ESTALE
    assert fs.inodes[a.st_ino].fd >= 0


def test_abandoned_replies_are_warnings_not_errors() -> None:
    def level(message: str) -> str:
        record = logging.LogRecord("pyfuse3", logging.ERROR, "x", 1, message, (), None)
        assert AbandonedReplies().filter(record)
        return record.levelname

    gone = "fuse_releasedir(): fuse_reply_* failed with No such file or directory"
    assert level(gone) == "WARNING"
    assert level("fuse_read(): fuse_reply_* failed with Invalid argument") == "ERROR"
