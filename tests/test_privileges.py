"""O_DIRECT writes: one FUSE request each, and set-ID bits still dropped as natively.

iofs answers O_DIRECT opens for writing (and every open in ``uncached`` mode) with
FOPEN_DIRECT_IO, so the kernel sends each write alone without asking for
``security.capability`` first and drops no set-user-ID/set-group-ID bit: iofs does
(`iofs.privileges`), unless the kernel flags such writes itself (HANDLE_KILLPRIV_V2, the
``dev`` transport). These tests write as ``nobody`` and as root to set-ID files, with
and without a file capability, on the mount and on a plain directory, and compare.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import stat
import struct
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iofs.privileges import Writer, bits_to_drop

from .conftest import Mount, MountFactory, mode_runs, needs_fuse, needs_root
from .test_security import NOBODY, as_user

CAPABILITY = "security.capability"
#: A version-2 file capability granting cap_net_raw (what ``setcap cap_net_raw+ep`` writes).
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

#: (name, mode, group): the cases setattr_should_drop_suidgid tells apart.
FILES = [
    ("suid", 0o4666, 0),
    ("sgid-other-group", 0o2666, 0),  # the writer is not in the group: dropped
    ("sgid-own-group", 0o2666, NOBODY),  # in the group, group may not execute: kept
    ("sgid-group-exec", 0o2676, NOBODY),  # the group may execute: dropped
    ("suid-sgid", 0o6777, 0),
    ("plain", 0o0666, 0),
]

#: Writes 4 KiB at offset 0 of each file named on the command line through O_DIRECT.
WRITER = textwrap.dedent(
    """
    import json, mmap, os, sys
    buf = mmap.mmap(-1, 4096)
    buf.write(b"w" * 4096)
    outcome = {}
    for path in sys.argv[1:]:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            try:
                outcome[path] = os.pwrite(fd, buf, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            outcome[path] = exc.strerror
    print(json.dumps(outcome))
    """
)


def _make_files(root: Path) -> list[Path]:
    root.chmod(0o755)
    paths = []
    for name, mode, gid in FILES:
        for capability in (False, True):
            path = root / (name + ("+cap" if capability else ""))
            path.write_bytes(b"\0" * 8192)
            os.chown(path, 0, gid)
            if capability:
                os.setxattr(path, CAPABILITY, CAP_NET_RAW)
            path.chmod(mode)  # after the capability: setting it would not clear bits
            paths.append(path)
    return paths


def _describe(paths: list[Path]) -> list[tuple[str, str, bool, bytes]]:
    """Name, permission bits, whether a capability is left, first bytes: per file."""
    described = []
    for path in paths:
        try:
            has_capability = bool(os.getxattr(path, CAPABILITY))
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            has_capability = False
        described.append(
            (
                path.name,
                oct(stat.S_IMODE(path.stat().st_mode)),
                has_capability,
                path.read_bytes()[:4],
            )
        )
    return described


def _write_as_nobody(paths: list[Path], mount: Mount) -> None:
    result = as_user(NOBODY, [sys.executable, "-c", WRITER, *map(str, paths)], mount=mount)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout).values()) == {4096}, result.stdout


def _write_as_root(paths: list[Path]) -> None:
    buf = mmap.mmap(-1, 4096)
    buf.write(b"r" * 4096)
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        try:
            assert os.pwrite(fd, buf, 0) == 4096
        finally:
            os.close(fd)


def _operation_counts(mount: Mount) -> dict[str, int]:
    operations = mount.statistics()["operations"]
    assert isinstance(operations, dict)
    return {name: op["count"] for name, op in operations.items()}


pytestmark = [needs_fuse, needs_root]


@pytest.fixture(params=["blocking", "xfs", "uncached"])
def allow_other_mount(request: pytest.FixtureRequest, mount_factory: MountFactory) -> Mount:
    mode: str = request.param
    reason = mode_runs(mode)
    if reason is not None:
        pytest.skip(f"mode {mode} cannot run here: {reason}")
    return mount_factory(options=("allow_other",), engine=None, mode=mode)


@pytest.mark.parametrize("writer", ["nobody", "root"])
def test_direct_writes_drop_set_id_bits_as_natively_with_one_request_each(
    allow_other_mount: Mount, plain: Path, writer: str
) -> None:
    mount = allow_other_mount
    on_mount, on_plain = _make_files(mount.mountpoint), _make_files(plain)
    # Reading the statistics is a getxattr itself: what one read adds is the baseline.
    start = _operation_counts(mount)
    before = _operation_counts(mount)
    for paths in (on_mount, on_plain):
        _write_as_nobody(paths, mount) if writer == "nobody" else _write_as_root(paths)
    after = _operation_counts(mount)
    described = _describe(on_mount)
    assert described == _describe(on_plain)
    assert after["write"] - before.get("write", 0) == len(on_mount)
    questions = (after["getxattr"] - before["getxattr"]) - (before["getxattr"] - start["getxattr"])
    assert questions == 0  # one request per write: no security.capability question
    # And the checks do bite (nobody is not root: bits go; root keeps them).
    modes = {name: mode for name, mode, _, _ in described}
    if writer == "nobody":
        assert modes["suid"] == "0o666" and modes["sgid-own-group"] == "0o2666"
        assert modes["sgid-other-group"] == "0o666" and modes["sgid-group-exec"] == "0o676"
    else:
        assert modes["suid-sgid"] == "0o6777"
    assert not any(capability for _, _, capability, _ in described)  # dropped by any write
    assert {first for _, _, _, first in described} == {b"wwww" if writer == "nobody" else b"rrrr"}


def test_direct_writes_stay_coherent_with_buffered_opens(mnt: Mount, plain: Path) -> None:
    """A buffered reader with the old pages cached sees an O_DIRECT write, as natively;
    private mappings of a direct file work; shared ones need FUSE_DIRECT_IO_ALLOW_MMAP,
    which the pyfuse3 transport cannot negotiate (see docs/architecture.md)."""
    outcomes = []
    for root in (mnt.mountpoint, plain):
        path = root / "shared"
        path.write_bytes(b"a" * 8192)
        reader = os.open(path, os.O_RDONLY)
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        try:
            assert os.pread(reader, 4, 0) == b"aaaa"  # the page is cached now
            buf = mmap.mmap(-1, 4096)
            buf.write(b"b" * 4096)
            os.pwrite(fd, buf, 0)
            seen = os.pread(reader, 4, 0)
            with mmap.mmap(fd, 4096, mmap.MAP_PRIVATE) as private:
                mapped = private[:4]
            try:
                mmap.mmap(fd, 4096, mmap.MAP_SHARED).close()
                shared = "ok"
            except OSError as exc:
                shared = errno.errorcode[exc.errno or 0]
        finally:
            os.close(fd)
            os.close(reader)
        outcomes.append((seen, mapped, shared))
    # Without FUSE_DIRECT_IO_ALLOW_MMAP (libfuse 3.14 cannot ask for it) the kernel
    # refuses shared mappings of FOPEN_DIRECT_IO files; dev and uring ask for it.
    shared = "ENODEV" if mnt.statistics()["transport"] == "pyfuse3" else "ok"
    assert outcomes == [(b"bbbb", b"bbbb", shared), (b"bbbb", b"bbbb", "ok")]


@given(
    mode=st.integers(0, 0o7777),
    file_type=st.sampled_from([stat.S_IFREG, stat.S_IFDIR]),
    st_gid=st.integers(0, 3),
    gid=st.integers(0, 3),
    groups=st.frozensets(st.integers(0, 3)),
    fsetid=st.booleans(),
)
def test_bits_to_drop_follows_the_kernels_rule(
    mode: int, file_type: int, st_gid: int, gid: int, groups: frozenset[int], fsetid: bool
) -> None:
    writer = Writer(gid, groups, fsetid)
    drop = bits_to_drop(file_type | mode, st_gid, writer)
    assert drop & ~(stat.S_ISUID | stat.S_ISGID) == 0
    if fsetid or file_type != stat.S_IFREG:
        assert drop == 0
        return
    assert bool(drop & stat.S_ISUID) == bool(mode & stat.S_ISUID)
    in_group = st_gid == gid or st_gid in groups
    expected_sgid = bool(mode & stat.S_ISGID) and (bool(mode & stat.S_IXGRP) or not in_group)
    assert bool(drop & stat.S_ISGID) == expected_sgid
