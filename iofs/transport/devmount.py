"""Mounting and unmounting for the dev transport, as libfuse does it (lib/mount.c).

As root: open /dev/fuse and mount(2) a ``fuse.iofs`` filesystem on it. Otherwise (or
when the kernel refuses root's mount with EPERM): run ``fusermount3`` with one end of
a socket pair in ``_FUSE_COMMFD``; the set-uid helper mounts and sends the /dev/fuse
descriptor back over the socket (SCM_RIGHTS).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MNT_DETACH = 2

#: libfuse's flag options: name -> (mount flag, set or cleared).
_FLAG_OPTIONS = {
    "rw": (MS_RDONLY, False),
    "ro": (MS_RDONLY, True),
    "suid": (MS_NOSUID, False),
    "nosuid": (MS_NOSUID, True),
    "dev": (MS_NODEV, False),
    "nodev": (MS_NODEV, True),
    "exec": (MS_NOEXEC, False),
    "noexec": (MS_NOEXEC, True),
    "async": (MS_SYNCHRONOUS, False),
    "sync": (MS_SYNCHRONOUS, True),
    "atime": (MS_NOATIME, False),
    "noatime": (MS_NOATIME, True),
    "dirsync": (MS_DIRSYNC, True),
}
#: Options the kernel takes in the mount data (with a value after '=' where it ends so).
_KERNEL_OPTIONS = frozenset(
    {"allow_other", "default_permissions", "max_read=", "blksize="}
    | {"context=", "fscontext=", "defcontext=", "rootcontext="}
)


class MountError(Exception):
    """The mount failed; the message is one line, as libfuse or fusermount3 say it."""


@dataclass(frozen=True)
class MountRequest:
    """The libfuse-style options (``-o``) split the way lib/mount.c splits them."""

    flags: int
    kernel_options: tuple[str, ...]
    fsname: str | None
    subtype: str | None
    #: The options as fusermount3 takes them (escaped as given).
    fusermount_options: tuple[str, ...]


def parse_options(options: Iterable[str]) -> MountRequest:
    """Split mount options; raises MountError for one libfuse would not take."""
    flags = MS_NOSUID | MS_NODEV  # libfuse's default, unless told suid or dev
    kernel: list[str] = []
    fsname = subtype = None
    given: list[str] = []
    for option in sorted(options):
        given.append(option)
        if option in _FLAG_OPTIONS:
            flag, on = _FLAG_OPTIONS[option]
            flags = flags | flag if on else flags & ~flag
        elif option.startswith("fsname="):
            fsname = _unescape(option.partition("=")[2])
        elif option.startswith("subtype="):
            subtype = option.partition("=")[2]
        elif option in _KERNEL_OPTIONS or option.partition("=")[0] + "=" in _KERNEL_OPTIONS:
            kernel.append(option)
        else:
            raise MountError(f"fuse: unknown option(s): `-o {option}'")
    return MountRequest(flags, tuple(kernel), fsname, subtype, tuple(given))


def _unescape(text: str) -> str:
    out, chars = [], iter(text)
    for char in chars:
        out.append(next(chars, "\\") if char == "\\" else char)
    return "".join(out)


def mount(mountpoint: Path, options: Iterable[str], *, helper: bool = False) -> int:
    """Mount a FUSE filesystem at *mountpoint*; return the /dev/fuse descriptor.

    As root mount(2) is used unless *helper* asks for fusermount3 (as for anyone else).
    The descriptor is non-blocking and close-on-exec. Raises MountError.
    """
    request = parse_options(options)
    fd = None
    if os.geteuid() == 0 and not helper:
        fd = _mount_as_root(mountpoint, request)
    if fd is None:
        fd = _mount_with_fusermount(mountpoint, request)
    os.set_blocking(fd, False)
    return fd


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount_as_root(mountpoint: Path, request: MountRequest) -> int | None:
    """mount(2) directly; None if the kernel refuses root (EPERM, e.g. in a container)."""
    root_mode = stat.S_IFMT(os.stat(mountpoint).st_mode)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    ids = f"fd={fd},rootmode={root_mode:o},user_id={os.getuid()},group_id={os.getgid()}"
    data = ",".join([ids, *request.kernel_options])
    fstype = "fuse" + (f".{request.subtype}" if request.subtype else "")
    source = request.fsname or request.subtype or "/dev/fuse"
    libc = _libc()
    result = libc.mount(
        os.fsencode(source),
        os.fsencode(str(mountpoint)),
        fstype.encode(),
        ctypes.c_ulong(request.flags),
        data.encode(),
    )
    if result == 0:
        return fd
    code = ctypes.get_errno()
    os.close(fd)
    if code == errno.EPERM:
        return None
    raise MountError(f"fuse: mount failed: {os.strerror(code)}")


def _mount_with_fusermount(mountpoint: Path, request: MountRequest) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        command = ["fusermount3", "-o", ",".join(request.fusermount_options), "--", str(mountpoint)]
        try:
            helper = subprocess.Popen(
                command,
                env=env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise MountError("fusermount3 not found: install the fuse3 package") from None
        theirs.close()
        try:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        except OSError:
            fds = []
        _, error_output = helper.communicate()
    if not fds:
        lines = error_output.decode(errors="replace").strip().splitlines()
        raise MountError(lines[-1] if lines else f"fusermount3 failed ({helper.returncode})")
    fd = fds[0]
    os.set_inheritable(fd, False)
    return fd


def unmount(mountpoint: Path, lazy: bool = True) -> None:
    """Detach the mount at *mountpoint* (lazily: its users get ENOTCONN from then on)."""
    if os.geteuid() == 0:
        libc = _libc()
        if libc.umount2(os.fsencode(str(mountpoint)), MNT_DETACH if lazy else 0) == 0:
            return
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    with contextlib.suppress(OSError):
        subprocess.run(command, capture_output=True, check=False)
