"""POSIX behaviour through a real mount, checked against the backing directory or a plain one."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from iofs import syscalls

from .conftest import (
    ROOT,
    Mount,
    MountFactory,
    finish_mount,
    needs_fuse,
    needs_root,
    scratch_dir,
    start_mount,
)
from .differential import outcome, snapshot

#: What the engine (file data: read, write, fsync) plays no part in runs with one engine
#: (the others under -m slow).
engine_independent = pytest.mark.engine_independent


def test_files_round_trip_to_backing(mnt: Mount) -> None:
    (mnt.mountpoint / "f").write_bytes(b"hello")
    assert (mnt.backing / "f").read_bytes() == b"hello"
    (mnt.backing / "g").write_bytes(b"from below")
    assert (mnt.mountpoint / "g").read_bytes() == b"from below"
    assert sorted(os.listdir(mnt.mountpoint)) == ["f", "g"]


def test_directory_renamed_while_files_inside_are_open(mnt: Mount) -> None:
    deep = mnt.mountpoint / "a" / "b" / "c"
    deep.mkdir(parents=True)
    fd = os.open(deep / "f", os.O_RDWR | os.O_CREAT, 0o644)
    dir_fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.write(fd, b"before ")
        os.rename(mnt.mountpoint / "a", mnt.mountpoint / "z")
        os.rename(mnt.mountpoint / "z" / "b", mnt.mountpoint / "y")
        os.write(fd, b"after")
        os.fsync(fd)
        assert os.fstat(fd).st_size == len(b"before after")
        assert os.pread(fd, 100, 0) == b"before after"
        # The directory's inode still works for *at calls, from its new place.
        os.mkdir("sub", dir_fd=dir_fd)
        assert sorted(os.listdir(dir_fd)) == ["f", "sub"]
    finally:
        os.close(fd)
        os.close(dir_fd)
    assert (mnt.mountpoint / "y" / "c" / "f").read_bytes() == b"before after"
    assert (mnt.backing / "y" / "c" / "f").read_bytes() == b"before after"
    assert not (mnt.mountpoint / "a").exists()


def _descend(root_fd: int, names: list[str]) -> list[int]:
    fds = [root_fd]
    for name in names:
        fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    return fds


@engine_independent
def test_tree_deeper_than_path_max(mnt: Mount) -> None:
    names = [f"{i:03d}" + "d" * 200 for i in range(30)]  # about 6 KiB of path
    assert len("/".join(names)) > os.pathconf(mnt.mountpoint, "PC_PATH_MAX")
    root = os.open(mnt.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    fds = [root]
    try:
        for name in names:
            os.mkdir(name, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fds[-1])
        os.write(fd, b"deep")
        os.close(fd)
        os.rename("leaf", "renamed", src_dir_fd=fds[-1], dst_dir_fd=fds[-1])
        st = os.stat("renamed", dir_fd=fds[-1])
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == 4
    finally:
        for fd in reversed(fds):
            os.close(fd)
    # The same file as the backing filesystem sees it, reached without long paths.
    fds = _descend(os.open(mnt.backing, os.O_RDONLY | os.O_DIRECTORY), names)
    try:
        fd = os.open("renamed", os.O_RDONLY, dir_fd=fds[-1])
        assert os.read(fd, 10) == b"deep"
        os.close(fd)
    finally:
        for fd in reversed(fds):
            os.close(fd)
    # Tear the tree down through the mount again.
    fds = _descend(os.open(mnt.mountpoint, os.O_RDONLY | os.O_DIRECTORY), names)
    try:
        os.unlink("renamed", dir_fd=fds[-1])
        for parent, name in zip(reversed(fds[:-1]), reversed(names), strict=True):
            os.rmdir(name, dir_fd=parent)
    finally:
        for fd in reversed(fds):
            os.close(fd)
    assert os.listdir(mnt.backing) == []


@engine_independent
def test_write_through_read_only_fd_fails_with_ebadf(mnt: Mount) -> None:
    path = mnt.mountpoint / "ro"
    path.write_bytes(b"data")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            os.write(fd, b"x")
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"x", 100)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            os.read(fd, 1)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == b"data"  # and the daemon still serves


@pytest.mark.parametrize("size", [4096, 65536, 1 << 20])
def test_o_direct_read_and_write(mnt: Mount, size: int) -> None:
    path = mnt.mountpoint / "direct"
    buf = mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants
    pattern = os.urandom(size)
    buf[:] = pattern
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [buf], 0) == size
        assert os.pwritev(fd, [buf], size) == size
        out = mmap.mmap(-1, size)
        assert os.preadv(fd, [out], size) == size
        assert out[:] == pattern
    finally:
        os.close(fd)
    assert (mnt.backing / "direct").read_bytes() == pattern * 2


def test_unaligned_o_direct_does_not_hurt_the_daemon(mnt: Mount) -> None:
    fd = os.open(mnt.mountpoint / "u", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        # FUSE passes unaligned direct I/O to the daemon; ext4 would say EINVAL.
        result = outcome(lambda: os.pwrite(fd, b"abc", 1))
        assert result in {("ok", 3), ("error", "EINVAL")}
    finally:
        os.close(fd)
    assert (mnt.mountpoint / "u").exists()


@engine_independent
def test_hard_links_share_one_inode(mnt: Mount) -> None:
    a, b = mnt.mountpoint / "a", mnt.mountpoint / "b"
    a.write_bytes(b"one")
    os.link(a, b)
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert os.stat(a).st_nlink == 2
    with open(b, "ab") as f:
        f.write(b" two")
    assert a.read_bytes() == b"one two"
    os.chmod(b, 0o600)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600
    os.unlink(a)
    assert os.stat(b).st_nlink == 1
    assert os.stat(mnt.backing / "b").st_nlink == 1
    os.symlink("b", mnt.mountpoint / "s")
    os.link(mnt.mountpoint / "s", mnt.mountpoint / "s2", follow_symlinks=False)
    assert os.readlink(mnt.mountpoint / "s2") == "b"
    assert os.lstat(mnt.mountpoint / "s").st_ino == os.lstat(mnt.mountpoint / "s2").st_ino


def test_open_unlinked_file_keeps_working(mnt: Mount) -> None:
    path = mnt.mountpoint / "tmp"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.unlink(path)
        os.write(fd, b"still here")
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_nlink == 0
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
    finally:
        os.close(fd)
    assert not path.exists()


@engine_independent
def test_fifo_passes_data(mnt: Mount) -> None:
    path = mnt.mountpoint / "fifo"
    os.mkfifo(path, 0o640)
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    assert stat.S_ISFIFO(os.stat(mnt.backing / "fifo").st_mode)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(path.read_bytes()))
    reader.start()
    path.write_bytes(b"through the pipe")
    reader.join(timeout=10)
    assert received == [b"through the pipe"]


@engine_independent
def test_unix_socket_node(mnt: Mount) -> None:
    path = mnt.mountpoint / "sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    finally:
        server.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_ISSOCK(os.lstat(mnt.backing / "sock").st_mode)


@engine_independent
@needs_root
def test_device_nodes(mnt: Mount) -> None:
    os.mknod(mnt.mountpoint / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(mnt.mountpoint / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    os.mknod(mnt.mountpoint / "reg", stat.S_IFREG | 0o640)
    st = os.stat(mnt.backing / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert os.stat(mnt.mountpoint / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.stat(mnt.backing / "loop").st_mode)
    assert stat.S_IMODE(os.stat(mnt.backing / "reg").st_mode) == 0o640


@engine_independent
def test_xattrs_like_a_plain_directory(mnt: Mount, plain: Path) -> None:
    def run(root: Path) -> list[object]:
        f = root / "f"
        f.write_bytes(b"")
        (root / "d").mkdir()
        os.symlink("f", root / "l")
        return [
            outcome(lambda: os.setxattr(f, "user.a", b"1")),
            outcome(lambda: os.setxattr(f, "user.b", b"\x00binary\xff" * 100)),
            outcome(lambda: os.setxattr(root / "d", "user.dir", b"yes")),
            outcome(lambda: sorted(os.listxattr(f))),
            outcome(lambda: os.getxattr(f, "user.b")),
            outcome(lambda: os.getxattr(f, "user.missing")),
            outcome(lambda: os.setxattr(f, "user.a", b"2", os.XATTR_CREATE)),
            outcome(lambda: os.setxattr(f, "user.new", b"2", os.XATTR_REPLACE)),
            outcome(lambda: os.setxattr(f, "user.a", b"3", os.XATTR_REPLACE)),
            outcome(lambda: os.getxattr(f, "user.a")),
            outcome(lambda: os.removexattr(f, "user.a")),
            outcome(lambda: os.removexattr(f, "user.a")),
            outcome(lambda: sorted(os.listxattr(f))),
            outcome(lambda: os.getxattr(root / "d", "user.dir")),
            # user.* xattrs are not allowed on symlinks
            outcome(lambda: os.setxattr(root / "l", "user.x", b"1", follow_symlinks=False)),
            outcome(lambda: os.getxattr(root / "l", "user.b")),  # follows to f
            outcome(lambda: os.setxattr(f, "user." + "n" * 300, b"1")),
        ]

    assert run(mnt.mountpoint) == run(plain)
    assert os.getxattr(mnt.backing / "f", "user.b") == b"\x00binary\xff" * 100


@engine_independent
@needs_root
def test_trusted_xattr_on_symlink_itself(mnt: Mount) -> None:
    os.symlink("target", mnt.mountpoint / "l")
    os.setxattr(mnt.mountpoint / "l", "trusted.t", b"v", follow_symlinks=False)
    assert os.getxattr(mnt.backing / "l", "trusted.t", follow_symlinks=False) == b"v"
    assert "trusted.t" in os.listxattr(mnt.mountpoint / "l", follow_symlinks=False)


@engine_independent
def test_statfs_is_the_backing_filesystems(mnt: Mount) -> None:
    fused, backing = os.statvfs(mnt.mountpoint), os.statvfs(mnt.backing)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(fused, field) == getattr(backing, field), field
    # Free counts move with the rest of the machine; they must be close, not equal.
    assert abs(fused.f_bfree - backing.f_bfree) < backing.f_blocks // 100 + 1000
    assert abs(fused.f_ffree - backing.f_ffree) < backing.f_files // 100 + 1000


def test_fsync_and_fdatasync_reach_the_backing_file(mnt: Mount) -> None:
    before = mnt.engine_statistics()
    fd = os.open(mnt.mountpoint / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 8192)
        os.fsync(fd)
        os.fdatasync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    after = mnt.engine_statistics()
    assert after["fsyncs"] - before["fsyncs"] == 1
    assert after["fdatasyncs"] - before["fdatasyncs"] == 2
    assert after["writes"] > before["writes"]
    dir_fd = os.open(mnt.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@engine_independent
def test_rename_flags_like_a_plain_directory(mnt: Mount, plain: Path) -> None:
    def run(root: Path) -> list[object]:
        (root / "a").write_bytes(b"A")
        (root / "b").write_bytes(b"B")
        (root / "d").mkdir()
        (root / "d" / "x").write_bytes(b"X")
        at = syscalls.AT_FDCWD

        def rename2(src: str, dst: str, flags: int) -> None:
            syscalls.renameat2(at, bytes(root / src), at, bytes(root / dst), flags)

        return [
            outcome(lambda: rename2("a", "b", syscalls.RENAME_NOREPLACE)),
            outcome(lambda: rename2("a", "c", syscalls.RENAME_NOREPLACE)),
            outcome(lambda: rename2("c", "b", syscalls.RENAME_EXCHANGE)),
            outcome(lambda: rename2("c", "missing", syscalls.RENAME_EXCHANGE)),
            outcome(lambda: rename2("d", "c", syscalls.RENAME_EXCHANGE)),
            outcome(lambda: rename2("c", "c/y", 0)),
            outcome(lambda: os.rename(root / "b", root / "c")),
            outcome(lambda: os.rename(root / "c", root / "c")),
            snapshot(root),
        ]

    assert run(mnt.mountpoint) == run(plain)


@engine_independent
def test_readdir_during_changes_skips_and_repeats_nothing(mnt: Mount) -> None:
    names = {f"entry-{i:05d}-" + "x" * 40 for i in range(2000)}
    for name in names:
        (mnt.backing / name).touch()
    seen: list[str] = []
    removed, added = set(), set()
    with os.scandir(mnt.mountpoint) as listing:
        for i, entry in enumerate(listing):
            seen.append(entry.name)
            if i == 300:
                # Remove entries on both sides of the cursor, add new ones.
                for victim in sorted(names - set(seen))[::7] + sorted(seen)[::7]:
                    os.unlink(mnt.mountpoint / victim)
                    removed.add(victim)
                for j in range(100):
                    name = f"added-{j:03d}"
                    (mnt.mountpoint / name).touch()
                    added.add(name)
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    untouched = names - removed
    assert untouched <= set(seen), "an entry that was never removed was skipped"
    assert set(seen) <= names | added
    # A new listing (rewind) reflects the changes.
    assert set(os.listdir(mnt.mountpoint)) == (names - removed) | added


@engine_independent
def test_listing_reports_dot_entries_and_types(mnt: Mount) -> None:
    (mnt.mountpoint / "d").mkdir()
    (mnt.mountpoint / "f").touch()
    os.symlink("f", mnt.mountpoint / "l")
    out = subprocess.run(
        ["ls", "-a1F", str(mnt.mountpoint)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["./", "../", "d/", "f", "l@"]
    with os.scandir(mnt.mountpoint) as listing:
        kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink()) for e in listing}
    assert kinds == {"d": (True, False), "f": (False, False), "l": (False, True)}


@engine_independent
def test_timestamps_explicit_now_and_omit(mnt: Mount) -> None:
    path = mnt.mountpoint / "t"
    path.write_bytes(b"")
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(mnt.backing / "t")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    # atime "now", mtime left alone
    before = time.time_ns()
    syscalls.utimensat(bytes(path), syscalls.NOW, None)
    st = os.stat(mnt.backing / "t")
    assert st.st_mtime_ns == 2_000_000_456
    assert before - 1_000_000_000 <= st.st_atime_ns <= time.time_ns() + 1_000_000_000
    # mtime "now", atime left alone
    atime = st.st_atime_ns
    syscalls.utimensat(bytes(path), None, syscalls.NOW)
    st = os.stat(mnt.backing / "t")
    assert st.st_atime_ns == atime
    assert st.st_mtime_ns >= before - 1_000_000_000
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


@engine_independent
def test_symlink_timestamps_without_following(mnt: Mount) -> None:
    (mnt.mountpoint / "target").write_bytes(b"")
    os.utime(mnt.mountpoint / "target", ns=(5_000_000_000, 5_000_000_000))
    os.symlink("target", mnt.mountpoint / "l")
    os.utime(mnt.mountpoint / "l", ns=(3_000_000_000, 4_000_000_000), follow_symlinks=False)
    assert os.lstat(mnt.backing / "l").st_mtime_ns == 4_000_000_000
    assert os.stat(mnt.backing / "target").st_mtime_ns == 5_000_000_000


def test_truncate_chmod_and_sizes(mnt: Mount, plain: Path) -> None:
    def run(root: Path) -> list[object]:
        f = root / "f"
        f.write_bytes(b"0123456789")
        results: list[object] = [
            outcome(lambda: os.truncate(f, 4)),
            outcome(f.read_bytes),
            outcome(lambda: os.truncate(f, 10000)),
            outcome(lambda: os.stat(f).st_size),
            outcome(lambda: f.read_bytes()[:6]),
            outcome(lambda: os.chmod(f, 0o4755)),
            outcome(lambda: oct(os.stat(f).st_mode)),
            outcome(lambda: os.truncate(root / "missing", 1)),
            outcome(lambda: os.truncate(root, 1)),
        ]
        with open(f, "r+b") as handle:
            results.append(outcome(lambda: os.ftruncate(handle.fileno(), 3)))
        results.append(outcome(f.read_bytes))
        results.append(outcome(lambda: open(root / "new", "x").close()))
        results.append(outcome(lambda: open(root / "new", "x").close()))
        results.append(outcome(lambda: os.stat(root / "new").st_size))
        return results

    assert run(mnt.mountpoint) == run(plain)


@engine_independent
@needs_root
def test_chown_as_root(mnt: Mount) -> None:
    path = mnt.mountpoint / "owned"
    path.write_bytes(b"")
    os.chown(path, 1234, 5678)
    st = os.stat(mnt.backing / "owned")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.symlink("owned", mnt.mountpoint / "l")
    os.chown(mnt.mountpoint / "l", 42, 43, follow_symlinks=False)
    st = os.lstat(mnt.backing / "l")
    assert (st.st_uid, st.st_gid) == (42, 43)
    assert os.stat(mnt.backing / "owned").st_uid == 1234


def _as_nobody(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


NOBODY_SCRIPT = """
umask 027
echo data > file
mkdir dir
ln -s file link
mkfifo fifo
mkdir shared/sub
echo x > shared/file
"""


@engine_independent
@needs_root
def test_nodes_created_by_a_user_belong_to_that_user(
    mount_factory: MountFactory, plain: Path
) -> None:
    mnt = mount_factory(options=("allow_other",))

    def prepare(root: Path) -> None:
        root.chmod(0o777)
        shared = root / "shared"
        shared.mkdir()
        os.chown(shared, 0, 100)
        shared.chmod(0o2777)  # set-group-ID: new nodes inherit group 100

    prepare(mnt.mountpoint)
    prepare(plain)
    for root in (mnt.mountpoint, plain):
        result = _as_nobody(NOBODY_SCRIPT, root)
        assert result.returncode == 0, result.stderr
    st = os.stat(mnt.backing / "file")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o640)
    st = os.stat(mnt.backing / "shared" / "sub")
    assert st.st_gid == 100 and st.st_mode & stat.S_ISGID
    assert snapshot(mnt.backing) == snapshot(plain)
    # The kernel checks permissions: nobody may not write into root's 0755 directory.
    (mnt.mountpoint / "closed").mkdir(mode=0o755)
    denied = _as_nobody("echo x > closed/f", mnt.mountpoint)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


@needs_root
@pytest.mark.parametrize(
    "script",
    ["echo more >> prog", "truncate -s 2 prog", "echo new > prog"],
    ids=["append", "truncate", "o_trunc"],
)
def test_changes_by_a_user_clear_set_id_bits(
    mount_factory: MountFactory, plain: Path, script: str
) -> None:
    mnt = mount_factory(options=("allow_other",))

    def run(root: Path) -> tuple[str, bytes]:
        root.chmod(0o777)
        f = root / "prog"
        f.write_bytes(b"#!/bin/sh\n")
        os.chown(f, 65534, 65534)
        f.chmod(0o6775)
        result = _as_nobody(script, root)
        assert result.returncode == 0, result.stderr
        return oct(os.stat(f).st_mode), f.read_bytes()

    assert run(mnt.mountpoint) == run(plain)


@engine_independent
def test_errors_keep_their_errno(mnt: Mount, plain: Path) -> None:
    def run(root: Path) -> list[object]:
        (root / "f").write_bytes(b"")
        (root / "d").mkdir()
        (root / "d" / "x").touch()
        return [
            outcome(lambda: os.stat(root / "missing")),
            outcome(lambda: os.mkdir(root / "f")),
            outcome(lambda: os.rmdir(root / "d")),
            outcome(lambda: os.rmdir(root / "f")),
            outcome(lambda: os.unlink(root / "d")),
            outcome(lambda: os.listdir(root / "f")),
            outcome(lambda: os.open(root / "d", os.O_WRONLY)),
            outcome(lambda: os.rename(root / "d", root / "d" / "sub")),
            outcome(lambda: os.link(root / "d", root / "dlink")),
            outcome(lambda: os.symlink("x", root / "f")),
            outcome(lambda: os.readlink(root / "f")),
            outcome(lambda: os.mkdir(root / ("n" * 256))),
            outcome((root / "f" / "below").touch),
        ]

    assert run(mnt.mountpoint) == run(plain)


@pytest.mark.skipif(not ROOT, reason="reads the daemon's file descriptors")
def test_forgotten_inodes_release_their_descriptors(mnt: Mount) -> None:
    # Each file open while counting: the kernel cannot forget its inode before (another
    # test run on the machine may write drop_caches at any time).
    files = [os.open(mnt.mountpoint / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(200)]
    try:
        for fd in files:
            os.write(fd, b"x")
        assert mnt.counters()["inodes"] > 200
    finally:
        for fd in files:
            os.close(fd)
    for i in range(200):
        os.unlink(mnt.mountpoint / f"f{i}")
    # Ask the kernel to drop its dentries and inodes: the daemon is told to forget.
    Path("/proc/sys/vm/drop_caches").write_text("2")
    deadline = time.monotonic() + 10
    while mnt.counters()["inodes"] > 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mnt.counters()["inodes"] <= 10
    assert mnt.counters()["open_files"] == 0


@needs_fuse
@needs_root
def test_full_filesystem_gives_short_writes_and_enospc() -> None:
    """On a full backing filesystem the mount fails exactly as a plain directory does."""
    base = scratch_dir("iofs-full-")
    backing, plain, mountpoint = base / "backing", base / "plain", base / "mnt"
    tmpfs_mounts = []
    try:
        for target in (backing, plain, mountpoint):
            target.mkdir()
        for target in (backing, plain):
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True
            )
            tmpfs_mounts.append(target)
        mnt = start_mount(backing, mountpoint, base / "daemon.log")
        try:
            on_mount, on_plain = _fill(mountpoint), _fill(plain)
            assert on_mount == on_plain
            assert ("error", "ENOSPC") in on_plain
            # Space comes back as on the backing filesystem: at once after unlink or a
            # rename over the file, and after the last close of an unlinked open file.
            # (An O_PATH descriptor keeps the kernel's inode, so no FORGET can come to
            # the daemon's rescue: it must let go of the file by itself.)
            pinned = os.open(mountpoint / "f", os.O_PATH)
            try:
                os.unlink(mountpoint / "f")
                (mountpoint / "g").write_bytes(b"y" * 900_000)
                assert os.fstat(pinned).st_nlink == 0
            finally:
                os.close(pinned)
            (mountpoint / "h").write_bytes(b"small")
            os.rename(mountpoint / "h", mountpoint / "g")
            (mountpoint / "i").write_bytes(b"z" * 900_000)
            held = os.open(mountpoint / "i", os.O_RDONLY)
            os.unlink(mountpoint / "i")
            with pytest.raises(OSError) as full:
                (mountpoint / "j").write_bytes(b"z" * 900_000)  # still held open
            assert full.value.errno == errno.ENOSPC
            os.unlink(mountpoint / "j")
            os.close(held)  # FUSE reports the release just after close returns
            deadline = time.monotonic() + 5
            while os.statvfs(backing).f_bfree * os.statvfs(backing).f_frsize < 900_000:
                assert time.monotonic() < deadline, "the closed file's space never came back"
                time.sleep(0.01)
            (mountpoint / "k").write_bytes(b"z" * 900_000)
        finally:
            finish_mount(mnt)
    finally:
        for target in tmpfs_mounts:
            subprocess.run(["umount", str(target)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _fill(root: Path) -> list[object]:
    fd = os.open(root / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    results: list[object] = []
    try:
        results += [outcome(lambda: os.write(fd, b"x" * 700_000)) for _ in range(3)]
        results.append(outcome(lambda: os.fsync(fd)))
    finally:
        os.close(fd)
    results.append(os.stat(root / "f").st_size)
    results.append(outcome(lambda: (root / "g").write_bytes(b"more")))
    return results
