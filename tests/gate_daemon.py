"""A test-only FUSE filesystem whose reads complete when the test says so.

Run as ``python tests/gate_daemon.py MOUNTPOINT [--log FILE] [--patience SECONDS]
[--transport dev [--inline]]``. It prints ``ready`` on stdout once the kernel has the
mount, and serves until unmounted. With ``--transport dev`` iofs's own /dev/fuse reader
serves it; ``--inline`` has the filesystem say that no request waits
(`iofs.fs.Filesystem.may_wait`), so that the reader serves every request itself and a
parked read must hand the reading on to another task.

``/gate``
    `GATE_SIZE` bytes of `pattern`, opened with direct_io so that every read, O_DIRECT
    or not, reaches the daemon. A read parks until the gate is opened.
``/open``
    Writing anything opens the gate: parked reads and all later ones are served.
``/parked``
    A read at offset 0 returns once at least one read of ``/gate`` is parked (or the
    gate is open), with the number parked (decimal, newline). Tests wait on it instead
    of polling or sleeping.

Nothing waits forever: a read of ``/gate`` parked for *patience* seconds fails with EIO
(and the daemon logs an error), and ``/parked`` answers ``0`` after *patience* seconds,
so a test whose engine never reaches the daemon, or stalls the caller's event loop
before it can open the gate, fails instead of hanging.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio
from pyfuse3 import (
    EntryAttributes,
    FileHandleT,
    FileInfo,
    FileNameT,
    FlagT,
    FUSEError,
    InodeT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
)

from iofs.transport.dev import DevTransport

log = logging.getLogger("gate_daemon")

#: Size of ``/gate``.
GATE_SIZE = 1 << 20

_GATE = InodeT(pyfuse3.ROOT_INODE + 1)
_OPEN = InodeT(pyfuse3.ROOT_INODE + 2)
_PARKED = InodeT(pyfuse3.ROOT_INODE + 3)
#: Name, inode and permission bits of each file, in readdir order.
_FILES = (
    (b"gate", _GATE, 0o444),
    (b"open", _OPEN, 0o200),
    (b"parked", _PARKED, 0o444),
)
_TIMEOUT = 3600.0  # the kernel may cache attributes and entries: nothing here changes


def pattern(offset: int, size: int) -> bytes:
    """The content of ``/gate`` from *offset*: each 8-byte word is its own offset."""
    start = offset - offset % 8
    words = b"".join(word.to_bytes(8, "little") for word in range(start, offset + size, 8))
    return words[offset - start : offset - start + size]


class GateFilesystem(pyfuse3.Operations):
    """Three files at the root; see the module docstring."""

    def __init__(self, patience: float) -> None:
        super().__init__()
        self._patience = patience
        self._opened = trio.Event()
        self._parked = 0
        #: Set (and replaced) each time a read parks or the gate opens.
        self._changed = trio.Event()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- the gate ----------------------------------------------------------------------
    async def _read_gate(self, offset: int, size: int) -> bytes:
        if not self._opened.is_set():
            self._parked += 1
            self._change()
            log.info("read of %d bytes at %d parked (%d parked)", size, offset, self._parked)
            try:
                with trio.move_on_after(self._patience):
                    await self._opened.wait()
            finally:
                self._parked -= 1
            if not self._opened.is_set():
                log.error("read at %d parked for %g s: failing it (EIO)", offset, self._patience)
                raise FUSEError(errno.EIO)
        return pattern(offset, max(0, min(size, GATE_SIZE - offset)))

    async def _read_parked(self, offset: int) -> bytes:
        if offset > 0:
            return b""  # end of file, for readers that read until it
        with trio.move_on_after(self._patience):
            while not self._parked and not self._opened.is_set():
                await self._changed.wait()
        return b"%d\n" % self._parked

    def _open_gate(self) -> None:
        if not self._opened.is_set():
            log.info("gate opened (%d parked reads released)", self._parked)
            self._opened.set()
            self._change()

    # -- pyfuse3 operations ------------------------------------------------------------
    def _attributes(self, inode: InodeT) -> EntryAttributes:
        attributes = EntryAttributes()
        attributes.st_ino = inode
        attributes.entry_timeout = attributes.attr_timeout = _TIMEOUT
        attributes.st_uid, attributes.st_gid = os.getuid(), os.getgid()
        attributes.st_blksize = 4096
        if inode == pyfuse3.ROOT_INODE:
            attributes.st_mode = stat.S_IFDIR | 0o755
            attributes.st_nlink = 2
            return attributes
        for _, file_inode, mode in _FILES:
            if file_inode == inode:
                attributes.st_mode = stat.S_IFREG | mode
                attributes.st_nlink = 1
                attributes.st_size = GATE_SIZE if inode == _GATE else 0
                attributes.st_blocks = attributes.st_size // 512
                return attributes
        raise FUSEError(errno.ENOENT)

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext
    ) -> EntryAttributes:
        if parent_inode == pyfuse3.ROOT_INODE:
            for file_name, inode, _ in _FILES:
                if file_name == name:
                    return self._attributes(inode)
        raise FUSEError(errno.ENOENT)

    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        return self._attributes(inode)

    async def setattr(
        self,
        inode: InodeT,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: FileHandleT | None,
        ctx: RequestContext,
    ) -> EntryAttributes:
        return self._attributes(inode)  # nothing changes (``echo 1 > open`` truncates)

    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        self._attributes(inode)  # ENOENT for unknown inodes
        if inode == pyfuse3.ROOT_INODE:
            raise FUSEError(errno.EISDIR)
        return FileInfo(fh=FileHandleT(inode), direct_io=True)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        if fh == _GATE:
            return await self._read_gate(off, size)
        if fh == _PARKED:
            return await self._read_parked(off)
        raise FUSEError(errno.EBADF)

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        if fh != _OPEN:
            raise FUSEError(errno.EBADF)
        self._open_gate()
        return len(buf)

    async def flush(self, fh: FileHandleT) -> None:
        pass

    async def release(self, fh: FileHandleT) -> None:
        pass

    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        if inode != pyfuse3.ROOT_INODE:
            raise FUSEError(errno.ENOTDIR)
        return FileHandleT(inode)

    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        for index, (name, inode, _) in enumerate(_FILES[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self._attributes(inode), index + 1):
                return

    async def releasedir(self, fh: FileHandleT) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--log", type=Path, help="log (and stderr) to this file")
    parser.add_argument("--patience", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--transport", choices=("dev", "pyfuse3"), default="dev")
    parser.add_argument("--inline", action="store_true", help="claim that nothing waits")
    args = parser.parse_args(argv)
    if args.log is not None:
        # Python's tracebacks and libfuse's messages land in the log too.
        output = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(output, 2)
        os.close(output)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    options = {"fsname=gate", "subtype=gate", *pyfuse3.default_options}
    fs = GateFilesystem(args.patience)
    if args.inline:
        fs.may_wait = lambda data: False  # type: ignore[attr-defined]
    if args.transport == "dev":
        return _serve_dev(fs, args.mountpoint, options)
    pyfuse3.init(fs, str(args.mountpoint), options)
    print("ready", flush=True)
    unmount = True  # unless the kernel has unmounted us, which ends main()
    try:
        trio.run(pyfuse3.main)
        unmount = False
    finally:
        pyfuse3.close(unmount=unmount)
    log.info("unmounted")
    return 0


def _serve_dev(fs: GateFilesystem, mountpoint: Path, options: set[str]) -> int:
    transport = DevTransport()
    transport.mount(fs, mountpoint, options)
    print("ready", flush=True)
    unmount = True  # unless the kernel has unmounted us, which ends serve()
    try:
        trio.run(transport.serve, 64)
        unmount = False
    finally:
        transport.close(unmount=unmount)
    log.info("unmounted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
