"""Reads started without a task (xfs mode on the dev transport: the reader prepares an
aligned O_DIRECT read, commits the batch, and whoever reaps the completion replies).

Each test reads through a real mount and checks every byte against the data it wrote,
so that a lost completion (a read that never returns), a reply to the wrong request
(another block's bytes) or a switch that closed an engine under its reads (a traceback
in the daemon's log, or a drain that finished before its reads) fails it.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs.backends import ENGINES
from iofs.control_protocol import MODE_XATTR
from iofs.modes import parse_setting

from .conftest import (
    Mount,
    MountFactory,
    finish_mount,
    mode_runs,
    needs_fuse,
    scratch_dir,
    start_mount,
)

pytestmark = needs_fuse

BLOCK = 4096
BLOCKS = 256
#: The file ends part way into a block: reads across the end are short.
TAIL = 1000
SIZE = BLOCKS * BLOCK + TAIL
#: Requests in flight at once (fio's iodepth 16 at the kernel).
READERS = 16
#: Seconds after which a read still unanswered counts as lost (not a timing target:
#: each read takes well under a second even on a loaded machine).
LOST = 300


#: What the file holds: a block's bytes are found nowhere else.
CONTENT = random.Random(12).randbytes(SIZE)


@pytest.fixture(scope="module")
def xfs_mount() -> Iterator[Mount]:
    """One xfs-mode mount over the dev transport, with ``data`` holding `CONTENT`."""
    reason = mode_runs("xfs", "dev")
    if reason is not None:
        pytest.skip(f"mode xfs cannot run here: {reason}")
    base = scratch_dir("iofs-taskfree-")
    (base / "b").mkdir()
    (base / "m").mkdir()
    (base / "b" / "data").write_bytes(CONTENT)
    mount = start_mount(
        base / "b", base / "m", base / "daemon.log", engine=None, mode="xfs", transport="dev"
    )
    try:
        yield mount
    finally:
        finish_mount(mount)  # fails on a traceback or an ERROR in the daemon's log
        shutil.rmtree(base, ignore_errors=True)


def direct_read(path: Path, offset: int, size: int) -> bytes:
    """*size* bytes at *offset* of *path*, read with O_DIRECT (an aligned buffer)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, max(size, BLOCK))
    try:
        with memoryview(buffer)[:size] as view:
            count = os.preadv(fd, [view], offset)
        return buffer[:count]
    finally:
        buffer.close()
        os.close(fd)


def buffered_read(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb", buffering=0) as file:
        file.seek(offset)
        return file.read(size)


def read_all(mnt: Mount, requests: list[tuple[int, int, bool]]) -> list[bytes]:
    """Issue *requests* ``(offset, size, direct)`` from `READERS` threads at once."""
    path = mnt.mountpoint / "data"

    def one(request: tuple[int, int, bool]) -> bytes:
        offset, size, direct = request
        return (direct_read if direct else buffered_read)(path, offset, size)

    pool = ThreadPoolExecutor(READERS)
    try:  # a read whose reply was lost would wait for ever: fail instead
        return list(pool.map(one, requests, timeout=LOST))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def operations(mnt: Mount) -> dict[str, dict[str, int]]:
    ops: dict[str, dict[str, int]] = mnt.statistics()["operations"]  # type: ignore[assignment]
    return ops


aligned = st.tuples(
    st.integers(0, BLOCKS + 1).map(lambda block: block * BLOCK),
    st.integers(1, 16).map(lambda blocks: blocks * BLOCK),  # up to 64 KiB: task-free
    st.just(True),
)
anything = st.tuples(st.integers(0, SIZE + BLOCK), st.integers(1, 200_000), st.just(False))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(aligned | anything, min_size=1, max_size=64))
def test_concurrent_reads_return_exactly_the_backing_bytes(
    xfs_mount: Mount, requests: list[tuple[int, int, bool]]
) -> None:
    """Aligned O_DIRECT reads (the task-free path, including reads across and past the
    end of the file) mixed with buffered reads of any range (the kernel's readahead,
    larger ones through tasks), many in flight at once: each returns exactly what a
    plain file holds there."""
    before = xfs_mount.statistics()
    results = read_all(xfs_mount, requests)
    for (offset, size, _), data in zip(requests, results, strict=True):
        assert data == CONTENT[offset : offset + size], (offset, size)
    after = xfs_mount.statistics()
    assert after["operations"]["read"]["errors"] == 0  # type: ignore[index]
    started = after["extra"]["transport_task_free_reads"]  # type: ignore[index]
    earlier = before["extra"]["transport_task_free_reads"]  # type: ignore[index]
    # Aligned O_DIRECT reads before the end (the kernel answers those at or past it
    # itself) went without a task: not necessarily all of them, the readahead of the
    # buffered ones may hold every slot (then a read takes the task path).
    if any(is_direct and offset < SIZE for offset, _, is_direct in requests):
        assert started > earlier


def test_task_free_reads_are_counted_like_any_read(mount_factory: MountFactory) -> None:
    """Per-operation counts, bytes and the engine's counters see each read once, and
    nothing is left in flight once every read returned (O_DIRECT only, on a mount of
    its own: the kernel's readahead of buffered reads may still be in flight then)."""
    if (reason := mode_runs("xfs", "dev")) is not None:
        pytest.skip(f"mode xfs cannot run here: {reason}")
    mnt = mount_factory(engine=None, mode="xfs", transport="dev")
    (mnt.backing / "data").write_bytes(CONTENT)
    requests = [(block * BLOCK, BLOCK, True) for block in range(BLOCKS)] * 2
    results = read_all(mnt, requests)
    assert results == [CONTENT[o : o + s] for o, s, _ in requests]
    read, engine = operations(mnt)["read"], mnt.engine_statistics()
    reads = len(requests)
    assert (read["count"], read["bytes"], read["errors"], read["in_flight"]) == (
        reads,
        reads * BLOCK,
        0,
        0,
    )
    assert (engine["reads"], engine["bytes_read"], engine["direct_ops"]) == (
        reads,
        reads * BLOCK,
        reads,
    )
    assert engine["details"]["task_free_reads"] == reads  # type: ignore[index]
    assert engine["in_flight"] == 0 and engine["max_in_flight"] >= 1
    assert mnt.counters()["transport_task_free_reads"] == reads


def switches(mnt: Mount) -> list[dict[str, object]]:
    records: list[dict[str, object]] = mnt.statistics()["switches"]  # type: ignore[assignment]
    return records


def switchable() -> list[str]:
    """Settings whose engines run here, two of them with task-free reads."""
    specs = ["xfs", "xfs,engine=aio", "blocking", "xfs"]
    return [s for s in specs if ENGINES[parse_setting(s).engine].probe() is None]


def test_switches_wait_for_task_free_reads_in_flight(xfs_mount: Mount) -> None:
    """Sixteen threads read at random while the mode switches between engines: every
    read returns its block, and every switch's old engine finished exactly the
    operations it held at the switch before it was closed (a drain that did not wait
    for reads started without a task would close the engine, and free its scratch
    buffers, under them)."""
    path = xfs_mount.mountpoint / "data"
    specs = switchable()
    stop = threading.Event()
    errors: list[str] = []
    done = [0] * READERS

    def reader(number: int) -> None:
        rng = random.Random(number)
        while not stop.is_set():
            block = rng.randrange(BLOCKS)
            data = direct_read(path, block * BLOCK, BLOCK)
            if data != CONTENT[block * BLOCK : (block + 1) * BLOCK]:
                errors.append(f"block {block}: wrong data")
                return
            done[number] += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        for switch in range(4 * len(specs)):
            # Wait until every reader has read since the last switch: reads overlap it.
            marks = list(done)
            while not errors and any(d == m for d, m in zip(done, marks, strict=True)):
                threading.Event().wait(0.001)
            os.setxattr(xfs_mount.mountpoint, MODE_XATTR, specs[switch % len(specs)].encode())
    finally:
        stop.set()
        for thread in threads:
            thread.join(LOST)
            assert not thread.is_alive(), "a read was never answered"
        os.setxattr(xfs_mount.mountpoint, MODE_XATTR, b"xfs")
    assert not errors, errors
    give_up = time.monotonic() + LOST  # a drain that never ends: its reads were lost
    while any(record["drained"] is None for record in switches(xfs_mount)):
        assert time.monotonic() < give_up, "an old engine never drained"
        threading.Event().wait(0.01)
    for record in switches(xfs_mount):
        assert record["finished_on_old"] == record["in_flight_at_switch"], json.dumps(record)
    assert xfs_mount.counters()["transport_task_free_reads"] > 0
