"""The closer: removed files' last descriptors closed in a thread, and waited for before
any request that could take or report space (iofs/closer.py). On a mount, over the dev
transport: tests/test_posix.py::test_full_filesystem_gives_short_writes_and_enospc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from iofs import closer as closer_module
from iofs.closer import Closer

from .conftest import finish_mount, needs_fuse, needs_root, scratch_dir, start_mount


def _removed(tmp_path: Path, name: str, size: int) -> int:
    """An O_PATH descriptor of a file of *size* bytes that has no name left."""
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    fd = os.open(path, os.O_PATH)
    path.unlink()
    return fd


def _still_open(fd: int, name: str) -> bool:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return False
    return target.endswith(f"/{name} (deleted)")


@pytest.mark.trio
async def test_files_with_blocks_are_closed_in_the_thread_and_waited_for(
    tmp_path: Path,
) -> None:
    closer = Closer()
    try:
        empty = _removed(tmp_path, "empty", 0)
        closer.close(empty)  # nothing to free: closed at once, by the caller
        assert not _still_open(empty, "empty") and closer.idle
        names = [f"f{i}" for i in range(closer_module.MAX_PENDING * 2)]  # beyond the queue
        fds = [_removed(tmp_path, name, 65536) for name in names]
        for fd in fds:
            closer.close(fd)
        await closer.wait()
        assert closer.idle
        assert not [name for fd, name in zip(fds, names, strict=True) if _still_open(fd, name)]
        waits = closer.waits
        await closer.wait()  # nothing pending: returns at once, not counted
        assert closer.waits == waits
    finally:
        closer.stop()


def test_stop_closes_what_is_pending(tmp_path: Path) -> None:
    closer = Closer()
    names = [f"g{i}" for i in range(8)]
    fds = [_removed(tmp_path, name, 65536) for name in names]
    for fd in fds:
        closer.close(fd)
    closer.stop()
    assert closer.idle
    assert not [name for fd, name in zip(fds, names, strict=True) if _still_open(fd, name)]
    closer.stop()  # twice: nothing to do


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


@needs_fuse
@needs_root
def test_space_freed_by_unlinks_and_renames_over_shows_to_the_next_statfs() -> None:
    """Files with blocks removed through the mount (unlink, the last of several links,
    rename over), then a statfs through the mount: it answers after the closer has
    closed them all, so the backing filesystem (a tmpfs of its own: exact figures) has
    all its space back, as it would after the same calls on it directly."""
    base = scratch_dir("iofs-closer-")
    backing, mountpoint = base / "backing", base / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(backing)], check=True)
    try:
        empty = _free(backing)
        mnt = start_mount(backing, mountpoint, base / "daemon.log")
        try:
            for round_ in range(3):
                names = [f"r{round_}-{i}" for i in range(12)]
                for name in names:
                    (mountpoint / name).write_bytes(os.urandom(256 * 1024))
                os.link(mountpoint / names[0], mountpoint / "second-name")
                assert _free(mountpoint) < empty
                os.unlink(mountpoint / names[0])  # a name is left: nothing freed
                (mountpoint / names[1]).rename(mountpoint / "second-name")  # frees names[0]
                for name in names[2:]:
                    os.unlink(mountpoint / name)
                os.unlink(mountpoint / "second-name")  # names[1]'s data
                assert _free(mountpoint) == empty  # the statfs waited for the closes
                assert _free(backing) == empty
        finally:
            finish_mount(mnt)
    finally:
        subprocess.run(["umount", str(backing)], check=False)
        shutil.rmtree(base, ignore_errors=True)
