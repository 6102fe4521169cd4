"""The passthrough mode (FUSE passthrough, Linux 6.9): file data moves between the kernel
and the backing file without the daemon, over the dev transport.

Differential tests and fio verify on a passthrough mount; live switches into and out of
it under a writer, with a file open across them; the page cache kept coherent across
switches (mmap, O_DIRECT, truncate, fsync); and one-line refusals where it cannot run
(the pyfuse3 transport, the writeback cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from iofs.control_protocol import MODE_XATTR
from iofs.fs import PassthroughInfo
from iofs.modes import parse_setting
from iofs.transport import create_transport
from iofs.transport import protocol as p
from iofs.transport.dev import _open_out

from . import test_posix
from .conftest import ROOT, Mount, MountFactory, finish_mount, mode_runs, scratch_dir, start_mount
from .test_differential import run_machine
from .test_transport import Harness, _init_body

REASON = mode_runs("passthrough", "dev")
pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.skipif(REASON is not None, reason=f"passthrough cannot run here: {REASON}"),
]
PAGE = mmap.PAGESIZE


@pytest.fixture
def mount_transport() -> str:
    """Every mount of this module goes over the dev transport."""
    return "dev"


@pytest.fixture
def mnt(mount_factory: MountFactory) -> Mount:
    """A passthrough mount (the POSIX tests below run on it)."""
    return mount_factory(engine=None, mode="passthrough")


# -- the POSIX tests on a passthrough mount ----------------------------------------------------
test_posix_round_trip = test_posix.test_files_round_trip_to_backing
test_posix_write_through_read_only_fd = test_posix.test_write_through_read_only_fd_fails_with_ebadf
test_posix_o_direct = test_posix.test_o_direct_read_and_write
test_posix_unaligned_o_direct = test_posix.test_unaligned_o_direct_does_not_hurt_the_daemon
test_posix_hard_links = test_posix.test_hard_links_share_one_inode
test_posix_open_unlinked = test_posix.test_open_unlinked_file_keeps_working
test_posix_truncate_chmod = test_posix.test_truncate_chmod_and_sizes
test_posix_errnos = test_posix.test_errors_keep_their_errno


def test_posix_set_id_bits(mount_factory: MountFactory, plain: Path) -> None:
    """A user's write through the mount drops set-ID bits as natively: such files are
    not passed through (a passthrough write runs with the daemon's credentials)."""
    for script in ("echo more >> prog", "truncate -s 2 prog", "echo new > prog"):
        shutil.rmtree(plain)
        plain.mkdir()

        def factory(**kwargs: object) -> Mount:
            return mount_factory(**{**kwargs, "engine": None, "mode": "passthrough"})

        test_posix.test_changes_by_a_user_clear_set_id_bits(factory, plain, script)


def test_state_machine_in_passthrough() -> None:
    """The differential state machine (test_differential) on a passthrough mount."""
    base = scratch_dir("iofs-passthrough-diff-")
    try:
        backing, mountpoint, plain = base / "backing", base / "mnt", base / "plain"
        for directory in (backing, mountpoint, plain):
            directory.mkdir()
        mount = start_mount(
            backing, mountpoint, base / "daemon.log", engine=None, mode="passthrough",
            transport="dev",
        )  # fmt: skip
        try:
            run_machine(mountpoint, plain, 100)
            assert counters(mount)["passthrough_opens"] > 0
        finally:
            finish_mount(mount)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------------
def counters(mnt: Mount) -> dict[str, int]:
    return mnt.counters()


def data_requests(mnt: Mount) -> int:
    """Reads and writes the daemon served (every engine's, draining ones too)."""
    operations = mnt.statistics()["operations"]
    assert isinstance(operations, dict)
    return sum(operations.get(op, {}).get("count", 0) for op in ("read", "write"))


def switch(mnt: Mount, spec: str) -> None:
    os.setxattr(mnt.mountpoint, MODE_XATTR, spec.encode())


def wait_until_released(mnt: Mount) -> None:
    """Until the daemon has seen every RELEASE: the kernel sends them after close(2)
    returns, so the daemon's open files lag behind the application's."""
    deadline = time.monotonic() + 30
    while counters(mnt)["open_files"]:
        assert time.monotonic() < deadline, "files still open in the daemon after 30 s"
        time.sleep(0.005)


@contextlib.contextmanager
def opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def block(seed: int, size: int = PAGE) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


# -- what bypasses the daemon ----------------------------------------------------------------------
def test_file_data_bypasses_the_daemon(mnt: Mount) -> None:
    """Reads and writes of files opened in passthrough never reach the daemon; the
    statistics say what was handed to the kernel, and the backing id goes with the
    file's last close."""
    path = mnt.mountpoint / "data"
    payload = block(1, 1 << 20)
    path.write_bytes(payload)
    with opened(path, os.O_RDWR) as fd, opened(path, os.O_RDONLY) as second:
        assert os.pread(second, len(payload), 0) == payload
        os.pwrite(fd, b"x" * 100, 5)
        assert os.pread(second, 10, 0) == payload[:5] + b"xxxxx"
        now = counters(mnt)
        assert now["passthrough_files"] == 2
        assert now["backing_files"] == 1  # one per inode, shared by its opens
    assert data_requests(mnt) == 0
    wait_until_released(mnt)
    after = counters(mnt)
    assert (after["passthrough_files"], after["backing_files"]) == (0, 0)
    assert after["passthrough_opens"] >= 3
    assert (mnt.backing / "data").read_bytes()[:10] == payload[:5] + b"xxxxx"
    stats = subprocess.run(
        [sys.executable, "-m", "iofs", "stats", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bypass the daemon" in stats


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
@pytest.mark.parametrize("ioengine", ["libaio", "psync"])
def test_fio_verify_in_passthrough(mnt: Mount, ioengine: str) -> None:
    """fio writes (O_DIRECT at queue depth 16 with libaio, buffered with psync), reads
    everything back and checks it; the daemon sees none of it."""
    command = [
        "fio",
        "--name=verify",
        f"--directory={mnt.mountpoint}",
        f"--ioengine={ioengine}",
        f"--direct={int(ioengine == 'libaio')}",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--size=8m",
        "--iodepth=16",
        "--numjobs=2",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    for job in report["jobs"]:
        assert job["error"] == 0
        assert job["read"]["io_bytes"] == 8 * 2**20
    assert data_requests(mnt) == 0
    assert counters(mnt)["passthrough_opens"] >= 2


# -- coherence across switches ---------------------------------------------------------------------
def test_data_written_either_way_is_seen_the_other_way(mount_factory: MountFactory) -> None:
    """Written through the daemon and read in passthrough, and the other way round, with
    read(2), mmap and O_DIRECT: each side sees the other's data (no stale page cache)."""
    mnt = mount_factory(engine=None, mode="blocking")
    path = mnt.mountpoint / "f"
    size = 4 * PAGE

    def check(expected: bytes) -> None:
        assert path.read_bytes() == expected
        with opened(path, os.O_RDONLY) as fd, mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            assert m[:] == expected
        with opened(path, os.O_RDONLY | os.O_DIRECT) as fd:
            buffer = mmap.mmap(-1, size)
            assert os.preadv(fd, [buffer], 0) == size
            assert buffer[:] == expected
        assert (mnt.backing / "f").read_bytes() == expected

    contents = block(0, size)
    path.write_bytes(contents)  # through the daemon (page cache on the mount)
    check(contents)
    for round_, spec in enumerate(["passthrough", "blocking", "passthrough", "xfs"] * 2):
        wait_until_released(mnt)
        switch(mnt, spec)
        new = block(round_ + 1)
        way = round_ % 3  # read(2)-style, mapped, O_DIRECT
        with opened(path, os.O_RDWR | (os.O_DIRECT if way == 2 else 0)) as fd:
            if way == 0:
                os.pwrite(fd, new, PAGE)
            elif way == 1:
                _write_mapped(fd, size, 2 * PAGE, new)
            else:
                _write_direct(fd, 3 * PAGE, new)
        offset = (way + 1) * PAGE
        contents = contents[:offset] + new + contents[offset + PAGE :]
        check(contents)
    assert counters(mnt)["passthrough_opens"] > 0


def _write_mapped(fd: int, size: int, offset: int, data: bytes) -> None:
    with mmap.mmap(fd, size) as mapping:
        mapping[offset : offset + len(data)] = data
        mapping.flush()


def _write_direct(fd: int, offset: int, data: bytes) -> None:
    buffer = mmap.mmap(-1, len(data))
    buffer[:] = data
    assert os.pwritev(fd, [buffer], offset) == len(data)


def test_a_file_open_across_a_switch_keeps_its_path(mount_factory: MountFactory) -> None:
    """The kernel allows one I/O mode per file: a file open in the page-cache path stays
    there for every new open after a switch into passthrough, and a file open in
    passthrough stays passed through after a switch out; none of these opens fail."""
    mnt = mount_factory(engine=None, mode="blocking")
    path = mnt.mountpoint / "f"
    path.write_bytes(block(0))
    wait_until_released(mnt)
    with opened(path, os.O_RDWR) as cached:
        switch(mnt, "passthrough")
        with opened(path, os.O_RDWR) as second:  # would be EIO if passed through
            os.pwrite(second, b"second", 0)
            assert os.pread(cached, 6, 0) == b"second"
        assert counters(mnt)["passthrough_declined_open"] >= 1
        assert counters(mnt)["passthrough_files"] == 0
    wait_until_released(mnt)
    with opened(path, os.O_RDWR) as passed:
        assert counters(mnt)["passthrough_files"] == 1
        switch(mnt, "blocking")
        with opened(path, os.O_RDWR) as second:
            os.pwrite(second, b"third", 0)
            assert os.pread(passed, 6, 0) == b"thirdd"
            assert counters(mnt)["passthrough_kept"] >= 1
    wait_until_released(mnt)
    with opened(path, os.O_RDWR):  # every open closed: the setting decides again
        assert counters(mnt)["passthrough_files"] == 0
    assert (mnt.backing / "f").read_bytes()[:6] == b"thirdd"


def test_truncate_and_fsync_in_passthrough(mnt: Mount, plain: Path) -> None:
    """ftruncate on a passed-through file, truncate(2) by name while it is open, fsync
    and fdatasync: sizes and contents as in a plain directory."""

    def run(root: Path) -> tuple[int, int, bytes]:
        path = root / "t"
        with opened(path, os.O_RDWR | os.O_CREAT) as fd:
            os.write(fd, block(1, 3 * PAGE))
            os.ftruncate(fd, PAGE + 100)
            first = os.fstat(fd).st_size
            os.truncate(path, 2 * PAGE)
            os.fsync(fd)
            os.pwrite(fd, b"end", 2 * PAGE)
            os.fdatasync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
            return first, os.fstat(fd).st_size, os.read(fd, 4 * PAGE)

    assert run(mnt.mountpoint) == run(plain)
    assert data_requests(mnt) == 0


def test_switching_under_a_writer_loses_nothing(mount_factory: MountFactory) -> None:
    """A writer appends records (opening the file for each) and overwrites blocks of a
    file it keeps open, while the mode switches into and out of passthrough under it;
    every record and block is there afterwards, in order, read through either path."""
    mnt = mount_factory(engine=None, mode="blocking")
    log_path, kept_path = mnt.mountpoint / "log", mnt.mountpoint / "kept"
    records = 240
    progress = threading.Condition()
    written = 0
    failure: list[BaseException] = []

    def record(i: int) -> bytes:
        return f"{i:08d} {hashlib.sha256(str(i).encode()).hexdigest()}\n".encode()

    def writer() -> None:
        nonlocal written
        try:
            with opened(kept_path, os.O_RDWR | os.O_CREAT) as kept:
                for i in range(records):
                    with opened(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as fd:
                        os.write(fd, record(i))
                    os.pwrite(kept, block(i, 512), (i % 64) * 512)
                    with progress:
                        written = i + 1
                        progress.notify_all()
        except BaseException as exc:
            failure.append(exc)
            with progress:
                written = records
                progress.notify_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        specs = ["passthrough", "blocking", "passthrough", "xfs", "passthrough", "btrfs"]
        for number, spec in enumerate(specs * 3):
            with progress:
                target = (number + 1) * records // (len(specs) * 3 + 1)
                progress.wait_for(lambda t=target: written >= t)  # type: ignore[misc]
            if mode_runs(spec.partition(",")[0], "dev") is None:
                switch(mnt, spec)
    finally:
        thread.join()
    assert not failure, failure
    expected_log = b"".join(record(i) for i in range(records))
    expected_kept = bytearray(64 * 512)
    for i in range(records):
        expected_kept[(i % 64) * 512 : (i % 64 + 1) * 512] = block(i, 512)
    for spec in ("passthrough", "blocking"):
        wait_until_released(mnt)
        switch(mnt, spec)
        assert log_path.read_bytes() == expected_log
        assert kept_path.read_bytes() == bytes(expected_kept)
    assert (mnt.backing / "log").read_bytes() == expected_log
    history = json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))["history"]
    assert sum(entry["mode"] == "passthrough" for entry in history) >= 3
    assert counters(mnt)["passthrough_opens"] > 0


def test_iofs_mode_says_switches_apply_to_files_opened_after(mount_factory: MountFactory) -> None:
    mnt = mount_factory(engine=None, mode="blocking")
    path = mnt.mountpoint / "f"
    path.write_bytes(b"x")
    with opened(path, os.O_RDONLY):
        result = subprocess.run(
            [sys.executable, "-m", "iofs", "mode", str(mnt.mountpoint), "passthrough"],
            capture_output=True,
            text=True,
            check=True,
        )
    lines = result.stdout.splitlines()
    assert lines[0].endswith(
        "switched to passthrough (engine blocking for files not passed through to the "
        "kernel, buffered backing fds, metadata inline, cache kernel)"
    )
    assert "passthrough on for files opened from now on" in lines[1]
    assert "0 of the 1 files open now are passed through" in lines[1]
    shown = subprocess.run(
        [sys.executable, "-m", "iofs", "mode", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "passed through to the kernel" in shown


# -- where it cannot run -------------------------------------------------------------------------
def _iofs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iofs", *args], capture_output=True, text=True, check=False
    )


def test_refused_on_pyfuse3_at_mount_and_on_switch(mount_factory: MountFactory) -> None:
    """pyfuse3 (libfuse 3.14) cannot pass files through: the mount is refused with one
    line and status 6 (UNAVAILABLE), and so is a switch, which changes nothing."""
    base = scratch_dir("iofs-passthrough-refused-")
    try:
        (base / "b").mkdir()
        (base / "m").mkdir()
        result = _iofs(
            "mount", "--transport", "pyfuse3", "--mode", "passthrough",
            str(base / "b"), str(base / "m"),
        )  # fmt: skip
        assert result.returncode == 6
        assert result.stderr.count("\n") == 1, result.stderr
        assert "--transport dev" in result.stderr and "Traceback" not in result.stderr
        assert not os.path.ismount(base / "m")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mnt = mount_factory(engine=None, mode="blocking", transport="pyfuse3")
    result = _iofs("mode", str(mnt.mountpoint), "passthrough")
    assert result.returncode == 6
    reason = create_transport("pyfuse3").passthrough_refusal(False)
    assert result.stderr == f"iofs: error: {mnt.mountpoint} stays in blocking: {reason} " + (
        f"(its log: {mnt.log})\n"
    )
    assert json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))["spec"] == "blocking"


@pytest.mark.skipif(not ROOT, reason="needs root (the mount otherwise fails sooner)")
def test_refused_with_the_writeback_cache(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    result = _iofs(
        "mount", "--transport", "dev", "--writeback-cache", "--mode", "passthrough",
        str(tmp_path / "b"), str(tmp_path / "m"),
    )  # fmt: skip
    assert result.returncode == 6
    assert "writeback cache" in result.stderr and result.stderr.count("\n") == 1
    assert not os.path.ismount(tmp_path / "m")


# -- the protocol, in process ----------------------------------------------------------------------
@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "file").write_bytes(b"content")
    h = Harness(tmp_path / "root", tmp_path / "replies")
    h.transport.fs.transport = h.transport
    try:
        yield h
    finally:
        h.close()


def _run(harness: Harness, *raws: bytes) -> list[tuple[int, int, bytes]]:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            harness.transport._nursery = nursery
            for raw in raws:
                await harness.send(raw)

    trio.run(main)
    return harness.replies()


@pytest.mark.skipif(not ROOT, reason="the dev transport asks for passthrough only with root")
@pytest.mark.parametrize("writeback", [False, True], ids=["page-cache", "writeback-cache"])
def test_init_asks_for_passthrough_with_a_stack_depth_of_one(
    harness: Harness, writeback: bool
) -> None:
    """Asked for in every mode (a switch may need it later), never with the writeback
    cache, which the kernel does not combine with it."""
    harness.fs.enable_writeback_cache = writeback
    raw, _ = harness.request(p.INIT, _init_body(0xFFFFFFFF & ~p.INIT_EXT, 0xFFFFFFFF))
    [(_, error, payload)] = _run(harness, raw)
    assert error == 0
    fields = p.INIT_OUT.unpack(payload)
    negotiated = fields[3] | fields[10] << 32
    assert bool(negotiated & p.PASSTHROUGH) is not writeback
    assert fields[11] == (0 if writeback else p.MAX_STACK_DEPTH)
    assert bool(harness.transport.passthrough_refusal(False)) is writeback


def _open(harness: Harness, flags: int = os.O_RDWR) -> bytes:
    lookup, _ = harness.request(p.LOOKUP, b"file\0")
    [(_, error, entry)] = _run(harness, lookup)
    assert error == 0
    nodeid = p.ENTRY_OUT.unpack_from(entry)[0]
    raw, _ = harness.request(p.OPEN, p.OPEN_IN.pack(flags, 0), nodeid=nodeid)
    [(_, error, payload)] = _run(harness, raw)
    assert error == 0
    return payload


def test_an_open_the_kernel_cannot_take_over_is_served_by_the_daemon(harness: Harness) -> None:
    """Registering the backing file fails (here: the transport's descriptor is no
    /dev/fuse): the open is answered without FOPEN_PASSTHROUGH, counted, and works."""
    harness.fs.setting = parse_setting("passthrough")
    _, open_flags, backing_id = p.OPEN_OUT.unpack(_open(harness))
    assert not open_flags & p.FOPEN_PASSTHROUGH and backing_id == 0
    counters = harness.fs.counters()
    assert counters["passthrough_backing_failures"] == 1
    assert (counters["passthrough_opens"], counters["backing_files"]) == (0, 0)


def test_a_passthrough_open_reply_carries_the_backing_id_and_no_cache_flags() -> None:
    info = PassthroughInfo(fh=7, direct_io=True, keep_cache=True)
    info.backing_id = 3
    fh, flags, backing_id = p.OPEN_OUT.unpack(_open_out(info))
    assert (fh, backing_id) == (7, 3)
    assert flags & p.FOPEN_PASSTHROUGH
    assert not flags & (p.FOPEN_KEEP_CACHE | p.FOPEN_DIRECT_IO)
