"""The inode table's descriptor budget, called in process: inodes whose descriptors were
let go are found again by file handle or by parent and name, and the table's contract
(renames of ancestors, hard links, removed nodes, ESTALE only where due) holds."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
import trio
import trio.testing
from pyfuse3 import FUSEError

from iofs.fs import Filesystem
from iofs.inodes import MIN_FD_BUDGET, probe_file_handles
from iofs.transport import protocol as p
from iofs.transport.dev import SetattrFields

from .conftest import ROOT
from .test_fs_inprocess import CTX, RecordingEngine

BUDGET = MIN_FD_BUDGET

# By file handle only where the daemon may use them (root); by name always.
FINDERS = ["by-name", pytest.param("handles", marks=pytest.mark.skipif(not ROOT, reason="root"))]


@pytest.fixture(params=FINDERS)
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Filesystem]:
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    handles = request.param == "handles"
    filesystem = Filesystem(root_fd, RecordingEngine(), fd_budget=BUDGET, file_handles=handles)
    assert filesystem.inodes.file_handles == handles, filesystem.inodes.no_handles_reason
    try:
        yield filesystem
    finally:
        filesystem.close()
        os.close(root_fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def lookup_path(fs: Filesystem, path: str) -> int:
    inode = pyfuse3.ROOT_INODE
    for part in path.split("/"):
        inode = (await fs.lookup(inode, part.encode(), CTX)).st_ino
    return inode


async def churn(fs: Filesystem, tmp_path: Path) -> None:
    """Touch more other inodes than the budget: every earlier one is let go."""
    (tmp_path / "churn").mkdir(exist_ok=True)
    for i in range(2 * BUDGET):
        (tmp_path / "churn" / str(i)).touch()
        await lookup_path(fs, f"churn/{i}")
    assert len(fs.inodes.lru) <= BUDGET


@pytest.mark.trio
async def test_descriptors_stay_within_the_budget(fs: Filesystem, tmp_path: Path) -> None:
    before = open_fds()
    for d in range(5):
        (tmp_path / f"d{d}").mkdir()
        for f in range(10):
            (tmp_path / f"d{d}" / f"f{f}").write_bytes(b"x" * (d * 10 + f))
    inodes = {}
    for d in range(5):
        for f in range(10):
            inodes[(d, f)] = await lookup_path(fs, f"d{d}/f{f}")
            assert len(fs.inodes.lru) <= BUDGET
    assert open_fds() <= before + BUDGET
    assert len(fs.inodes) == 1 + 5 + 50
    for (d, f), inode in inodes.items():  # each found again, with its own attributes
        attributes = await fs.getattr(inode, CTX)
        assert attributes.st_size == d * 10 + f
        assert attributes.st_ino == inode
    counters = fs.counters()
    assert counters["fd_evictions"] > 0 and counters["fd_reopens"] >= 50 - BUDGET
    assert open_fds() <= before + BUDGET


@pytest.mark.trio
async def test_a_renamed_ancestor_keeps_its_descendants(fs: Filesystem, tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_bytes(b"content")
    f = await lookup_path(fs, "a/b/c/f")
    await churn(fs, tmp_path)
    await fs.rename(pyfuse3.ROOT_INODE, b"a", pyfuse3.ROOT_INODE, b"z", 0, CTX)
    b = await lookup_path(fs, "z/b")
    await fs.rename(b, b"c", pyfuse3.ROOT_INODE, b"moved", 0, CTX)
    await churn(fs, tmp_path)
    info = await fs.open(f, os.O_RDONLY, CTX)
    assert await fs.read(info.fh, 0, 100) == b"content"
    await fs.release(info.fh)
    assert (await fs.getattr(f, CTX)).st_size == 7


@pytest.mark.trio
async def test_a_rename_behind_the_mounts_back(fs: Filesystem, tmp_path: Path) -> None:
    """By handle the inode is found wherever it went; by name it is stale (ESTALE), as
    an NFS client would say, and only until the kernel looks the new name up."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    f = await lookup_path(fs, "d/f")
    await churn(fs, tmp_path)
    os.rename(tmp_path / "d", tmp_path / "elsewhere")
    if fs.inodes.file_handles:
        assert (await fs.getattr(f, CTX)).st_size == 1
        return
    with pytest.raises(FUSEError) as info:
        await fs.getattr(f, CTX)
    assert info.value.errno == errno.ESTALE
    assert await lookup_path(fs, "elsewhere/f") == f  # the same inode, found again
    assert (await fs.getattr(f, CTX)).st_size == 1


@pytest.mark.trio
async def test_a_name_replaced_behind_the_mounts_back_is_stale(
    fs: Filesystem, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"x")
    f = await lookup_path(fs, "f")
    await churn(fs, tmp_path)
    os.rename(tmp_path / "f", tmp_path / "kept")  # kept: its number cannot be reused
    (tmp_path / "f").write_bytes(b"another file")
    if fs.inodes.file_handles:
        assert (await fs.getattr(f, CTX)).st_size == 1
    else:
        with pytest.raises(FUSEError) as info:
            await fs.getattr(f, CTX)  # never the other file's attributes
        assert info.value.errno == errno.ESTALE


@pytest.mark.trio
async def test_hard_links_share_one_inode_whatever_name_goes(
    fs: Filesystem, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"linked")
    f = await lookup_path(fs, "f")
    await fs.link(f, pyfuse3.ROOT_INODE, b"g", CTX)
    await churn(fs, tmp_path)
    await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)  # the name it was found by
    await churn(fs, tmp_path)
    attributes = await fs.getattr(f, CTX)
    assert (attributes.st_nlink, attributes.st_size) == (1, 6)
    assert await lookup_path(fs, "g") == f


@pytest.mark.trio
async def test_removed_nodes(fs: Filesystem, tmp_path: Path) -> None:
    """A removed directory still answers getattr (a process may still be in it); an
    unlinked file open through the mount still reads; the last close frees it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"open")
    d = await lookup_path(fs, "d")
    f = await lookup_path(fs, "f")
    info = await fs.open(f, os.O_RDONLY, CTX)
    await churn(fs, tmp_path)
    await fs.rmdir(pyfuse3.ROOT_INODE, b"d", CTX)
    await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
    await churn(fs, tmp_path)
    assert (await fs.getattr(d, CTX)).st_mode & stat.S_IFDIR
    assert fs.counters()["fds_pinned"] == 1
    assert (await fs.getattr(f, CTX)).st_nlink == 0
    assert await fs.read(info.fh, 0, 10) == b"open"
    await fs.release(info.fh)
    assert (await fs.getattr(f, CTX)).st_nlink == 0  # its last attributes
    with pytest.raises(FUSEError) as stale:
        await fs.open(f, os.O_RDONLY, CTX)
    assert stale.value.errno == errno.ESTALE
    await fs.forget([(d, 1)])
    assert fs.counters()["fds_pinned"] == 0


def _fields(valid: int) -> pyfuse3.SetattrFields:
    """What the dev transport hands `Filesystem.setattr` for a SETATTR's *valid* bits."""
    return cast(pyfuse3.SetattrFields, SetattrFields(valid))


@pytest.mark.trio
async def test_a_removed_files_last_descriptor_is_closed_once_replied(
    fs: Filesystem, tmp_path: Path
) -> None:
    """For a transport that calls back once it has sent a reply (the dev transport), the
    last descriptor of an unlinked file is handed then to the closer's thread: the file
    is freed after the caller's reply went out, and before any request that could take
    or report space is served."""
    (tmp_path / "f").write_bytes(b"x" * 8192)
    f = await lookup_path(fs, "f")
    (tmp_path / "g").write_bytes(b"g")
    g = await lookup_path(fs, "g")
    after_reply = fs.close_after_replies()
    held = open_fds()
    await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
    assert open_fds() == held  # the reply goes first
    assert (await fs.getattr(f, CTX)).st_nlink == 0
    assert fs.closer is not None
    gate = threading.Event()  # holds the closer's thread up, as a slow disk would

    def slow_close(fd: int) -> None:
        gate.wait()
        os.close(fd)

    fs.closer.close_in_thread = slow_close
    after_reply()
    await fs.getattr(f, CTX)  # neither takes nor reports space: does not wait
    answered: list[str] = []

    async def set_times() -> None:  # times only: does not wait either
        times = pyfuse3.EntryAttributes()
        times.st_atime_ns = times.st_mtime_ns = 10**18
        await fs.setattr(g, times, _fields(p.FATTR_ATIME | p.FATTR_MTIME), None, CTX)
        answered.append("times")

    async def statfs() -> None:  # reports space: waits until the file is freed
        await fs.statfs(CTX)
        answered.append(f"statfs {open_fds()}")

    async def truncate() -> None:  # a size may take space: waits too
        size = pyfuse3.EntryAttributes()
        size.st_size = 1 << 20
        await fs.setattr(g, size, _fields(p.FATTR_SIZE), None, CTX)
        answered.append(f"truncate {open_fds()}")

    async with trio.open_nursery() as nursery:
        try:
            for request in (set_times, statfs, truncate):
                nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            assert answered == ["times"] and open_fds() == held and not fs.closer.idle
            assert os.stat(tmp_path / "g").st_mtime_ns == 10**18
            assert os.stat(tmp_path / "g").st_size == 1
        finally:
            gate.set()  # (the waits are in threads: a failure must not leave them hanging)
    assert sorted(answered) == sorted(["times", f"statfs {held - 1}", f"truncate {held - 1}"])
    assert fs.closer.idle and os.stat(tmp_path / "g").st_size == 1 << 20
    after_reply()  # nothing left to close
    assert open_fds() == held - 1


@pytest.mark.trio
async def test_dot_dot_never_becomes_a_name(fs: Filesystem, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    a = await lookup_path(fs, "a")
    b = await lookup_path(fs, "a/b")
    assert (await fs.lookup(b, b"..", CTX)).st_ino == a
    assert fs.inodes[a].name == b"a"
    await churn(fs, tmp_path)
    assert (await fs.getattr(b, CTX)).st_ino == b


@pytest.mark.trio
async def test_reclaim_keeps_the_most_recent(fs: Filesystem, tmp_path: Path) -> None:
    (tmp_path / "f").touch()
    await churn(fs, tmp_path)
    newest = list(fs.inodes.lru)[-BUDGET:]
    fs.inodes.reclaim()
    assert list(fs.inodes.lru) == newest  # nothing the operation under way may use
    assert fs.counters()["fd_reclaims"] == 1


def test_the_probe_says_why_not(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        probed = probe_file_handles(fd)
        if ROOT:
            assert isinstance(probed, tuple), probed
            os.close(probed[0])
        else:
            assert probed == "open_by_handle_at needs CAP_DAC_READ_SEARCH"
    finally:
        os.close(fd)
