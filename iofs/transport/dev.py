"""The dev transport: iofs speaks the FUSE protocol itself on /dev/fuse, on the trio loop.

Why this module is long: it is one protocol engine, `DevTransport`: the reader and its
inline/hand-off serving, INTERRUPT and FORGET handling, INIT's negotiation and the
table of some forty opcodes (each parse, call and reply a few lines) share the
connection's state and read best side by side. The wire structs (`protocol`), mounting
(`devmount`), directory listings (`listing`) and the io_uring queues (`uring`) are apart.

One reader task waits for the non-blocking /dev/fuse descriptor to become readable and
then reads requests into one reused buffer until the kernel has none left (a batch per
wake-up). Each request is parsed with precompiled structs and copied out of the buffer
(names, a write's data); a task calls the `Filesystem` operation and writes the reply
with one writev(2). FORGET, BATCH_FORGET and INTERRUPT, which have no reply, are handled
by the reader itself. At most *max_tasks* requests are served at once; beyond that the
reader waits, and the kernel queues.

Which task serves a request: a task of its own where the filesystem says the request
may wait (`Filesystem.may_wait`: an asynchronous engine, the metadata queue, faults), so
that requests overlap; otherwise the reader itself, inline, which saves a task's start
and end per request (about a fifth of the daemon's CPU per 4 KiB read in blocking mode).
The filesystem's word is a guess, not a promise: a request served inline that must wait
after all hands the reading on to a new reader task, and its task finishes serving it
(a leader/follower hand-off), so nothing waits behind it.

A read the filesystem can start without a task (`Filesystem.start_read`: an aligned
O_DIRECT read on a kernel-async engine, no faults armed) gets none: the reader prepares
it, commits the reads of a batch with one system call before it waits (or yields), and
the reply is written from the completion, by whoever reaps it. (The uring transport,
whose replies its flusher task commits, keeps a task per read.)

INTERRUPT (a signal reached a caller waiting for a request): a request that changes
nothing (`CANCELLABLE`: a read, getattr, fsync...) and may wait for long is cancelled
and answered EINTR, so the caller's system call returns at once. Which requests may wait
for long the filesystem says (`Filesystem.waits_long`: while faults are armed, whose
delays last up to minutes); the others wait at most for an engine's operation, which
completes first even when cancelled (the kernel owns its buffer), so a cancel scope for
each (entering and leaving one costs about a fifth of a 4 KiB read's CPU in xfs mode)
would buy them nothing. Any other request runs to its end and
is answered as usual, which the protocol allows (the kernel waits for that reply): a
write or a rename must not report EINTR after it took effect. An INTERRUPT for a
request already answered is ignored; none is answered (an ENOSYS answer would stop the
kernel sending them).

What INIT negotiates beyond libfuse 3.14 (see `DevTransport.wanted`):

- HANDLE_KILLPRIV_V2: the kernel stops asking for ``security.capability`` before every
  write (the superblock is SB_NOSEC) and instead flags writes, truncates and O_TRUNC
  opens by callers without CAP_FSETID; the filesystem then drops set-user-ID,
  set-group-ID and ``security.capability`` itself (`Filesystem.drop_privileges`).
- DIRECT_IO_ALLOW_MMAP: shared writable mappings of files opened with direct_io.
- max_background / congestion_threshold: how many asynchronous requests (direct I/O at a
  queue depth, readahead) the kernel lets be in flight at once. The kernel caps it for a
  daemon without CAP_SYS_ADMIN at the fuse module's ``max_user_bgreq``.
- MAX_PAGES: requests of up to 1 MiB; FOPEN_PARALLEL_DIRECT_WRITES on every open.
- PASSTHROUGH (Linux 6.9 and later, a daemon with CAP_SYS_ADMIN, no writeback cache):
  the filesystem may register a backing file (`open_backing`) and answer an open with
  FOPEN_PASSTHROUGH and its backing id; the kernel then reads and writes that file
  itself (the ``passthrough`` mode, see docs/passthrough.md).

FALLOCATE reaches `Filesystem.fallocate` (pyfuse3 has no such operation).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import types
from collections.abc import Callable, Coroutine, Generator, Mapping
from pathlib import Path
from typing import Any

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData

from ..connection import MAX_BACKGROUND_LIMIT, BackgroundLimits, congestion_threshold_for
from ..errors import ExitStatus
from . import devmount
from . import protocol as p
from .listing import DirectoryListing, entry_out

log = logging.getLogger(__name__)

#: The largest write the kernel may send (and read it may ask for): 256 pages.
MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
#: Room for the request header and the largest fixed part before a write's data.
_HEADER_ROOM = 4096
DEFAULT_MAX_BACKGROUND = 64
_XATTR_CREATE, _XATTR_REPLACE = 1, 2
_IN_SIZE = p.IN_HEADER.size
_OUT_SIZE = p.OUT_HEADER.size
_WRITE_DATA = _IN_SIZE + p.WRITE_IN.size
_pack_out = p.OUT_HEADER.pack
_pack_write_out = p.WRITE_OUT.pack
_WRITE_REPLY_SIZE = _OUT_SIZE + p.WRITE_OUT.size
#: A request ready to be served: (unique, operation, its arguments, how to reply).
_Pending = tuple[int, Callable[..., Coroutine[Any, Any, Any]], tuple[Any, ...], Any]
#: Requests whose operation reaches the I/O engine (see `Filesystem.may_wait`).
_DATA_OPCODES = frozenset({p.READ, p.WRITE, p.FSYNC})
#: Requests a reader serves inline in a row before it lets the loop's other tasks run
#: (its replies let the kernel send more, so the queue might never run dry).
_INLINE_STREAK = 32
#: Requests an INTERRUPT cancels (answered EINTR): they change nothing the caller could
#: see after an EINTR, so being cut short loses nothing. (fsync may fail with EINTR.)
#: Not GETXATTR: reading ``iofs.mode=SETTING`` switches the mode.
CANCELLABLE = frozenset(
    {p.GETATTR, p.READLINK, p.READ, p.STATFS, p.FSYNC, p.LISTXATTR, p.FSYNCDIR, p.ACCESS}
)


class RequestContext:
    """Who asks (pyfuse3.RequestContext's fields, settable from Python)."""

    __slots__ = ("gid", "pid", "uid", "umask")

    def __init__(self, uid: int, gid: int, pid: int, umask: int = 0) -> None:
        self.uid, self.gid, self.pid, self.umask = uid, gid, pid, umask


class SetattrFields:
    """Which attributes a SETATTR changes (pyfuse3.SetattrFields' fields)."""

    __slots__ = (
        "update_atime",
        "update_ctime",
        "update_gid",
        "update_mode",
        "update_mtime",
        "update_size",
        "update_uid",
    )

    def __init__(self, valid: int) -> None:
        self.update_atime = bool(valid & (p.FATTR_ATIME | p.FATTR_ATIME_NOW))
        self.update_mtime = bool(valid & (p.FATTR_MTIME | p.FATTR_MTIME_NOW))
        self.update_ctime = bool(valid & p.FATTR_CTIME)
        self.update_mode = bool(valid & p.FATTR_MODE)
        self.update_uid = bool(valid & p.FATTR_UID)
        self.update_gid = bool(valid & p.FATTR_GID)
        self.update_size = bool(valid & p.FATTR_SIZE)


class Malformed(Exception):
    """A request shorter than its opcode's layout or without its names' terminators."""


def _names(body: memoryview, count: int) -> list[bytes]:
    """*count* NUL-terminated names at the start of *body*."""
    parts = bytes(body).split(b"\0", count)
    if len(parts) <= count:
        raise Malformed("a name without its terminating NUL")
    return parts[:count]


def _fixed(layout: Any, body: memoryview) -> tuple[Any, ...]:
    if len(body) < layout.size:
        raise Malformed(f"{len(body)} bytes, {layout.size} expected")
    result: tuple[Any, ...] = layout.unpack_from(body)
    return result


class DevTransport:
    """FUSE on /dev/fuse, parsed and answered by iofs itself (see the module docstring)."""

    name = "dev"

    def __init__(self, max_background: int | None = None) -> None:
        self.fd = -1
        self.fs: Any = None  # the Filesystem (typed against pyfuse3.Operations)
        self.mountpoint: Path | None = None
        self.requested_background = max_background or DEFAULT_MAX_BACKGROUND
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._running = 0
        self._max_tasks = 64
        self._room: trio.Event | None = None
        self._terminated = False
        self.failure: str | None = None
        #: The request the last parser made ready: (unique, operation, arguments, reply).
        self._pending: _Pending | None = None
        self._buffer = bytearray(0)  # shared by the reader tasks, one at a time
        #: The kernel's INIT, read at mount to check its protocol version, until served.
        self._first_request: bytes | None = None
        #: The cancel scopes of the cancellable requests being served, by unique.
        self._cancellable: dict[int, trio.CancelScope] = {}
        #: What the filesystem has to do once a reply is sent (`close_after_replies`).
        self._after_reply: Callable[[], None] | None = None
        #: `Filesystem.waits_long`, looked up once in `serve`; None: every request may.
        self._waits_long: Callable[[], bool] | None = None
        #: The filesystem's `start_read`, if it has one; a read started since the last
        #: `_commit_reads`.
        self._start_read: Callable[..., bool] | None = None
        self._reads_started = False
        # negotiated at INIT
        self.initialized = False
        self.kernel_minor = 0
        self.flags = 0
        self.max_background = 0
        self.congestion_threshold = 0
        # counters
        self.requests = 0
        self.wakeups = 0
        self.max_batch = 0
        self.max_in_flight = 0
        self.abandoned_replies = 0
        self.malformed = 0
        self.unsupported = 0
        self.interrupts = 0
        self.interrupted = 0
        self.forgets = 0
        self.privileges_dropped = 0
        self.inline = 0  # requests served by the reader itself
        self.handoffs = 0  # of those, the ones that waited and handed the reading on
        self.task_free = 0  # reads started without a task, replied on completion
        self._parsers: dict[int, Callable[[int, int, RequestContext, memoryview], None]] = {
            p.LOOKUP: self._lookup,
            p.GETATTR: self._getattr,
            p.SETATTR: self._setattr,
            p.READLINK: self._readlink,
            p.SYMLINK: self._symlink,
            p.MKNOD: self._mknod,
            p.MKDIR: self._mkdir,
            p.UNLINK: self._unlink,
            p.RMDIR: self._rmdir,
            p.RENAME: self._rename,
            p.RENAME2: self._rename2,
            p.LINK: self._link,
            p.OPEN: self._open,
            p.READ: self._read,
            p.WRITE: self._write,
            p.STATFS: self._statfs,
            p.RELEASE: self._release,
            p.FSYNC: self._fsync,
            p.SETXATTR: self._setxattr,
            p.GETXATTR: self._getxattr,
            p.LISTXATTR: self._listxattr,
            p.REMOVEXATTR: self._removexattr,
            p.FLUSH: self._flush,
            p.OPENDIR: self._opendir,
            p.READDIR: self._readdir,
            p.READDIRPLUS: self._readdirplus,
            p.RELEASEDIR: self._releasedir,
            p.FSYNCDIR: self._fsyncdir,
            p.ACCESS: self._access,
            p.CREATE: self._create,
            p.FALLOCATE: self._fallocate,
        }

    # -- lifecycle ----------------------------------------------------------------------
    def mount(self, fs: pyfuse3.Operations, mountpoint: Path, options: set[str]) -> None:
        from . import MountFailed

        self.fs = fs
        self.mountpoint = mountpoint
        try:
            self.fd = devmount.mount(mountpoint, options)
        except devmount.MountError as exc:
            raise MountFailed(str(exc)) from None
        refusal = self.take_init()
        if refusal is not None:
            self.close(unmount=True)
            raise MountFailed(refusal, ExitStatus.UNAVAILABLE)

    def take_init(self) -> str | None:
        """Read the INIT the kernel queued when it mounted, so that `iofs mount` fails
        in one line, before it returns, on a kernel whose protocol is too old (the INIT
        is then refused, which the kernel takes as a failed connection). None if it can
        be served: it is, first thing in `serve`."""
        buffer = bytearray(MAX_WRITE + _HEADER_ROOM)
        try:
            length = os.readv(self.fd, [buffer])
        except OSError:
            return None  # nothing queued (mount(2) queues it; never seen): served later
        self._first_request = bytes(buffer[:length])
        if length < _IN_SIZE + p.INIT_IN.size:
            return None  # malformed: `_dispatch` says so
        _, opcode, unique, *_ = p.IN_HEADER.unpack_from(buffer)
        if opcode != p.INIT:
            return None
        major, minor, *_ = p.INIT_IN.unpack_from(buffer, _IN_SIZE)
        reason = protocol_refusal(self.name, major, minor)
        if reason is not None:
            self._first_request = None
            self._error(unique, errno.EPROTO)
        return reason

    async def serve(self, max_tasks: int) -> None:
        self._max_tasks = max(1, max_tasks)
        self._buffer = bytearray(MAX_WRITE + _HEADER_ROOM)
        close_after_replies = getattr(self.fs, "close_after_replies", None)
        if close_after_replies is not None:
            self._after_reply = close_after_replies()
        self._waits_long = getattr(self.fs, "waits_long", None)  # only iofs's fs says
        self._start_read = getattr(self.fs, "start_read", None)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._read_requests()
        # Every task has replied (or found the connection gone); the reads started
        # without a task complete in the engine's reaper: wait for their replies too.
        with trio.CancelScope(shield=True):
            self._commit_reads()
            while self._running:
                self._room = trio.Event()
                await self._room.wait()

    def terminate(self) -> None:
        self._terminated = True
        if self._scope is not None:  # the reader's, not the requests' being served
            self._scope.cancel()

    def _stop_broken(self, what: str) -> None:
        """Stop reading for good: the connection broke in a way no kernel makes it."""
        self.failure = f"{what}, which a live FUSE connection never does"
        log.error("%s: stopped serving", self.failure)
        self._terminated = True

    def close(self, unmount: bool) -> None:
        if unmount and self.mountpoint is not None:
            devmount.unmount(self.mountpoint, lazy=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def direct_io_allows_mmap(self) -> bool:
        return bool(self.flags & p.DIRECT_IO_ALLOW_MMAP)

    @property
    def kills_privileges(self) -> bool:
        return bool(self.flags & p.HANDLE_KILLPRIV_V2)

    def passthrough_refusal(self, writeback_cache: bool) -> str | None:
        if writeback_cache or getattr(self.fs, "enable_writeback_cache", False):
            return (
                "FUSE passthrough and the writeback cache exclude each other (the kernel "
                "turns passthrough off): mount without --writeback-cache"
            )
        if not _has_sys_admin():
            return (
                "FUSE passthrough needs CAP_SYS_ADMIN to register backing files "
                "(FUSE_DEV_IOC_BACKING_OPEN): mount as root"
            )
        release = _kernel_release()
        if release < (6, 9):
            version = ".".join(map(str, release))
            return f"Linux {version} has no FUSE passthrough (6.9 or later has)"
        if self.initialized and not self.flags & p.PASSTHROUGH:
            return (
                "the kernel did not offer FUSE_PASSTHROUGH at INIT (built without "
                "CONFIG_FUSE_PASSTHROUGH?)"
            )
        return None

    def open_backing(self, fd: int) -> int:
        self._check_connected()
        argument = bytearray(p.BACKING_MAP.pack(fd, 0, 0))
        backing_id: int = fcntl.ioctl(self.fd, p.FUSE_DEV_IOC_BACKING_OPEN, argument, True)
        return backing_id

    def close_backing(self, backing_id: int) -> None:
        self._check_connected()
        argument = bytearray(p.BACKING_ID.pack(backing_id))
        fcntl.ioctl(self.fd, p.FUSE_DEV_IOC_BACKING_CLOSE, argument, True)

    def _check_connected(self) -> None:
        if self.fd < 0:
            raise OSError(errno.EBADF, "the FUSE connection is closed")

    def background_limits(self, wanted: int) -> BackgroundLimits:
        """What INIT asks for: *wanted*, capped at max_user_bgreq for a daemon that is not
        root (the kernel's cap, said in one warning line), with the kernel's three quarters
        as congestion threshold."""
        background = min(wanted, MAX_BACKGROUND_LIMIT)
        user_limit = _user_limit() if os.geteuid() != 0 else background
        if background <= user_limit:
            return BackgroundLimits(background, congestion_threshold_for(background))
        return BackgroundLimits(
            user_limit,
            congestion_threshold_for(user_limit),
            f"not root: the fuse module caps max_background at its max_user_bgreq of "
            f"{user_limit} (asked for {background}; mount as root for more)",
        )

    def statistics(self) -> Mapping[str, int]:
        counters = {
            "transport_requests": self.requests,
            "transport_wakeups": self.wakeups,
            "transport_max_batch": self.max_batch,
            "transport_in_flight": self._running,
            "transport_max_in_flight": self.max_in_flight,
            "transport_inline": self.inline,
            "transport_handoffs": self.handoffs,
            "transport_task_free_reads": self.task_free,
            "transport_abandoned_replies": self.abandoned_replies,
            "transport_malformed": self.malformed,
            "transport_unsupported": self.unsupported,
            "transport_interrupts": self.interrupts,
            "transport_interrupted": self.interrupted,
            "transport_privileges_dropped": self.privileges_dropped,
            "fuse_protocol_minor": self.kernel_minor,
            "fuse_max_background": self.max_background,
            "fuse_congestion_threshold": self.congestion_threshold,
            "fuse_max_write": MAX_WRITE if self.initialized else 0,
        }
        for flag, name in p.CAPABILITY_NAMES.items():
            counters[f"fuse_{name}"] = int(bool(self.flags & flag))
        return counters

    # -- reading ------------------------------------------------------------------------
    async def _read_requests(self) -> None:
        """Read and dispatch requests until unmounted or terminated, or until this task
        becomes the task of a request served inline that has to wait (see `_serve`)."""
        with trio.CancelScope() as self._scope:
            buffers = [self._buffer]
            view = memoryview(self._buffer)
            fd = self.fd
            batch = streak = 0
            if self._first_request is not None:  # the INIT `take_init` read
                first, self._first_request = self._first_request, None
                self._buffer[: len(first)] = first
                self.requests += 1
                await self._dispatch(view, len(first), may_inline=False)
            while not self._terminated:
                if self._running >= self._max_tasks:
                    self._commit_reads()
                    self._room = trio.Event()
                    await self._room.wait()
                try:
                    length = os.readv(fd, buffers)
                except BlockingIOError:
                    self.max_batch = max(self.max_batch, batch)
                    batch = streak = 0
                    self._commit_reads()
                    await trio.lowlevel.wait_readable(fd)
                    self.wakeups += 1
                    continue
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENODEV:  # unmounted: the end
                        return
                    if exc.errno == errno.ENOENT:  # the request was gone before we read it
                        continue
                    raise
                if not length:
                    # The kernel answers a read with a whole request or an error, never
                    # with nothing: the descriptor or the buffer is not what it should
                    # be. Reading on would spin on the same empty answer for ever.
                    self._stop_broken("a read of /dev/fuse returned 0 bytes")
                    return
                batch += 1
                self.requests += 1
                inline = await self._dispatch(view, length)
                if inline is False:
                    return  # this task serves a request that waits: another reads now
                streak += 1  # (None too: a read started without a task may reply inline)
                if streak >= _INLINE_STREAK:
                    streak = 0
                    self._commit_reads()
                    await trio.lowlevel.checkpoint()

    async def _dispatch(
        self, view: memoryview, length: int, may_inline: bool = True
    ) -> bool | None:
        """Parse one request and serve it: inline if *may_inline* and the filesystem says
        it does not wait
        (True once replied; False if it waited after all and this task has become its
        task, see `_serve`), else in a task of its own (None, as for requests the
        transport answers itself)."""
        if length < _IN_SIZE:
            self.malformed += 1
            log.warning("FUSE request of %d bytes, shorter than its header", length)
            return None
        opcode: int
        size, opcode, unique, nodeid, uid, gid, pid, extlen, _ = p.IN_HEADER.unpack_from(view)
        if size != length or _IN_SIZE + extlen * 8 > length:
            self.malformed += 1
            log.warning("FUSE request %d: length %d, read %d bytes", unique, size, length)
            self._error(unique, errno.EIO)
            return None
        body = view[_IN_SIZE : length - extlen * 8]
        parse = self._parsers.get(opcode)
        try:
            if parse is not None:
                parse(unique, nodeid, RequestContext(uid, gid, pid), body)
            elif opcode == p.FORGET:
                (nlookup,) = _fixed(p.FORGET_IN, body)
                self.forgets += 1
                await self.fs.forget([(nodeid, nlookup)])
            elif opcode == p.BATCH_FORGET:
                await self._batch_forget(body)
            elif opcode == p.INTERRUPT:
                self._interrupt(body)
            elif opcode == p.INIT:
                self._init(unique, body)
            elif opcode == p.DESTROY:
                self._reply(unique)
            else:
                self.unsupported += 1
                self._error(unique, errno.ENOSYS)
        except Malformed as exc:
            self.malformed += 1
            name = p.OPCODE_NAMES.get(opcode, str(opcode))
            log.warning("malformed FUSE request %d (%s): %s", unique, name, exc)
            if opcode not in (p.FORGET, p.BATCH_FORGET, p.INTERRUPT):  # never answered
                self._error(unique, errno.EIO)
        pending = self._pending
        if pending is None:
            return None
        self._pending = None
        may_wait = getattr(self.fs, "may_wait", None)  # a guess only iofs's filesystem makes
        if not may_inline or may_wait is None or may_wait(opcode in _DATA_OPCODES):
            assert self._nursery is not None
            # The scope made now, not when the task starts: an INTERRUPT may come first.
            scope = None
            if opcode in CANCELLABLE:
                waits_long = self._waits_long
                if waits_long is None or waits_long():
                    scope = self._cancel_scope(pending[0])
            self._nursery.start_soon(self._serve, *pending, False, scope, name="iofs request")
            return None
        self.inline += 1
        # Served here, without a coroutine of its own: most never wait (see `_serve`).
        unique, call, args, reply = pending
        try:
            operation = call(*args)
            trap = operation.send(None)
        except StopIteration as done:
            result = done.value
        except Exception as exc:  # its first step failed: answered as in `_serve`
            self._fail(unique, exc)
            self._served()
            return True
        except BaseException:
            self._served()
            raise
        else:  # it waits after all: this task hands the reading on (see `_serve`)
            cancellable = opcode in CANCELLABLE
            return await self._serve(unique, operation, trap, reply, True, None, cancellable)
        try:
            reply(unique, result)
        finally:
            self._served()
        return True

    def _cancel_scope(self, unique: int) -> trio.CancelScope:
        """A cancel scope for request *unique*, which an INTERRUPT for it cancels."""
        scope = self._cancellable[unique] = trio.CancelScope()
        return scope

    def _interrupt(self, body: memoryview) -> None:
        """INTERRUPT: cancel the request if it is in flight and `CANCELLABLE`.

        No reply: the kernel waits for the interrupted request's own reply (EINTR once
        cancelled), and would take ENOSYS as "never send interrupts again". The reader
        dispatches a request before it reads the next, so the target of an INTERRUPT is
        either being served or already answered (then there is nothing to do).
        """
        (target,) = _fixed(p.INTERRUPT_IN, body)
        self.interrupts += 1
        scope = self._cancellable.get(target)
        if scope is not None:
            scope.cancel()

    async def _batch_forget(self, body: memoryview) -> None:
        count, _ = _fixed(p.BATCH_FORGET_IN, body)
        end = p.BATCH_FORGET_IN.size + count * p.FORGET_ONE.size
        if end > len(body):
            raise Malformed(f"{count} forgets in {len(body)} bytes")
        forgets = [
            p.FORGET_ONE.unpack_from(body, offset)
            for offset in range(p.BATCH_FORGET_IN.size, end, p.FORGET_ONE.size)
        ]
        self.forgets += count
        await self.fs.forget(forgets)

    def _spawn(
        self,
        unique: int,
        call: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        reply: Callable[[int, Any], None],
    ) -> None:
        """Make the request ready for the reader to serve (see `_read_requests`)."""
        self._running += 1
        if self._running > self.max_in_flight:  # noqa: PLR1730  (cheaper than max())
            self.max_in_flight = self._running
        self._pending = (unique, call, args, reply)

    async def _serve(
        self,
        unique: int,
        call: Any,
        args: Any,
        reply: Callable[[int, Any], None],
        inline: bool,
        scope: trio.CancelScope | None = None,
        cancellable: bool = False,
    ) -> bool:
        """Serve one request in a task of its own (*call* with *args*) and reply; or,
        *inline*, finish serving a request the reader started (`_dispatch`) that has to
        wait: *call* is its operation's coroutine, *args* what its first step yielded; a
        new reader task is started, and this one, no longer the reader, serves the
        request (returns False).

        A `CANCELLABLE` request runs in a cancel scope an INTERRUPT can cancel: *scope*,
        made by the reader before a request's own task starts (an INTERRUPT may be read
        before that), or, served inline and *cancellable*, the reader's own scope once it
        waits. Served inline, a request cannot be interrupted before it waits (the reader
        reads no INTERRUPT meanwhile), and most never wait: entering a scope of its own
        for each (about a third of a getattr's cost) would buy nothing. The reader's
        scope was entered before the operation's first step, so a scope the operation
        enters nests inside it; once the reading is handed on, this task serves only
        this request, and an INTERRUPT may cancel the scope."""
        handed_on = False
        result: Any = None
        try:
            if inline:
                # It waits: a new reader reads on while this task finishes serving.
                handed_on = True
                self.handoffs += 1
                reader_scope, self._scope = self._scope, None  # not terminate()'s now
                if cancellable and reader_scope is not None:
                    scope = self._cancellable[unique] = reader_scope
                assert self._nursery is not None
                self._nursery.start_soon(self._read_requests, name="iofs dev reader")
                try:
                    result = await _resume(call, args)
                except trio.Cancelled:
                    # The reader's scope, entered in `_read_requests`, catches it.
                    if scope is not None and scope.cancel_called:  # an INTERRUPT
                        self.interrupted += 1
                        self._error(unique, errno.EINTR)
                    raise
            elif scope is None:
                result = await call(*args)
            else:
                with scope:
                    result = await call(*args)
        except Exception as exc:
            self._fail(unique, exc)
        else:
            if scope is not None and scope.cancelled_caught:  # by an INTERRUPT: a signal
                self.interrupted += 1
                self._error(unique, errno.EINTR)
            else:
                reply(unique, result)
        finally:
            if scope is not None and self._cancellable.get(unique) is scope:
                del self._cancellable[unique]  # (a lying kernel may reuse a unique)
            self._served()
        return not handed_on

    def _fail(self, unique: int, exc: Exception) -> None:
        """Answer request *unique*, whose operation raised *exc*, with an error."""
        if isinstance(exc, FUSEError):
            self._error(unique, exc.errno)
        elif isinstance(exc, OSError):
            self._error(unique, exc.errno or errno.EIO)
        else:
            log.error("unexpected error serving FUSE request %d", unique, exc_info=exc)
            self._error(unique, errno.EIO)

    def _served(self) -> None:
        """A request has been answered (or found the connection gone)."""
        self._running -= 1
        if self._room is not None:
            self._room.set()
            self._room = None
        if self._after_reply is not None:  # replied: nothing else was served since
            self._after_reply()

    # -- replying -----------------------------------------------------------------------
    def _send(self, parts: list[Any]) -> None:
        try:
            os.writev(self.fd, parts)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                # The caller was interrupted or the request aborted: nobody waits.
                self.abandoned_replies += 1
            elif exc.errno not in (errno.ENODEV, errno.EBADF):  # gone with the mount
                log.error("reply to the kernel failed: %s", exc)

    def _reply(self, unique: int, *parts: Any) -> None:
        size = _OUT_SIZE
        for part in parts:
            size += len(part)
        self._send([p.OUT_HEADER.pack(size, 0, unique), *parts])

    def _error(self, unique: int, code: int) -> None:
        self._send([p.OUT_HEADER.pack(_OUT_SIZE, -code, unique)])

    def _reply_none(self, unique: int, _: object) -> None:
        self._reply(unique)

    def _reply_entry(self, unique: int, attr: EntryAttributes) -> None:
        self._reply(unique, entry_out(attr))

    def _reply_attr(self, unique: int, attr: EntryAttributes) -> None:
        self._reply(unique, _attr_out(attr))

    def _reply_data(self, unique: int, data: Any) -> None:
        kind = type(data)
        if kind is not bytes and kind is not bytearray:  # len() in bytes, whatever the format
            data = memoryview(data).cast("B")
        self._send([_pack_out(_OUT_SIZE + len(data), 0, unique), data])

    def _reply_write(self, unique: int, written: int) -> None:
        # The header apart from the rest, as every reply: the uring transport's `_send`
        # writes it into the entry's header and the rest into its payload.
        self._send([_pack_out(_WRITE_REPLY_SIZE, 0, unique), _pack_write_out(written, 0)])

    def _reply_open(self, unique: int, info: FileInfo) -> None:
        self._reply(unique, _open_out(info))

    def _reply_opendir(self, unique: int, fh: int) -> None:
        self._reply(unique, p.OPEN_OUT.pack(fh, 0, 0))

    def _reply_create(self, unique: int, result: tuple[FileInfo, EntryAttributes]) -> None:
        info, attr = result
        self._reply(unique, entry_out(attr), _open_out(info))

    def _reply_statfs(self, unique: int, st: StatvfsData) -> None:
        self._reply(
            unique,
            p.STATFS_OUT.pack(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize,
                st.f_namemax,
                st.f_frsize,
                0,
            ),
        )

    # -- INIT -----------------------------------------------------------------------------
    def wanted(self, offered: int) -> int:
        """The capabilities iofs asks for, of those the kernel *offered*."""
        want = (
            p.ASYNC_READ
            | p.ATOMIC_O_TRUNC
            | p.BIG_WRITES
            | p.AUTO_INVAL_DATA
            | p.DO_READDIRPLUS
            | p.ASYNC_DIO
            | p.PARALLEL_DIROPS
            | p.MAX_PAGES
            | p.HANDLE_KILLPRIV_V2
            | p.DIRECT_IO_ALLOW_MMAP
        )
        if getattr(self.fs, "supports_dot_lookup", False):
            want |= p.EXPORT_SUPPORT
        if getattr(self.fs, "enable_writeback_cache", False):
            want |= p.WRITEBACK_CACHE
        elif _has_sys_admin():
            # Always, so that a live switch into the passthrough mode can use it; an
            # open reply without FOPEN_PASSTHROUGH is served as before.
            want |= p.PASSTHROUGH
        return want & offered

    def _init(self, unique: int, body: memoryview) -> None:
        if self.initialized:  # as libfuse: what was negotiated stays
            raise Malformed("a second INIT")
        major, minor, max_readahead, flags = _fixed(p.INIT_IN, body)
        if major != p.KERNEL_VERSION:
            log.error("the kernel speaks FUSE %d.%d; iofs's dev transport 7.x", major, minor)
            reply = p.INIT_OUT.pack(p.KERNEL_VERSION, p.KERNEL_MINOR_VERSION, *[0] * 11)
            self._reply(unique, reply)
            return
        if minor < p.OLDEST_MINOR_VERSION:
            oldest = p.OLDEST_MINOR_VERSION
            log.error("the kernel's FUSE 7.%d is older than the oldest served, 7.%d", minor, oldest)
            self._error(unique, errno.EPROTO)
            return
        if flags & p.INIT_EXT and len(body) >= p.INIT_IN.size + p.INIT_IN_FLAGS2.size:
            (flags2,) = p.INIT_IN_FLAGS2.unpack_from(body, p.INIT_IN.size)
            flags |= flags2 << 32
        self.kernel_minor = min(minor, p.KERNEL_MINOR_VERSION)
        self.flags = self.wanted(flags)
        out_flags = self.flags | (p.INIT_EXT if self.flags >> 32 else 0)
        limits = self.background_limits(self.requested_background)
        self.max_background = limits.max_background
        self.congestion_threshold = limits.congestion_threshold
        self._reply(
            unique,
            p.INIT_OUT.pack(
                p.KERNEL_VERSION,
                self.kernel_minor,
                max_readahead,
                out_flags & 0xFFFFFFFF,
                self.max_background,
                self.congestion_threshold,
                MAX_WRITE,
                1,  # time_gran: nanoseconds
                MAX_PAGES,
                0,
                out_flags >> 32,
                p.MAX_STACK_DEPTH if self.flags & p.PASSTHROUGH else 0,
                0,
            ),
        )
        self.initialized = True
        setting = getattr(self.fs, "setting", None)
        if getattr(setting, "passthrough", False) and not self.flags & p.PASSTHROUGH:
            log.warning("FUSE passthrough not negotiated: the daemon serves file data")
        names = [name for flag, name in p.CAPABILITY_NAMES.items() if self.flags & flag]
        log.info(
            "FUSE 7.%d on /dev/fuse: %s; max_background %d, max_write %d",
            self.kernel_minor,
            " ".join(names),
            self.max_background,
            MAX_WRITE,
        )

    # -- requests -------------------------------------------------------------------------
    def _lookup(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (name,) = _names(body, 1)
        self._spawn(unique, self.fs.lookup, (nodeid, name, ctx), self._reply_entry)

    def _getattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        self._spawn(unique, self.fs.getattr, (nodeid, ctx), self._reply_attr)

    def _setattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (valid, _, fh, size, _, atime, mtime, _, atime_ns, mtime_ns, _, mode, _, uid, gid, _) = (
            _fixed(p.SETATTR_IN, body)
        )
        attr = EntryAttributes()
        attr.st_mode, attr.st_uid, attr.st_gid, attr.st_size = mode, uid, gid, size
        now = time.time_ns() if valid & (p.FATTR_ATIME_NOW | p.FATTR_MTIME_NOW) else 0
        attr.st_atime_ns = now if valid & p.FATTR_ATIME_NOW else atime * 1_000_000_000 + atime_ns
        attr.st_mtime_ns = now if valid & p.FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtime_ns
        handle = fh if valid & p.FATTR_FH else None
        # A truncate by a caller without CAP_FSETID (HANDLE_KILLPRIV_V2).
        kill = valid & p.FATTR_KILL_SUIDGID and valid & p.FATTR_SIZE and not valid & p.FATTR_MODE
        self._spawn(
            unique,
            self._setattr_call,
            (nodeid, attr, SetattrFields(valid), handle, ctx, bool(kill)),
            self._reply_attr,
        )

    async def _setattr_call(
        self,
        nodeid: int,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: int | None,
        ctx: RequestContext,
        kill: bool,
    ) -> EntryAttributes:
        result: EntryAttributes = await self.fs.setattr(nodeid, attr, fields, fh, ctx)
        if kill and self._drop_privileges(nodeid, ctx):
            result = await self.fs.getattr(nodeid, ctx)
        return result

    def _drop_privileges(self, nodeid: int, ctx: RequestContext) -> bool:
        changed: bool = self.fs.drop_privileges(nodeid, ctx)
        self.privileges_dropped += changed
        return changed

    def _readlink(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        self._spawn(unique, self.fs.readlink, (nodeid, ctx), self._reply_data)

    def _symlink(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        name, target = _names(body, 2)
        self._spawn(unique, self.fs.symlink, (nodeid, name, target, ctx), self._reply_entry)

    def _mknod(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mode, rdev, umask, _ = _fixed(p.MKNOD_IN, body)
        (name,) = _names(body[p.MKNOD_IN.size :], 1)
        ctx.umask = umask
        self._spawn(unique, self.fs.mknod, (nodeid, name, mode, rdev, ctx), self._reply_entry)

    def _mkdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mode, umask = _fixed(p.MKDIR_IN, body)
        (name,) = _names(body[p.MKDIR_IN.size :], 1)
        ctx.umask = umask
        self._spawn(unique, self.fs.mkdir, (nodeid, name, mode, ctx), self._reply_entry)

    def _unlink(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (name,) = _names(body, 1)
        self._spawn(unique, self.fs.unlink, (nodeid, name, ctx), self._reply_none)

    def _rmdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (name,) = _names(body, 1)
        self._spawn(unique, self.fs.rmdir, (nodeid, name, ctx), self._reply_none)

    def _rename(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (newdir,) = _fixed(p.RENAME_IN, body)
        old, new = _names(body[p.RENAME_IN.size :], 2)
        args = (nodeid, old, newdir, new, 0, ctx)
        self._spawn(unique, self.fs.rename, args, self._reply_none)

    def _rename2(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        newdir, flags, _ = _fixed(p.RENAME2_IN, body)
        old, new = _names(body[p.RENAME2_IN.size :], 2)
        args = (nodeid, old, newdir, new, flags, ctx)
        self._spawn(unique, self.fs.rename, args, self._reply_none)

    def _link(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (old,) = _fixed(p.LINK_IN, body)
        (name,) = _names(body[p.LINK_IN.size :], 1)
        self._spawn(unique, self.fs.link, (old, nodeid, name, ctx), self._reply_entry)

    def _open(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        flags, open_flags = _fixed(p.OPEN_IN, body)
        kill = bool(open_flags & p.OPEN_KILL_SUIDGID and flags & os.O_TRUNC)
        self._spawn(unique, self._open_call, (nodeid, flags, ctx, kill), self._reply_open)

    async def _open_call(
        self, nodeid: int, flags: int, ctx: RequestContext, kill: bool
    ) -> FileInfo:
        info: FileInfo = await self.fs.open(nodeid, flags, ctx)
        if kill:
            self._drop_after_open(nodeid, ctx)
        return info

    def _drop_after_open(self, nodeid: int, ctx: RequestContext) -> None:
        try:
            self._drop_privileges(nodeid, ctx)
        except (OSError, FUSEError) as exc:  # the file is open: say so, do not fail the open
            log.warning("could not drop set-id bits of inode %d after O_TRUNC: %s", nodeid, exc)

    def _read(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, _, _, _, _ = _fixed(p.READ_IN, body)
        start_read = self._start_read
        if start_read is not None and self._running < self._max_tasks:
            self._running += 1  # first: the read may complete before start_read returns
            try:
                started = start_read(fh, offset, size, unique, self._read_done)
            except BaseException:
                self._running -= 1
                raise
            if started:
                self.task_free += 1
                self._reads_started = True
                if self._running > self.max_in_flight:  # noqa: PLR1730  (as in `_spawn`)
                    self.max_in_flight = self._running
                return
            self._running -= 1
        self._spawn(unique, self.fs.read, (fh, offset, size), self._reply_data)

    def _read_done(self, unique: int, count: int, data: memoryview | None) -> None:
        """A read started without a task completed: reply (see `_read_requests`)."""
        try:
            if data is None:
                self._error(unique, -count)
            else:
                self._reply(unique, data)
        finally:
            self._served()

    def _commit_reads(self) -> None:
        """Commit the reads started without a task since the last commit: one system
        call for the batch, before the reader waits (or lets other tasks run)."""
        if self._reads_started:
            self._reads_started = False
            self.fs.commit_reads()

    def _write(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, write_flags, _, _, _ = _fixed(p.WRITE_IN, body)
        end = p.WRITE_IN.size + size
        if end > len(body):
            raise Malformed(f"a write of {size} bytes with {len(body) - p.WRITE_IN.size}")
        data = bytes(body[p.WRITE_IN.size : end])
        if write_flags & p.WRITE_KILL_SUIDGID:
            args = (nodeid, fh, offset, data, ctx)
            self._spawn(unique, self._write_call, args, self._reply_write)
        else:
            self._spawn(unique, self.fs.write, (fh, offset, data), self._reply_write)

    async def _write_call(
        self, nodeid: int, fh: int, offset: int, data: bytes, ctx: RequestContext
    ) -> int:
        self._drop_privileges(nodeid, ctx)  # as the kernel does, before the data lands
        written: int = await self.fs.write(fh, offset, data)
        return written

    def _fallocate(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, length, mode, _ = _fixed(p.FALLOCATE_IN, body)
        fallocate = getattr(self.fs, "fallocate", None)
        if fallocate is None:
            self.unsupported += 1
            self._error(unique, errno.ENOSYS)
            return
        self._spawn(unique, fallocate, (fh, mode, offset, length), self._reply_none)

    def _statfs(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        self._spawn(unique, self.fs.statfs, (ctx,), self._reply_statfs)

    def _release(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, _, _, _ = _fixed(p.RELEASE_IN, body)
        self._spawn(unique, self.fs.release, (fh,), self._reply_none)

    def _fsync(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, flags, _ = _fixed(p.FSYNC_IN, body)
        args = (fh, bool(flags & p.FSYNC_FDATASYNC))
        self._spawn(unique, self.fs.fsync, args, self._reply_none)

    def _flush(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, _, _, _ = _fixed(p.FLUSH_IN, body)
        self._spawn(unique, self.fs.flush, (fh,), self._reply_none)

    def _setxattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        size, flags = _fixed(p.SETXATTR_IN, body)
        rest = body[p.SETXATTR_IN.size :]
        (name,) = _names(rest, 1)
        start = len(name) + 1
        if start + size > len(rest):
            raise Malformed(f"an xattr value of {size} bytes with {len(rest) - start}")
        value = bytes(rest[start : start + size])
        args = (nodeid, name, value, flags, ctx)
        self._spawn(unique, self._setxattr_call, args, self._reply_none)

    async def _setxattr_call(
        self, nodeid: int, name: bytes, value: bytes, flags: int, ctx: RequestContext
    ) -> None:
        # As pyfuse3 does: the filesystem's setxattr takes no flags.
        if flags & ~(_XATTR_CREATE | _XATTR_REPLACE):
            raise FUSEError(errno.EINVAL)
        if flags & _XATTR_CREATE:
            try:
                await self.fs.getxattr(nodeid, name, ctx)
            except FUSEError as exc:
                if exc.errno != errno.ENODATA:
                    raise
            else:
                raise FUSEError(errno.EEXIST)
        elif flags & _XATTR_REPLACE:
            await self.fs.getxattr(nodeid, name, ctx)
        await self.fs.setxattr(nodeid, name, value, ctx)

    def _getxattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        size, _ = _fixed(p.GETXATTR_IN, body)
        (name,) = _names(body[p.GETXATTR_IN.size :], 1)
        self._spawn(unique, self.fs.getxattr, (nodeid, name, ctx), self._xattr_reply(size))

    def _listxattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        size, _ = _fixed(p.GETXATTR_IN, body)
        self._spawn(unique, self._listxattr_call, (nodeid, ctx), self._xattr_reply(size))

    async def _listxattr_call(self, nodeid: int, ctx: RequestContext) -> bytes:
        names = await self.fs.listxattr(nodeid, ctx)
        return b"".join(name + b"\0" for name in names)

    def _xattr_reply(self, size: int) -> Callable[[int, bytes], None]:
        def reply(unique: int, value: bytes) -> None:
            if size == 0:
                self._reply(unique, p.GETXATTR_OUT.pack(len(value), 0))
            elif len(value) <= size:
                self._reply(unique, value)
            else:
                self._error(unique, errno.ERANGE)

        return reply

    def _removexattr(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        (name,) = _names(body, 1)
        self._spawn(unique, self.fs.removexattr, (nodeid, name, ctx), self._reply_none)

    def _opendir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        self._spawn(unique, self.fs.opendir, (nodeid, ctx), self._reply_opendir)

    def _readdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, _, _, _, _ = _fixed(p.READ_IN, body)
        self._spawn(unique, self._readdir_call, (fh, offset, size, False), self._reply_data)

    def _readdirplus(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, offset, size, _, _, _, _ = _fixed(p.READ_IN, body)
        self._spawn(unique, self._readdir_call, (fh, offset, size, True), self._reply_data)

    async def _readdir_call(self, fh: int, offset: int, size: int, plus: bool) -> bytes:
        listing = DirectoryListing(size, plus)
        await self.fs.readdir(fh, offset, listing)
        if listing.linked:  # plain READDIR: the kernel learns no inodes, so none are kept
            await self.fs.forget([(inode, 1) for inode in listing.linked])
        return b"".join(listing.parts)

    def _releasedir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, _, _, _ = _fixed(p.RELEASE_IN, body)
        self._spawn(unique, self.fs.releasedir, (fh,), self._reply_none)

    def _fsyncdir(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        fh, flags, _ = _fixed(p.FSYNC_IN, body)
        args = (fh, bool(flags & p.FSYNC_FDATASYNC))
        self._spawn(unique, self.fs.fsyncdir, args, self._reply_none)

    def _access(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        mask, _ = _fixed(p.ACCESS_IN, body)
        self._spawn(unique, self._access_call, (nodeid, mask, ctx), self._reply_none)

    async def _access_call(self, nodeid: int, mask: int, ctx: RequestContext) -> None:
        if not await self.fs.access(nodeid, mask, ctx):
            raise FUSEError(errno.EACCES)

    def _create(self, unique: int, nodeid: int, ctx: RequestContext, body: memoryview) -> None:
        flags, mode, umask, open_flags = _fixed(p.CREATE_IN, body)
        (name,) = _names(body[p.CREATE_IN.size :], 1)
        ctx.umask = umask
        kill = bool(open_flags & p.OPEN_KILL_SUIDGID and flags & os.O_TRUNC)
        args = (nodeid, name, mode, flags, ctx, kill)
        self._spawn(unique, self._create_call, args, self._reply_create)

    async def _create_call(
        self, nodeid: int, name: bytes, mode: int, flags: int, ctx: RequestContext, kill: bool
    ) -> tuple[FileInfo, EntryAttributes]:
        info, attr = await self.fs.create(nodeid, name, mode, flags, ctx)
        if kill:
            self._drop_after_open(attr.st_ino, ctx)
        return info, attr


@types.coroutine
def _resume(operation: Coroutine[Any, Any, Any], trap: Any) -> Generator[Any, Any, Any]:
    """Await *operation*, which has already yielded *trap* to the task running it: what
    ``await`` does after the first step, for a coroutine stepped by hand."""
    while True:
        try:
            value = yield trap
        except BaseException as exc:  # trio throws Cancelled and the like in: pass it on
            try:
                trap = operation.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = operation.send(value)
            except StopIteration as done:
                return done.value


def _attr_out(attr: EntryAttributes) -> bytes:
    entry = entry_out(attr)
    # fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then the same fuse_attr
    return entry[24:32] + entry[36:40] + bytes(4) + entry[40:]


def _open_out(info: FileInfo) -> bytes:
    flags = p.FOPEN_PARALLEL_DIRECT_WRITES
    backing_id: int = getattr(info, "backing_id", 0)
    if backing_id:
        # FOPEN_KEEP_CACHE and FOPEN_DIRECT_IO are refused (EIO) or meaningless here.
        return p.OPEN_OUT.pack(info.fh, flags | p.FOPEN_PASSTHROUGH, backing_id)
    if info.direct_io:
        flags |= p.FOPEN_DIRECT_IO
    if info.keep_cache:
        flags |= p.FOPEN_KEEP_CACHE
    if info.nonseekable:
        flags |= p.FOPEN_NONSEEKABLE
    return p.OPEN_OUT.pack(info.fh, flags, 0)


def protocol_refusal(transport: str, major: int, minor: int) -> str | None:
    """Why *transport* cannot serve a kernel speaking FUSE *major*.*minor*, in one line;
    None if it can (another major is answered with ours, as the protocol asks)."""
    if major != p.KERNEL_VERSION or minor >= p.OLDEST_MINOR_VERSION:
        return None
    return (
        f"this kernel ({os.uname().release}) speaks FUSE {major}.{minor}; the {transport} "
        f"transport needs {p.KERNEL_VERSION}.{p.OLDEST_MINOR_VERSION} or later (Linux 5.4+): "
        "mount with --transport pyfuse3"
    )


def _has_sys_admin() -> bool:
    """Whether this process has CAP_SYS_ADMIN (bit 21 of its effective set)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 21 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _kernel_release() -> tuple[int, int]:
    """The running kernel's major and minor version (6.18.44-... -> (6, 18))."""
    major, _, rest = os.uname().release.partition(".")
    minor = "".join(c for c in rest.partition(".")[0] if c.isdigit())
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return 0, 0


def _user_limit() -> int:
    """The fuse module's cap on max_background for daemons without CAP_SYS_ADMIN."""
    try:
        with open("/sys/module/fuse/parameters/max_user_bgreq") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return DEFAULT_MAX_BACKGROUND
