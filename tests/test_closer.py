"""The closer: removed files' last descriptors closed in a thread, and waited for before
any request that could take or report space (iofs/closer.py). On a mount, over the dev
transport: tests/test_posix.py::test_full_filesystem_gives_short_writes_and_enospc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from iofs import closer as closer_module
from iofs.closer import Closer


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
