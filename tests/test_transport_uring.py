"""The uring transport (FUSE over io_uring): the mount suites over it, what goes over
the ring and what still over /dev/fuse, and how it says it cannot be used.

The default run mounts over ``uring`` here: the POSIX tests, the differential state
machine, fio verify jobs, the dev transport's own mount tests (one request per write,
set-id bits, fallocate, shared mappings in ``uncached`` mode, SIGKILL and ``iofs
umount``). ``pytest --transport uring`` runs every other mount over it too.

Everything here is skipped, with the reason, where the kernel lacks FUSE over io_uring
or, for a user other than root, where ``fuse.enable_uring`` is off. As root the first
mount turns it on (and leaves it on, see docs/transports.md).
"""

from __future__ import annotations

import errno
import inspect
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from iofs.backends import iouring_abi
from iofs.transport import protocol as p
from iofs.transport import uring

from . import test_transport
from .conftest import Mount, MountFactory, collected_again, repeat_over

URING_UNAVAILABLE = uring.unavailable_reason() if os.path.exists("/dev/fuse") else "no /dev/fuse"
needs_uring = pytest.mark.skipif(
    URING_UNAVAILABLE is not None, reason=f"no FUSE over io_uring: {URING_UNAVAILABLE}"
)


@pytest.fixture
def mount_transport() -> str:
    """Every mount of this module goes over the uring transport."""
    return "uring"


# -- the mount suites over uring -------------------------------------------------------------
# Collected here a second time: this module's mounts are uring mounts.
_OWN_TESTS = [
    "test_one_request_per_write",
    "test_writers_drop_set_id_bits_and_capabilities_as_on_the_backing_fs",
    "test_fallocate_reaches_the_backing_file",
    "test_shared_writable_mapping_in_uncached_mode",
    "test_a_killed_daemon_leaves_a_mount_iofs_umount_cleans_up",
    "test_a_signal_interrupts_a_held_request_on_a_real_mount",
]
_MOUNT_TESTS = [
    *(name for name in dir(test_transport) if name.startswith("test_posix_")),
    "test_fio_verify_over_dev",
    *_OWN_TESTS,
]
for _name in _MOUNT_TESTS:
    _test = getattr(test_transport, _name)
    # The original of a suite's repeat, without test_transport's skip in a run over dev.
    _marks = (needs_uring,) if _name in _OWN_TESTS else (needs_uring, repeat_over("uring"))
    globals()[_name.replace("_over_dev", "")] = collected_again(inspect.unwrap(_test), *_marks)


@needs_uring
@repeat_over("uring")
def test_state_machine_over_uring() -> None:
    """The differential state machine (test_differential) on a uring mount."""
    test_transport.run_machine_over("uring")


# -- what goes over the ring ---------------------------------------------------------------------
@needs_uring
def test_requests_after_init_go_over_the_ring(mnt: Mount) -> None:
    """INIT negotiates FUSE_OVER_IO_URING, every CPU has a queue, and the file requests
    arrive through the ring, not through read(2) on /dev/fuse."""
    extra = mnt.counters()
    assert extra["fuse_over_io_uring"] == 1
    assert extra["transport_uring_queues"] == uring.possible_cpus()
    assert extra["transport_uring_queue_depth"] >= 1
    before_ring = extra["transport_uring_requests"]
    before_all = extra["transport_requests"]
    data = os.urandom(1 << 20)  # one 1 MiB write: the whole payload buffer
    path = mnt.mountpoint / "file"
    with open(path, "wb", buffering=0) as file:
        for _ in range(8):
            file.write(data)
    assert (mnt.backing / "file").read_bytes() == data * 8
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 1 << 20, 1 << 20) == data
    finally:
        os.close(fd)
    after = mnt.counters()
    over_ring = after["transport_uring_requests"] - before_ring
    assert over_ring >= 8 + 1  # the writes and the direct read, at least
    # Only INIT came through /dev/fuse before; forgets may since, nothing else did.
    assert after["transport_requests"] - before_all == over_ring
    assert after["transport_uring_errors"] == 0
    assert after["transport_malformed"] == 0


@needs_uring
def test_iofs_stats_shows_the_ring(mnt: Mount) -> None:
    (mnt.mountpoint / "file").write_bytes(b"x")
    shown = subprocess.run(
        [sys.executable, "-m", "iofs", "stats", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "uring" in shown.stdout and "over_io_uring" in shown.stdout
    assert "uring queues" in shown.stdout and "requests per" in shown.stdout


@needs_uring
def test_forgets_still_come_through_dev_fuse(mount_factory: MountFactory) -> None:
    """The kernel sends FORGET on /dev/fuse even with the ring up: a thousand files
    looked up and unlinked are all forgotten and their descriptors released."""
    mnt = mount_factory()
    for index in range(1000):
        (mnt.backing / f"f{index}").write_bytes(b"")
    for index in range(1000):
        os.stat(mnt.mountpoint / f"f{index}")
    for index in range(1000):
        os.unlink(mnt.mountpoint / f"f{index}")
    after = mnt.counters()
    assert after["transport_uring_errors"] == 0
    # Unlinked and uncached: the kernel forgets each of them (FORGET or BATCH_FORGET).
    assert after["inodes"] <= 10, after


# -- when it cannot be used -----------------------------------------------------------------------
def test_a_kernel_without_it_is_named_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "parameters").mkdir()
    monkeypatch.setattr(uring, "ENABLE_URING", tmp_path / "parameters" / "enable_uring")
    reason = uring.prepare_kernel()
    assert reason is not None and "has no FUSE over io_uring" in reason
    assert "6.14" in reason and "\n" not in reason


@pytest.mark.skipif(iouring_abi.probe() is not None, reason="no io_uring here")
def test_off_is_turned_on_by_root_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    switch = tmp_path / "enable_uring"
    switch.write_text("N\n")
    monkeypatch.setattr(uring, "ENABLE_URING", switch)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = uring.prepare_kernel()
    assert reason is not None and "only root may turn it on" in reason
    assert switch.read_text() == "N\n"  # untouched
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert uring.prepare_kernel() is None
    assert switch.read_text().strip() == "Y"
    assert uring.prepare_kernel() is None  # already on: nothing to do


def test_mount_says_why_in_one_line_and_exits_6(tmp_path: Path) -> None:
    """``iofs mount --transport uring`` on a kernel without it: one line, status 6, no
    traceback, nothing mounted (the kernel's absence is simulated by a missing switch)."""
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    program = (
        "import sys; from pathlib import Path; from iofs.transport import uring; "
        f"uring.ENABLE_URING = Path({str(tmp_path / 'parameters' / 'x')!r}); "
        "from iofs.cli import main; sys.exit(main())"
    )
    (tmp_path / "parameters").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            "mount",
            "--transport=uring",
            str(backing),
            str(mountpoint),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: the mount stops before the transport")
    assert result.returncode == 6, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("iofs: error: --transport uring: this kernel")
    assert not os.path.ismount(mountpoint)


def test_without_io_uring_the_mount_is_refused_in_one_line(tmp_path: Path) -> None:
    """io_uring hidden by a seccomp filter (as a locked-down container's profile would):
    ``iofs mount --transport uring`` says why in one line and exits 6, and mounts nothing;
    ``--allow-fallback`` (which picks engines, not transports) does not change that."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: the mount stops before the transport")
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    hide = [sys.executable, "-m", "tests.without_syscalls", "io_uring_setup", "--"]
    for extra in ([], ["--allow-fallback"]):
        result = subprocess.run(
            [*hide, sys.executable, "-m", "iofs", "mount", "--transport", "uring", *extra,
             str(backing), str(mountpoint)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (
            6,
            "iofs: error: --transport uring: io_uring_setup is not available (ENOSYS): "
            "a seccomp filter hides it\n",
        )
        assert not os.path.ismount(mountpoint)


@pytest.mark.skipif(iouring_abi.probe() is not None, reason="no io_uring here")
def test_a_command_the_file_does_not_know_completes_with_its_error() -> None:
    """The ring bindings' OP_URING_CMD on 128-byte SQEs: a pipe has no uring_cmd, and the
    CQE says so (EOPNOTSUPP) with the command's user_data."""
    read_end, write_end = os.pipe()
    try:
        with iouring_abi.Ring(4, sqe128=True) as ring:
            ring.prepare_command(read_end, 1, 0, 0, 77, bytes(range(80)))
            assert ring.submit() == 1
            ring.wait()
            [(user_data, result, _)] = ring.reap()
        assert user_data == 77
        assert -result in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EBADF)
        with iouring_abi.Ring(4) as small, pytest.raises(ValueError):
            small.prepare_command(read_end, 1, 0, 0, 1, bytes(17))
    finally:
        os.close(read_end)
        os.close(write_end)


# -- bad requests in a ring entry ---------------------------------------------------------------
@pytest.mark.skipif(iouring_abi.probe() is not None, reason="no io_uring here")
@pytest.mark.parametrize(
    ("opcode", "size", "fixed", "payload"),
    [
        (p.GETATTR, 40, b"", b"\0" * 10),  # a payload larger than the whole request
        (p.GETATTR, 40 + 200, b"", b"\0" * 40),  # a fixed part beyond the 128 of op_in
        (p.LOOKUP, 40 + 3, b"", b"abc"),  # a name without its NUL
        (p.WRITE, 40 + 40 + 8, b"\0" * 40, b"\0" * 8),  # a write shorter than its size
        (999, 40, b"", b""),  # an opcode nobody knows
    ],
    ids=["length", "fixed-part", "name", "write", "opcode"],
)
def test_a_bad_request_in_an_entry_is_answered_with_an_error_through_that_entry(
    opcode: int, size: int, fixed: bytes, payload: bytes
) -> None:
    """What the kernel would never put in an entry still gets exactly one reply, an
    error, committed through the same entry with its commit id; nothing is dispatched.
    (The transport's descriptor is a pipe here: the commands fail, unreaped.)"""
    transport = uring.UringTransport()
    read_end, write_end = os.pipe()
    transport.fd = read_end
    if opcode == p.WRITE:
        fixed = struct.pack("<QQIIIIQ", 1, 0, 4096, 0, 0, 0, 0)  # 4096 bytes announced
    try:
        ring = transport._register(queues=1, depth=2)
        entry, at, unique = 1, 1 * 512, 0xABC
        headers = transport._header_view
        p.IN_HEADER.pack_into(headers, at, size, opcode, unique, 1, 0, 0, 0, 0, 0)
        headers[at + 128 : at + 128 + len(fixed)] = fixed
        struct.pack_into("<QQI", headers, at + 256, 0, 4242, len(payload))
        start = 1 * (4096 + uring.PAYLOAD_SIZE) + 4096
        transport._payload_view[start : start + len(payload)] = payload
        pending = ring.pending

        async def request() -> None:
            await transport._request(entry, headers, transport._payload_view)

        trio.run(request)
        length, error, replied = p.OUT_HEADER.unpack_from(headers, at)
        assert replied == unique and length == p.OUT_HEADER.size
        assert error in (-errno.EIO, -errno.ENOSYS)
        assert struct.unpack_from("<I", headers, at + 256 + 16) == (0,)  # no payload
        assert ring.pending == pending + 1  # one COMMIT_AND_FETCH, waiting for the flush
        assert transport._commit_ids[entry] == 4242
        assert transport._running == 0  # no handler was started
        assert transport._by_unique == {}
    finally:
        transport.close(unmount=False)
        os.close(write_end)
