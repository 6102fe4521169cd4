"""The dev transport (iofs's own /dev/fuse reader): the mount suites over it, what its
INIT negotiates, and bad protocol input.

Every mount here goes over ``dev``: what only dev can do — one request per write
(HANDLE_KILLPRIV_V2) while set-id bits and ``security.capability`` are still dropped
exactly as on the backing filesystem, and shared writable mappings in ``uncached`` mode
(DIRECT_IO_ALLOW_MMAP); and, in a run over another transport (``pytest --transport
pyfuse3``), the POSIX tests, the differential state machine and an fio verify job, which
the default run (dev, iofs's default transport) runs in their own modules already.

The protocol tests feed `DevTransport` requests built by hand, as the kernel would send
them and as it never should, and read its replies from a pipe.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs import mounttable, syscalls
from iofs.backends import EngineConfig, create_engine
from iofs.faults import parse_faults
from iofs.fs import Filesystem
from iofs.live_mounts import containing_mount, find_mount, is_disconnected
from iofs.transport import devmount
from iofs.transport import protocol as p
from iofs.transport.dev import DevTransport

from . import test_fio, test_posix
from .conftest import (
    ROOT,
    Mount,
    MountFactory,
    collected_again,
    needs_root,
    repeat_over,
    scratch_dir,
)
from .differential import outcome
from .test_crash import wait_for
from .test_differential import run_machine
from .test_faults import injected, set_faults

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


@pytest.fixture
def mount_transport() -> str:
    """Every mount of this module goes over the dev transport."""
    return "dev"


# -- the mount suites over dev ------------------------------------------------------------
# The POSIX tests, collected here a second time: this module's mounts are dev mounts (in
# a run over another transport, `--transport pyfuse3`; dev is the default one).
def _over_dev(test: Callable[..., None]) -> Callable[..., None]:
    return collected_again(test, repeat_over("dev"))


test_posix_round_trip = _over_dev(test_posix.test_files_round_trip_to_backing)
test_posix_rename_with_open_files = _over_dev(
    test_posix.test_directory_renamed_while_files_inside_are_open
)
test_posix_write_through_read_only_fd = _over_dev(
    test_posix.test_write_through_read_only_fd_fails_with_ebadf
)
test_posix_o_direct = _over_dev(test_posix.test_o_direct_read_and_write)
test_posix_unaligned_o_direct = _over_dev(
    test_posix.test_unaligned_o_direct_does_not_hurt_the_daemon
)
test_posix_hard_links = _over_dev(test_posix.test_hard_links_share_one_inode)
test_posix_open_unlinked = _over_dev(test_posix.test_open_unlinked_file_keeps_working)
test_posix_fifo = _over_dev(test_posix.test_fifo_passes_data)
test_posix_devices = _over_dev(test_posix.test_device_nodes)
test_posix_xattrs = _over_dev(test_posix.test_xattrs_like_a_plain_directory)
test_posix_statfs = _over_dev(test_posix.test_statfs_is_the_backing_filesystems)
test_posix_fsync = _over_dev(test_posix.test_fsync_and_fdatasync_reach_the_backing_file)
test_posix_rename_flags = _over_dev(test_posix.test_rename_flags_like_a_plain_directory)
test_posix_readdir_during_changes = _over_dev(
    test_posix.test_readdir_during_changes_skips_and_repeats_nothing
)
test_posix_listing = _over_dev(test_posix.test_listing_reports_dot_entries_and_types)
test_posix_timestamps = _over_dev(test_posix.test_timestamps_explicit_now_and_omit)
test_posix_truncate_chmod = _over_dev(test_posix.test_truncate_chmod_and_sizes)
test_posix_chown = _over_dev(test_posix.test_chown_as_root)
test_posix_nodes_of_a_user = _over_dev(test_posix.test_nodes_created_by_a_user_belong_to_that_user)
test_posix_set_id_bits = _over_dev(test_posix.test_changes_by_a_user_clear_set_id_bits)
test_posix_errnos = _over_dev(test_posix.test_errors_keep_their_errno)
test_posix_forgotten_inodes = _over_dev(test_posix.test_forgotten_inodes_release_their_descriptors)


@repeat_over("dev")
def test_state_machine_over_dev() -> None:
    """The differential state machine (test_differential) on a dev mount."""
    run_machine_over("dev")


def run_machine_over(transport: str) -> None:
    """The differential state machine, 100 steps, on a fresh mount over *transport*."""
    from .conftest import finish_mount, start_mount

    base = scratch_dir(f"iofs-{transport}-diff-")
    try:
        backing, mountpoint, plain = base / "backing", base / "mnt", base / "plain"
        for directory in (backing, mountpoint, plain):
            directory.mkdir()
        mount = start_mount(backing, mountpoint, base / "daemon.log", transport=transport)
        try:
            run_machine(mountpoint, plain, 100)
        finally:
            finish_mount(mount)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
@pytest.mark.parametrize("ioengine", ["libaio", "psync"])
def fio_verify(mount_factory: MountFactory, ioengine: str) -> None:
    """fio writes with O_DIRECT at queue depth 16 (libaio) or buffered (psync), reads
    everything back and checks it."""
    direct = int(ioengine == "libaio")
    test_fio.fio_verify(mount_factory, "blocking", False, direct, [("randwrite", ioengine)])


test_fio_verify_over_dev = _over_dev(fio_verify)


# -- what the dev transport negotiates ------------------------------------------------------
def _operations(mnt: Mount) -> dict[str, int]:
    operations = mnt.statistics()["operations"]
    assert isinstance(operations, dict)
    return {name: op["count"] for name, op in operations.items()}


def test_statistics_name_the_transport_and_what_init_negotiated(mnt: Mount) -> None:
    snapshot = mnt.statistics()
    assert snapshot["transport"] == "dev"
    extra = mnt.counters()
    for capability in ("handle_killpriv_v2", "direct_io_allow_mmap", "max_pages", "async_dio"):
        assert extra[f"fuse_{capability}"] == 1, capability
    assert extra["fuse_max_write"] == 1 << 20
    assert extra["fuse_max_background"] >= 16
    assert extra["transport_requests"] > 0
    shown = subprocess.run(
        [sys.executable, "-m", "iofs", "stats", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "dev" in shown.stdout and "handle_killpriv_v2" in shown.stdout


def test_one_request_per_write(mnt: Mount) -> None:
    """With HANDLE_KILLPRIV_V2 the kernel no longer asks for security.capability before
    each write: 64 writes are 64 requests, not 128. (Reading the statistics is itself a
    getxattr: what two reads in a row count is the baseline.)"""
    path = mnt.mountpoint / "data"
    path.write_bytes(b"")
    first = _operations(mnt)
    before = _operations(mnt)
    reading = before.get("getxattr", 0) - first.get("getxattr", 0)
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in range(64):
            os.pwrite(fd, b"x" * 4096, index * 4096)
    finally:
        os.close(fd)
    after = _operations(mnt)
    writes = after.get("write", 0) - before.get("write", 0)
    getxattrs = after.get("getxattr", 0) - before.get("getxattr", 0) - reading
    assert writes >= 64
    assert getxattrs <= 1, f"{getxattrs} getxattr requests for {writes} writes"
    assert (mnt.backing / "data").read_bytes() == b"x" * 64 * 4096


def test_a_failed_lookup_spares_the_create_a_second_one(mount_factory: MountFactory) -> None:
    """A missing name is a negative entry the kernel keeps for the entry timeout: the
    open(O_CREAT) after a failed stat (fio's filecreate, most programs) is one CREATE,
    with no second LOOKUP. A name made through the mount replaces the negative entry
    whichever way it is made; with --entry-timeout 0 a name made beside the mount shows
    at once, as before."""
    mnt = mount_factory(entry_timeout=3600)  # long: nothing here depends on timing
    path = mnt.mountpoint / "new"
    before = _operations(mnt)
    with pytest.raises(FileNotFoundError):
        os.stat(path)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # as fio's (O_EXCL looks again)
    after = _operations(mnt)
    assert after["lookup"] - before.get("lookup", 0) == 1
    assert after["create"] - before.get("create", 0) == 1
    assert os.stat(path).st_ino == os.stat(mnt.mountpoint / "new").st_ino
    (mnt.mountpoint / "source").write_bytes(b"data")
    makers: dict[str, Callable[[Path], object]] = {
        "mkdir": lambda p: p.mkdir(),
        "symlink": lambda p: p.symlink_to("new"),
        "mknod": os.mkfifo,
        "link": lambda p: os.link(mnt.mountpoint / "source", p),
        "rename": (mnt.mountpoint / "source").rename,
    }
    for name, make in makers.items():
        target = mnt.mountpoint / f"made-by-{name}"
        with pytest.raises(FileNotFoundError):
            os.lstat(target)
        make(target)
        assert os.lstat(target).st_mode == os.lstat(mnt.backing / f"made-by-{name}").st_mode
    assert (mnt.mountpoint / "made-by-rename").read_bytes() == b"data"
    with pytest.raises(FileNotFoundError):
        os.lstat(mnt.mountpoint / "source")  # renamed away: its entry went with it
    uncached = mount_factory(entry_timeout=0)
    with pytest.raises(FileNotFoundError):
        os.stat(uncached.mountpoint / "beside")
    (uncached.backing / "beside").write_bytes(b"x")
    assert os.stat(uncached.mountpoint / "beside").st_size == 1


#: security.capability, VFS_CAP_REVISION_2, effective, permitted CAP_NET_RAW (13).
_CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


#: What nobody does to a file: a write, a truncate (SETATTR size), an open with O_TRUNC,
#: an O_DIRECT write ({} is the file's name).
_CHANGES = {
    "append": "printf more >> {}",
    "truncate": "truncate -s 2 {}",
    "o_trunc": "printf new > {}",
    "o_direct": "dd of={} bs=4096 count=1 oflag=direct conv=notrunc if=/dev/zero status=none",
}
#: Whose file, with which mode: set-id bits nobody's writes drop, or not, natively.
_FILES = {
    "root-suid-sgid": ((0, 0), 0o6777),
    "sgid-not-group-exec": ((0, 100), 0o2666),
    "owner-suid": ((65534, 65534), 0o4757),
    "capability-only": ((0, 0), 0o0666),
}


@needs_root
def test_writers_drop_set_id_bits_and_capabilities_as_on_the_backing_fs(
    mount_factory: MountFactory, plain: Path
) -> None:
    """A write, truncate or O_TRUNC open by nobody drops what it drops natively: the
    daemon does it (the kernel flags the request), as the backing filesystem would.
    Every file starts with security.capability set."""
    mnt = mount_factory(options=("allow_other",))

    def run(root: Path, backing: Path) -> dict[str, tuple[str, bool, bytes]]:
        root.chmod(0o777)
        outcomes = {}
        for kind, (owner, mode) in _FILES.items():
            for change, script in _CHANGES.items():
                name = f"{kind}-{change}"
                (backing / name).write_bytes(b"#!/bin/sh\n" + bytes(8000))
                os.chown(backing / name, *owner)
                (backing / name).chmod(mode)
                os.setxattr(backing / name, "security.capability", _CAPABILITY)
                command = [*_NOBODY, "sh", "-c", script.format(name)]
                result = subprocess.run(
                    command, cwd=root, capture_output=True, text=True, check=False
                )
                assert result.returncode == 0, (name, result.stderr)
                has_capability = "security.capability" in os.listxattr(backing / name)
                st = os.stat(backing / name)
                outcomes[name] = (oct(st.st_mode), has_capability, (backing / name).read_bytes())
        return outcomes

    on_mount = run(mnt.mountpoint, mnt.backing)
    on_plain = run(plain, plain)
    assert on_mount == on_plain
    dropped_natively = [
        name
        for name, (mode, _, _) in on_plain.items()
        if int(mode, 8) != stat.S_IFREG | _FILES[name.rsplit("-", 1)[0]][1]
    ]
    assert dropped_natively  # the cases are not all no-ops
    # iofs dropped those itself; the capability the kernel removes before the first
    # write to a file (it still asks for security.capability once per inode)
    assert mnt.counters()["transport_privileges_dropped"] >= 1


def test_fallocate_reaches_the_backing_file(mnt: Mount, plain: Path) -> None:
    """fallocate(2) with its modes, as on the backing filesystem (pyfuse3 cannot)."""
    keep_size, punch_hole = 0x01, 0x02

    def run(root: Path) -> list[object]:
        fd = os.open(root / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"x" * 65536, 0)
            results: list[object] = []
            for mode, offset, length in [
                (0, 65536, 65536),  # grows the file
                (keep_size, 131072, 65536),  # allocates past EOF, size unchanged
                (punch_hole | keep_size, 4096, 8192),  # zeros inside
                (punch_hole, 0, 4096),  # EOPNOTSUPP: punching needs KEEP_SIZE
            ]:
                results.append(outcome(partial(syscalls.fallocate, fd, mode, offset, length)))
                results.append(os.fstat(fd).st_size)
            results.append(os.pread(fd, 65536, 0).count(b"\0"))
            return results
        finally:
            os.close(fd)

    assert run(mnt.mountpoint) == run(plain)
    operations = mnt.statistics()["operations"]
    assert isinstance(operations, dict) and operations["fallocate"]["count"] >= 3


def test_shared_writable_mapping_in_uncached_mode(mount_factory: MountFactory) -> None:
    """uncached opens are direct_io; DIRECT_IO_ALLOW_MMAP lets them be mapped shared."""
    mnt = mount_factory(engine=None, mode="uncached")
    path = mnt.mountpoint / "mapped"
    path.write_bytes(bytes(2 * mmap.PAGESIZE))
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), 2 * mmap.PAGESIZE) as mapping:
        mapping[:5] = b"hello"
        mapping[mmap.PAGESIZE : mmap.PAGESIZE + 5] = b"world"
        mapping.flush()
    data = (mnt.backing / "mapped").read_bytes()
    assert data[:5] == b"hello" and data[mmap.PAGESIZE : mmap.PAGESIZE + 5] == b"world"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 5, mmap.PAGESIZE) == b"world"  # a read the daemon serves
    finally:
        os.close(fd)


@pytest.mark.parametrize("helper", [False, True], ids=["mount2", "fusermount3"])
def test_both_ways_of_mounting_give_the_same_mount(tmp_path: Path, helper: bool) -> None:
    """mount(2) (root) and fusermount3 (everyone else; _FUSE_COMMFD) mount alike."""
    if not ROOT and not helper:
        pytest.skip("mount(2) needs root")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    options = {"default_permissions", "fsname=/some\\,where", "subtype=iofs", "ro"}
    fd = devmount.mount(mountpoint, options, helper=helper)
    try:
        assert not os.get_blocking(fd) and not os.get_inheritable(fd)
        entry = mounttable.find(mountpoint)
        assert entry is not None
        assert (entry.source, entry.fstype) == ("/some,where", "fuse.iofs")
        assert "ro,nosuid,nodev" in entry.options and "default_permissions" in entry.options
    finally:
        devmount.unmount(mountpoint)
        os.close(fd)
    assert find_mount(mountpoint) is None


def test_unknown_mount_options_are_refused_in_one_line() -> None:
    with pytest.raises(devmount.MountError, match="unknown option"):
        devmount.parse_options({"no_such_option"})


# -- the protocol, byte by byte -------------------------------------------------------------
class Harness:
    """A DevTransport over a real Filesystem in *root*, its replies going into a file
    (*replies*, outside *root*) instead of /dev/fuse."""

    def __init__(self, root: Path, replies: Path) -> None:
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        self.fs = Filesystem(self.root_fd, create_engine("blocking", EngineConfig()))
        self.transport = DevTransport()
        self.transport.fs = self.fs
        self.transport.fd = os.open(replies, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        self._read = 0
        self._unique = 0

    def close(self) -> None:
        os.close(self.transport.fd)
        self.fs.close()
        os.close(self.root_fd)

    def request(self, opcode: int, body: bytes, nodeid: int = p.ROOT_ID) -> tuple[bytes, int]:
        self._unique += 2
        size = p.IN_HEADER.size + len(body)
        header = p.IN_HEADER.pack(size, opcode, self._unique, nodeid, 0, 0, os.getpid(), 0, 0)
        return header + body, self._unique

    async def send(self, raw: bytes) -> None:
        buffer = bytearray(raw) + bytearray(64)  # a read buffer is larger than the request
        await self.transport._dispatch(memoryview(buffer), len(raw))
        await trio.testing.wait_all_tasks_blocked()

    def replies(self) -> list[tuple[int, int, bytes]]:
        """Every reply written so far: (unique, error, payload); each must be whole."""
        data = b""
        while chunk := os.pread(self.transport.fd, 1 << 20, self._read + len(data)):
            data += chunk
        self._read += len(data)
        replies = []
        while data:
            length, error, unique = p.OUT_HEADER.unpack_from(data)
            assert p.OUT_HEADER.size <= length <= len(data), (length, len(data))
            replies.append((unique, error, data[p.OUT_HEADER.size : length]))
            data = data[length:]
        return replies


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "file").write_bytes(b"content")
    h = Harness(tmp_path / "root", tmp_path / "replies")
    try:
        yield h
    finally:
        h.close()


def _in_nursery(harness: Harness, body: Callable[[], Any]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            harness.transport._nursery = nursery
            await body()

    trio.run(main)


def _init_body(flags: int, flags2: int = 0) -> bytes:
    return struct.pack("<IIIII44x", 7, 45, 131072, flags | p.INIT_EXT, flags2)


def test_init_asks_for_what_the_kernel_offers(harness: Harness) -> None:
    offered = 0xFFFFFFFF & ~p.INIT_EXT
    raw, unique = harness.request(p.INIT, _init_body(offered, 0xFFFFFFFF))

    async def body() -> None:
        await harness.send(raw)

    _in_nursery(harness, body)
    [(replied, error, payload)] = harness.replies()
    assert (replied, error) == (unique, 0)
    fields = p.INIT_OUT.unpack(payload)
    major, minor, _, flags, background, congestion, max_write, _, max_pages, _, flags2 = fields[:11]
    negotiated = flags | flags2 << 32
    assert (major, minor) == (7, 45)
    for wanted in (p.HANDLE_KILLPRIV_V2, p.DIRECT_IO_ALLOW_MMAP, p.MAX_PAGES, p.INIT_EXT):
        assert negotiated & wanted
    assert not negotiated & (p.POSIX_LOCKS | p.FLOCK_LOCKS | p.WRITEBACK_CACHE)
    assert (max_write, max_pages) == (1 << 20, 256)
    assert background >= 16 and 0 < congestion <= background


def test_a_second_init_is_refused_and_changes_nothing(harness: Harness) -> None:
    first, first_id = harness.request(p.INIT, _init_body(p.ASYNC_READ | p.MAX_PAGES))
    second, second_id = harness.request(p.INIT, _init_body(p.WRITEBACK_CACHE))

    async def body() -> None:
        await harness.send(first)
        await harness.send(second)

    _in_nursery(harness, body)
    assert [(unique, error) for unique, error, _ in harness.replies()] == [
        (first_id, 0),
        (second_id, -errno.EIO),
    ]
    assert harness.transport.flags == p.ASYNC_READ | p.MAX_PAGES


def test_init_asks_for_nothing_the_kernel_does_not_offer(harness: Harness) -> None:
    raw, _ = harness.request(p.INIT, struct.pack("<IIII48x", 7, 31, 131072, p.ASYNC_READ))
    _in_nursery(harness, lambda: harness.send(raw))
    [(_, error, payload)] = harness.replies()
    assert error == 0
    fields = p.INIT_OUT.unpack(payload)
    assert (fields[1], fields[3], fields[10]) == (31, p.ASYNC_READ, 0)


@pytest.mark.parametrize("minor", [26, p.OLDEST_MINOR_VERSION - 1])
def test_a_kernel_too_old_for_the_transport_is_refused_at_mount_in_one_line(minor: int) -> None:
    """`DevTransport.mount` reads the kernel's INIT before `iofs mount` returns: an INIT
    of a protocol older than the transport serves is answered EPROTO (the kernel then
    fails the connection) and the mount fails with one line naming what is needed."""
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with kernel, daemon:
        transport = DevTransport()
        transport.fd = daemon.fileno()
        init = struct.pack("<IIII48x", 7, minor, 131072, p.ASYNC_READ)
        header = p.IN_HEADER.pack(p.IN_HEADER.size + len(init), p.INIT, 2, 0, 0, 0, 0, 0, 0)
        kernel.send(header + init)
        refusal = transport.take_init()
        assert refusal == (
            f"this kernel ({os.uname().release}) speaks FUSE 7.{minor}; the dev transport "
            f"needs 7.{p.OLDEST_MINOR_VERSION} or later (Linux 5.4+): mount with "
            "--transport pyfuse3"
        )
        reply = kernel.recv(4096)
        assert p.OUT_HEADER.unpack(reply) == (p.OUT_HEADER.size, -errno.EPROTO, 2)
        assert transport._first_request is None  # nothing left to serve


@needs_root
def test_a_real_mount_refused_for_its_protocol_leaves_nothing_mounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on a real mount, with the oldest protocol served set above this kernel's:
    `mount` raises MountFailed with exit status 6 and the mount is gone."""
    from iofs.errors import ExitStatus
    from iofs.transport import MountFailed

    monkeypatch.setattr(p, "OLDEST_MINOR_VERSION", p.KERNEL_MINOR_VERSION + 100)
    backing_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    (tmp_path / "mnt").mkdir()
    fs = Filesystem(backing_fd, create_engine("blocking", EngineConfig()))
    transport = DevTransport()
    try:
        with pytest.raises(MountFailed) as refused:
            transport.mount(fs, tmp_path / "mnt", {"fsname=iofs-test", "subtype=iofs"})
        assert refused.value.status == ExitStatus.UNAVAILABLE
        assert f"transport needs 7.{p.KERNEL_MINOR_VERSION + 100} or later" in str(refused.value)
        assert transport.fd == -1
        assert find_mount(tmp_path / "mnt") is None
    finally:
        if find_mount(tmp_path / "mnt") is not None:
            devmount.unmount(tmp_path / "mnt")
        fs.close()
        os.close(backing_fd)


def test_a_kernel_init_the_transport_serves_is_kept_for_serving() -> None:
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with kernel, daemon:
        transport = DevTransport()
        transport.fd = daemon.fileno()
        request = p.IN_HEADER.pack(p.IN_HEADER.size + 64, p.INIT, 2, 0, 0, 0, 0, 0, 0)
        request += _init_body(p.ASYNC_READ)
        kernel.send(request)
        assert transport.take_init() is None
        assert transport._first_request == request
        daemon.setblocking(False)
        with pytest.raises(BlockingIOError):  # no reply yet: `serve` answers it
            kernel.recv(4096, socket.MSG_DONTWAIT)


def test_entries_and_attributes_carry_the_timeouts_and_the_backing_stat(
    harness: Harness, tmp_path: Path
) -> None:
    """fuse_entry_out and fuse_attr_out, field by field, against os.stat."""
    harness.fs.mount_entry_timeout, harness.fs.mount_attr_timeout = 1.25, 2.5
    lookup, _ = harness.request(p.LOOKUP, b"file\0")
    _in_nursery(harness, lambda: harness.send(lookup))
    [(_, error, payload)] = harness.replies()
    assert error == 0
    nodeid, generation, entry_valid, attr_valid, entry_ns, attr_ns, *attr = p.ENTRY_OUT.unpack(
        payload
    )
    assert (entry_valid, entry_ns, attr_valid, attr_ns) == (1, 250_000_000, 2, 500_000_000)
    assert generation == harness.fs.inodes[nodeid].generation  # the inode's, not 0
    st = os.stat(tmp_path / "root" / "file")
    ino, size, blocks, atime, mtime, ctime, atime_ns, mtime_ns, ctime_ns, mode, nlink = attr[:11]
    assert (ino, size, blocks, mode, nlink) == (nodeid, 7, st.st_blocks, st.st_mode, 1)
    assert mtime * 10**9 + mtime_ns == st.st_mtime_ns
    assert ctime * 10**9 + ctime_ns == st.st_ctime_ns
    assert atime * 10**9 + atime_ns == st.st_atime_ns
    getattr_request, _ = harness.request(p.GETATTR, p.GETATTR_IN.pack(0, 0, 0), nodeid)
    _in_nursery(harness, lambda: harness.send(getattr_request))
    [(_, error, payload)] = harness.replies()
    valid, valid_ns, _, *same = p.ATTR_OUT.unpack(payload)
    assert (error, valid, valid_ns) == (0, 2, 500_000_000)
    assert tuple(same) == tuple(attr)


def test_bad_requests_get_errors_and_the_transport_goes_on(harness: Harness) -> None:
    lookup, lookup_id = harness.request(p.LOOKUP, b"file\0")
    unknown, unknown_id = harness.request(99, b"")
    no_nul, no_nul_id = harness.request(p.LOOKUP, b"file")
    short_write, short_write_id = harness.request(p.WRITE, b"\0" * 10)
    long_write, long_write_id = harness.request(
        p.WRITE, p.WRITE_IN.pack(3, 0, 4096, 0, 0, 0, 0) + b"x" * 100
    )
    lying, lying_id = harness.request(p.GETATTR, p.GETATTR_IN.pack(0, 0, 0))
    lying = struct.pack("<I", len(lying) + 8) + lying[4:]  # a length it does not have
    interrupt, interrupt_id = harness.request(p.INTERRUPT, p.INTERRUPT_IN.pack(lookup_id))
    statx, statx_id = harness.request(p.STATX, bytes(24))

    async def body() -> None:
        await harness.send(b"\x01\x02")  # shorter than a header: nothing to answer
        for raw in (lookup, unknown, no_nul, short_write, long_write, lying, interrupt, statx):
            await harness.send(raw)

    _in_nursery(harness, body)
    errors = {unique: error for unique, error, _ in harness.replies()}
    assert errors == {
        lookup_id: 0,
        unknown_id: -errno.ENOSYS,
        no_nul_id: -errno.EIO,
        short_write_id: -errno.EIO,
        long_write_id: -errno.EIO,
        lying_id: -errno.EIO,
        statx_id: -errno.ENOSYS,
    }  # none for the INTERRUPT (its request was answered already: nothing to do)
    assert interrupt_id not in errors
    counters = harness.transport.statistics()
    assert counters["transport_malformed"] == 5
    assert harness.fs.unexpected_errors == 0


def test_counts_and_sizes_beyond_the_request_are_refused(harness: Harness) -> None:
    """Fields that claim more than the request holds: a batch of 2^32-1 forgets, an
    xattr value, a write and extension blocks past the end; a name of 1 MiB without
    its NUL. Each is counted as malformed; those with a reply get EIO."""
    forgets, _ = harness.request(p.BATCH_FORGET, p.BATCH_FORGET_IN.pack(2**32 - 1, 0))
    xattr, xattr_id = harness.request(p.SETXATTR, p.SETXATTR_IN.pack(1 << 16, 0) + b"user.a\0")
    write, write_id = harness.request(p.WRITE, p.WRITE_IN.pack(3, 0, 2**32 - 1, 0, 0, 0, 0))
    name, name_id = harness.request(p.LOOKUP, b"n" * (1 << 20))
    extensions, extensions_id = harness.request(p.GETATTR, p.GETATTR_IN.pack(0, 0, 0))
    extensions = extensions[:36] + struct.pack("<H", 0xFFFF) + extensions[38:]  # total_extlen

    async def body() -> None:
        for raw in (forgets, xattr, write, name, extensions):
            await harness.send(raw)

    _in_nursery(harness, body)
    assert {unique: error for unique, error, _ in harness.replies()} == {
        xattr_id: -errno.EIO,
        write_id: -errno.EIO,
        name_id: -errno.EIO,
        extensions_id: -errno.EIO,
    }
    assert harness.transport.statistics()["transport_malformed"] == 5
    assert harness.fs.unexpected_errors == 0


@pytest.mark.parametrize("name", ["dev", "uring"])
def test_a_read_of_nothing_stops_serving_with_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """A read of /dev/fuse returns a whole request or fails; 0 bytes never come from a live
    connection. Taken for a short request and read again, it once made a daemon spin for
    ever, logging gigabytes. The reader must stop instead: one error logged, `serve`
    returns with `failure` saying why, and the daemon's `_serve` detaches the mount.
    Here the descriptor is an empty file, whose every read returns 0 bytes."""
    from iofs.mount import MountOptions, _serve
    from iofs.transport.uring import UringTransport

    (tmp_path / "root").mkdir()
    (tmp_path / "empty").touch()
    reads = 0
    real_readv = os.readv

    def readv(fd: int, buffers: Any) -> int:
        nonlocal reads
        reads += 1
        assert reads <= 3, "read again after a read of 0 bytes"
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)
    root_fd = os.open(tmp_path / "root", os.O_PATH | os.O_DIRECTORY)
    fs = Filesystem(root_fd, create_engine("blocking", EngineConfig()))
    transport = DevTransport() if name == "dev" else UringTransport()
    transport.fs = fs
    transport.fd = os.open(tmp_path / "empty", os.O_RDONLY)
    fs.transport = transport
    options = MountOptions(backing=tmp_path / "root", mountpoint=tmp_path / "root")
    try:
        with caplog.at_level("WARNING"):
            detach = trio.run(_serve, fs, transport, tmp_path / "root", lambda: None, options)
    finally:
        transport.close(unmount=False)
        fs.close()
        os.close(root_fd)
    assert (reads, detach) == (1, True)
    assert transport.failure == (
        "a read of /dev/fuse returned 0 bytes, which a live FUSE connection never does"
    )
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"{transport.failure}: stopped serving")
    ]
    assert transport.statistics()["transport_malformed"] == 0


def test_a_forget_storm_returns_every_lookup(harness: Harness) -> None:
    """10,000 lookups of one file, forgotten in batches and singly: the inode goes."""
    lookup, _ = harness.request(p.LOOKUP, b"file\0")

    async def body() -> None:
        for _ in range(10_000):
            await harness.transport._dispatch(memoryview(bytearray(lookup)), len(lookup))
        await trio.testing.wait_all_tasks_blocked()

    _in_nursery(harness, body)
    replies = harness.replies()
    assert len(replies) == 10_000 and {error for _, error, _ in replies} == {0}
    nodeid = p.ENTRY_OUT.unpack(replies[0][2])[0]
    assert len(harness.fs.inodes) == 2
    batch = p.BATCH_FORGET_IN.pack(9_000, 0) + p.FORGET_ONE.pack(nodeid, 1) * 9_000
    raw_batch, _ = harness.request(p.BATCH_FORGET, batch)
    singles = [harness.request(p.FORGET, p.FORGET_IN.pack(1000), nodeid)[0]]

    async def forget() -> None:
        await harness.send(raw_batch)
        assert len(harness.fs.inodes) == 2  # 1,000 lookups left
        for raw in singles:
            await harness.send(raw)

    _in_nursery(harness, forget)
    assert harness.replies() == []  # forgets have no reply
    assert len(harness.fs.inodes) == 1  # only the root
    assert harness.fs.unexpected_errors == 0


def test_forgets_of_what_was_never_looked_up_change_nothing(harness: Harness) -> None:
    """FORGETs for the root, for inodes never looked up, for more lookups than were
    made, in batches with repeats: no reply, no error; the root and the file stay
    reachable."""
    lookup, _ = harness.request(p.LOOKUP, b"file\0")
    _in_nursery(harness, lambda: harness.send(lookup))
    [(_, _, entry)] = harness.replies()
    nodeid = p.ENTRY_OUT.unpack(entry)[0]
    strangers = [0, p.ROOT_ID, nodeid + 1, 2**63, 2**64 - 1]
    pairs = [(inode, count) for inode in strangers for count in (1, 2**64 - 1)]
    pairs += [(nodeid, 2**64 - 1), (nodeid, 1), (nodeid, 1)]  # more than looked up
    batch = p.BATCH_FORGET_IN.pack(len(pairs), 0) + b"".join(
        p.FORGET_ONE.pack(*pair) for pair in pairs
    )
    requests = [harness.request(p.BATCH_FORGET, batch)[0]]
    requests += [harness.request(p.FORGET, p.FORGET_IN.pack(5), inode)[0] for inode in strangers]
    requests.append(harness.request(p.BATCH_FORGET, p.BATCH_FORGET_IN.pack(0, 0))[0])

    async def forget() -> None:
        for raw in requests:
            await harness.send(raw)

    _in_nursery(harness, forget)
    assert harness.replies() == []
    assert list(harness.fs.inodes._by_id) == [p.ROOT_ID]
    getattr_root, root_id = harness.request(p.GETATTR, p.GETATTR_IN.pack(0, 0, 0))
    again, again_id = harness.request(p.LOOKUP, b"file\0")

    async def use() -> None:
        await harness.send(getattr_root)
        await harness.send(again)

    _in_nursery(harness, use)
    assert [(unique, error) for unique, error, _ in harness.replies()] == [
        (root_id, 0),
        (again_id, 0),
    ]
    assert harness.fs.unexpected_errors == 0


# -- INTERRUPT ----------------------------------------------------------------------------
def _interrupt(target: int) -> bytes:
    """An INTERRUPT for request *target*, as the kernel sends it (its unique is the
    target's with FUSE_INT_REQ_BIT set)."""
    size = p.IN_HEADER.size + p.INTERRUPT_IN.size
    header = p.IN_HEADER.pack(size, p.INTERRUPT, target | p.INT_REQ_BIT, 0, 0, 0, 0, 0, 0)
    return header + p.INTERRUPT_IN.pack(target)


def _open_file(harness: Harness, flags: int) -> int:
    """LOOKUP and OPEN ``file`` through the transport; its file handle."""
    lookup, _ = harness.request(p.LOOKUP, b"file\0")
    _in_nursery(harness, lambda: harness.send(lookup))
    [(_, error, entry)] = harness.replies()
    nodeid = p.ENTRY_OUT.unpack(entry)[0]
    open_request, _ = harness.request(p.OPEN, p.OPEN_IN.pack(flags, 0), nodeid)
    _in_nursery(harness, lambda: harness.send(open_request))
    [(_, error, opened)] = harness.replies()
    assert error == 0
    fh: int = p.OPEN_OUT.unpack(opened)[0]
    return fh


def test_an_interrupt_cancels_a_held_read_and_it_fails_with_eintr(harness: Harness) -> None:
    """A read the faults hold for 60 s, then an INTERRUPT for it: the read is answered
    EINTR at once, the INTERRUPT not at all; the next read is served."""
    fh = _open_file(harness, os.O_RDONLY)
    harness.fs.faults.set(parse_faults("delay=60s,ops=read"))
    read, read_id = harness.request(p.READ, p.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))

    async def body() -> None:
        await harness.send(read)  # returns once the read sleeps in the fault's delay
        assert harness.replies() == []
        await harness.send(_interrupt(read_id))

    _in_nursery(harness, body)
    assert harness.replies() == [(read_id, -errno.EINTR, b"")]
    counters = harness.transport.statistics()
    assert (counters["transport_interrupts"], counters["transport_interrupted"]) == (1, 1)
    assert harness.transport._cancellable == {}
    harness.fs.faults.set(parse_faults("off"))
    again, again_id = harness.request(p.READ, p.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))
    _in_nursery(harness, lambda: harness.send(again))
    assert harness.replies() == [(again_id, 0, b"content")]
    assert harness.fs.unexpected_errors == 0


def test_an_interrupt_cancels_a_read_served_inline_that_waited(harness: Harness) -> None:
    """A read the reader serves itself (the filesystem says it does not wait) that waits
    after all, held for 60 s: the reader hands the reading on and this task keeps the
    read, in the reader's cancel scope, which an INTERRUPT cancels: EINTR at once."""
    fh = _open_file(harness, os.O_RDONLY)
    harness.fs.faults.set(parse_faults("delay=60s,ops=read"))
    harness.fs.may_wait = lambda data: False  # type: ignore[method-assign]
    transport = harness.transport
    readers: list[str] = []

    async def next_reader() -> None:  # the reader a hand-off starts: nothing to read here
        readers.append("started")

    transport._read_requests = next_reader  # type: ignore[method-assign]
    read, read_id = harness.request(p.READ, p.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))

    async def reader() -> None:  # what `_read_requests` does with one request
        with trio.CancelScope() as transport._scope:
            buffer = bytearray(read) + bytearray(64)
            assert await transport._dispatch(memoryview(buffer), len(read)) is False

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            transport._nursery = nursery
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert (harness.replies(), readers) == ([], ["started"])
            await harness.send(_interrupt(read_id))

    trio.run(body)
    assert harness.replies() == [(read_id, -errno.EINTR, b"")]
    counters = transport.statistics()
    assert counters["transport_handoffs"] == 1
    assert (counters["transport_interrupts"], counters["transport_interrupted"]) == (1, 1)
    assert transport._cancellable == {} and transport._running == 0
    assert harness.fs.unexpected_errors == 0


def test_an_interrupt_does_not_cut_a_write_short(harness: Harness, tmp_path: Path) -> None:
    """A write may have taken effect: it is not cancelled, and its reply says how much
    it wrote (the kernel waits for it), however the INTERRUPT falls."""
    fh = _open_file(harness, os.O_WRONLY)
    harness.fs.faults.set(parse_faults("delay=10ms,ops=write"))
    data = b"written"
    write, write_id = harness.request(p.WRITE, p.WRITE_IN.pack(fh, 0, len(data), 0, 0, 0, 0) + data)

    async def body() -> None:
        await harness.send(write)  # held in the fault's delay
        await harness.send(_interrupt(write_id))
        await harness.send(_interrupt(write_id))  # the kernel may send one again

    _in_nursery(harness, body)  # the nursery waits for the write to finish
    assert harness.replies() == [(write_id, 0, p.WRITE_OUT.pack(len(data), 0))]
    assert (tmp_path / "root" / "file").read_bytes() == data
    counters = harness.transport.statistics()
    assert (counters["transport_interrupts"], counters["transport_interrupted"]) == (2, 0)


def test_an_interrupt_storm_is_ignored_and_keeps_nothing(harness: Harness) -> None:
    """10,000 INTERRUPTs for requests answered long ago or never sent, and malformed
    ones: no reply, no growth, and a request in flight meanwhile is served."""
    fh = _open_file(harness, os.O_RDONLY)
    harness.fs.faults.set(parse_faults("delay=1ms,ops=read"))
    read, read_id = harness.request(p.READ, p.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))
    short, _ = harness.request(p.INTERRUPT, b"\0" * 4)

    async def body() -> None:
        await harness.transport._dispatch(memoryview(bytearray(read)), len(read))
        for target in range(10_000):
            raw = _interrupt(target * 2 + 10**6)
            await harness.transport._dispatch(memoryview(bytearray(raw)), len(raw))
        await harness.send(short)

    _in_nursery(harness, body)
    assert harness.replies() == [(read_id, 0, b"content")]
    counters = harness.transport.statistics()
    assert (counters["transport_interrupts"], counters["transport_interrupted"]) == (10_000, 0)
    assert counters["transport_malformed"] == 1
    assert harness.transport._cancellable == {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opcode=st.sampled_from([*sorted(set(p.OPCODE_NAMES) - {p.INIT, p.DESTROY}), 0, 99, 4096]),
    body=st.binary(max_size=200),
    nodeid=st.sampled_from([0, 1, 2, 2**63]),
)
def test_any_request_gets_at_most_one_whole_reply(opcode: int, body: bytes, nodeid: int) -> None:
    """Whatever bytes follow a header, the transport answers at most once, with a whole
    reply, and goes on; nothing is logged as an unexpected error in the filesystem."""
    base = scratch_dir("iofs-proto-")
    try:
        (base / "root").mkdir()
        (base / "root" / "file").write_bytes(b"content")
        harness = Harness(base / "root", base / "replies")
        try:
            raw, unique = harness.request(opcode, body, nodeid)
            _in_nursery(harness, lambda: harness.send(raw))
            replies = harness.replies()
            assert len(replies) <= 1
            assert all(replied == unique for replied, _, _ in replies)
            if opcode not in (p.FORGET, p.BATCH_FORGET, p.INTERRUPT):  # never answered
                assert len(replies) == 1
        finally:
            harness.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


#: Waits in read(2) or fsync(2) (libc's: Python would retry after EINTR) on argv[2]
#: with a SIGUSR1 handler that does nothing; prints the result and errno.
_BLOCKED_CALLER = r"""
import ctypes, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: None)
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[2], os.O_RDONLY)
buffer = ctypes.create_string_buffer(4096)
result = libc.read(fd, buffer, 4096) if sys.argv[1] == "read" else libc.fsync(fd)
print(result, ctypes.get_errno())
"""


@pytest.mark.parametrize("op", ["read", "fsync"])
def test_a_signal_interrupts_a_held_request_on_a_real_mount(
    mount_factory: MountFactory, op: str
) -> None:
    """A caller blocked in a read or fsync the faults hold for 60 s gets a signal: the
    kernel sends INTERRUPT, and the call fails with EINTR at once (pyfuse3 would let it
    wait the 60 s out). The mount goes on serving."""
    mnt = mount_factory(engine=None, mode="uncached")  # direct_io: read(2) is one request
    (mnt.backing / "file").write_bytes(b"content")
    set_faults(mnt, f"delay=60s,ops={op}")
    caller = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_CALLER, op, str(mnt.mountpoint / "file")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: injected(mnt)[op]["delays"] == 1, f"the {op} to be held", 60)
        caller.send_signal(signal.SIGUSR1)
        out, _ = caller.communicate(timeout=50)  # well before the 60 s hold ends
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    assert out.split() == ["-1", str(errno.EINTR)]
    counters = mnt.counters()
    assert counters["transport_interrupted"] == 1 and counters["transport_interrupts"] >= 1
    set_faults(mnt, "off")
    assert (mnt.mountpoint / "file").read_bytes() == b"content"
    assert mnt.counters()["unexpected_errors"] == 0


def test_a_killed_daemon_leaves_a_mount_iofs_umount_cleans_up(mnt: Mount) -> None:
    """SIGKILL: the kernel answers ENOTCONN; `iofs umount` detaches, as with pyfuse3.

    Over uring the kernel aborts the connection only once the dead daemon's ring is torn
    down, a few milliseconds after the process is gone: a request made in that moment
    fails with ECONNABORTED. iofs must recognise the dead mount by either errno."""
    assert json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))["spec"]
    unseen = mnt.mountpoint / "never-looked-up"  # no cached entry: a LOOKUP for the kernel
    mnt.daemon.kill()
    mnt.daemon.wait()
    assert containing_mount(unseen) == mnt.mountpoint  # at once, the first access
    with pytest.raises(OSError) as info:
        os.stat(unseen)
    assert info.value.errno == errno.ENOTCONN  # once aborted, always ENOTCONN
    assert is_disconnected(mnt.mountpoint)
    result = subprocess.run(
        [sys.executable, "-m", "iofs", "umount", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cleaned up" in result.stdout + result.stderr
    assert find_mount(mnt.mountpoint) is None
    assert stat.S_ISDIR(os.stat(mnt.mountpoint).st_mode)
    mnt.expect_errors = True  # killed: its log ends abruptly


# -- what iofs stats shows ---------------------------------------------------------------------
def test_the_stats_table_shows_the_transport_apart_from_the_filesystem() -> None:
    from dataclasses import replace

    from iofs.render import dashboard, stats_table

    from .test_render import render, switched_snapshot

    extra = {
        "inodes": 3,
        "transport_requests": 300,
        "transport_wakeups": 100,
        "fuse_max_background": 64,
        "fuse_handle_killpriv_v2": 1,
        "fuse_writeback_cache": 0,
    }
    snapshot = replace(switched_snapshot(), transport="dev", extra=extra)
    lines = render(stats_table(snapshot)).splitlines()
    [transport] = [line for line in lines if line.lstrip().startswith("transport")]
    [filesystem] = [line for line in lines if line.lstrip().startswith("filesystem")]
    assert "dev" in transport and "max background 64" in transport
    assert "handle_killpriv_v2" in transport and "writeback_cache" not in transport
    assert "3.00 requests per" in transport  # per wake-up (the line wraps)
    assert "inodes 3" in filesystem and "background" not in filesystem
    counts = {"transport_requests": 100, "transport_wakeups": 50}
    older = replace(snapshot, uptime=snapshot.uptime - 1, extra={**extra, **counts})
    screen = render(dashboard(snapshot, older))
    assert "transport dev" in screen and "max background 64" in screen
    assert "4.00 requests per wake-up" in screen  # 200 requests in 50 wake-ups
    plain = replace(switched_snapshot(), extra={"inodes": 3})
    [line] = [line for line in render(stats_table(plain)).splitlines() if "transport" in line]
    assert "pyfuse3" in line


def test_a_request_served_inline_that_waits_hands_the_reading_on(tmp_path: Path) -> None:
    """The dev reader serves the requests that the filesystem says do not wait in its own
    task. One that waits after all (here every read of the gate daemon's ``/gate``, held
    until the test opens the gate, with a filesystem that claims nothing waits) must not
    hold up the others: its task hands the reading on and finishes serving it."""
    from concurrent.futures import ThreadPoolExecutor

    from .gate_daemon import pattern
    from .test_engine_loop import DAEMON, PATIENCE, TIMEOUT, Gate, _stop, _wait_ready

    mountpoint, log = tmp_path / "mnt", tmp_path / "gate.log"
    mountpoint.mkdir()
    command = [sys.executable, str(DAEMON), str(mountpoint), "--log", str(log)]
    command += ["--patience", str(PATIENCE), "--transport", "dev", "--inline"]
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    offsets = (0, 8192)

    def read(offset: int) -> bytes:
        fd = os.open(mountpoint / "gate", os.O_RDONLY)
        try:
            return os.pread(fd, 4096, offset)
        finally:
            os.close(fd)

    try:
        _wait_ready(daemon, log)
        gate = Gate(mountpoint, log, daemon)
        with ThreadPoolExecutor(len(offsets)) as pool:
            reads = [pool.submit(read, offset) for offset in offsets]
            # Each answer to /parked is a request served while reads are held.
            while gate.wait_parked() < len(offsets):
                assert not any(r.done() for r in reads), [r.result() for r in reads if r.done()]
            gate.open()
            assert [r.result(timeout=TIMEOUT) for r in reads] == [
                pattern(offset, 4096) for offset in offsets
            ]
    finally:
        _stop(daemon, mountpoint)
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text
