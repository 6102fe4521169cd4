"""The passthrough filesystem: every pyfuse3 operation, served from a backing directory.

Metadata operations run as system calls on the event loop, relative to the O_PATH
handles in the inode table; in a mode with a metadata queue, updates are applied by the
queue's task in arrival order. Data operations (read, write, fsync) go through the
current I/O engine. The mode can be switched while mounted: operations in flight finish
on the old engine, which is then drained and closed. Errors cross into FUSE in one
place, the `_handler` decorator. The control xattrs on the root are served by
`iofs.control_server`; this module only routes them there.

Why this module is long: it is one class, `Filesystem`, with every operation of
`pyfuse3.Operations` (about forty) and the few helpers they share, next to the one
error boundary they all pass through; split across files, an operation and the helper
or lock it relies on would be apart. The engines, the inode table, the metadata queue,
fault injection, statistics and the control protocol live in their own modules.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import reprlib
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

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
    ModeT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    XAttrNameT,
)

from . import syscalls
from .backends import Buffer, Capability, Engine, create_engine
from .backends.base import sync_file
from .backends.completion import CompletionEngine, ReadDone
from .closer import Closer
from .connection import KERNEL_CONGESTION_THRESHOLD, KERNEL_MAX_BACKGROUND, BackgroundLimits
from .control_protocol import CONTROL_XATTRS, Refusal, write_in_read
from .control_server import ControlServer
from .faults import OFF, FaultInjector, FaultSpec
from .inodes import MAX_DEFAULT_FD_BUDGET, Inode, InodeTable, key_of, proc_path
from .mappings import shared_mappings
from .metadata import MetadataQueue
from .modes import CACHINGS, Setting
from .privileges import Writer, bits_to_drop, writer_of
from .stats import QuietRecorder, Recorder, Snapshot
from .transport import Transport, readdir_reply

log = logging.getLogger(__name__)

# Flags the kernel may pass to open/create that must not reach the backing open():
# the kernel has already resolved creation and the final path component, O_NOFOLLOW
# would refuse the /proc/self/fd magic link, and the backing fd is always buffered
# (see docs/architecture.md: O_DIRECT on the mount bypasses the FUSE page cache, not
# the backing one).
_DROPPED_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_DIRECT
_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID

#: (operation, errno) pairs that the statistics count as answers rather than errors.
_NEGATIVE_ANSWERS = frozenset({("lookup", errno.ENOENT), ("getxattr", errno.ENODATA)})

#: Operations that change nothing before they fail, run once more after an EMFILE.
_RETRIED_WHEN_OUT_OF_DESCRIPTORS = frozenset(
    {
        "lookup",
        "getattr",
        "readlink",
        "open",
        "opendir",
        "readdir",
        "statfs",
        "getxattr",
        "listxattr",
        "access",
    }
)

#: Operations that neither take nor report space: they need not wait for the removed
#: files' descriptors that a `Closer` is closing (see `iofs.closer`); any other does.
_BLIND_TO_SPACE = frozenset(
    {
        "lookup",
        "getattr",
        "unlink",
        "rmdir",
        "readlink",
        "open",
        "read",
        "flush",
        "release",
        "opendir",
        "readdir",
        "releasedir",
        "getxattr",
        "listxattr",
        "access",
        # Only a change of size may (`setattr` waits for that itself): with the
        # writeback cache the kernel sends a SETATTR of the times of each file it drops,
        # and waiting there put every close back in the way of fio's filedelete.
        "setattr",
    }
)

P = ParamSpec("P")
R = TypeVar("R")
FS = TypeVar("FS", bound="Filesystem")


def _handler(
    fn: Callable[Concatenate[FS, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[FS, P], Coroutine[Any, Any, R]]:
    """Turn errors into FUSE replies: the one place where they cross into FUSE.

    An OSError from the backing filesystem becomes the same errno. Anything else is a
    bug: it is logged with its traceback and answered with EIO, and the daemon goes on.
    The request is counted under the handler's name (see `_recorded_as`).
    """
    return _recorded_as(fn.__name__)(fn)


def _recorded_as(
    op: str,
) -> Callable[
    [Callable[Concatenate[FS, P], Coroutine[Any, Any, R]]],
    Callable[Concatenate[FS, P], Coroutine[Any, Any, R]],
]:
    """`_handler`, counting the requests as operation *op*."""

    def decorate(
        fn: Callable[Concatenate[FS, P], Coroutine[Any, Any, R]],
    ) -> Callable[Concatenate[FS, P], Coroutine[Any, Any, R]]:
        return _handle_as(fn, op)

    return decorate


def _handle_as(
    fn: Callable[Concatenate[FS, P], Coroutine[Any, Any, R]], op: str
) -> Callable[Concatenate[FS, P], Coroutine[Any, Any, R]]:
    counts_bytes = op in ("read", "write")

    @functools.wraps(fn)
    async def wrapper(self: FS, /, *args: P.args, **kwargs: P.kwargs) -> R:
        recorder = self.recorder
        start = recorder.begin(op)
        error = True
        nbytes = 0
        try:
            closer = self.closer
            if closer is not None and not closer.idle and op not in _BLIND_TO_SPACE:
                await closer.wait()  # the space of removed files is free first
            try:
                result = await fn(self, *args, **kwargs)
            except OSError as exc:
                # Out of descriptors: only this request may fail. Let go of cached ones
                # so that the next request works; one that changes nothing runs again.
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                self.inodes.reclaim()
                if op not in _RETRIED_WHEN_OUT_OF_DESCRIPTORS:
                    raise
                result = await fn(self, *args, **kwargs)
            error = False
            if counts_bytes:  # read returns the data, write the count written
                nbytes = result if isinstance(result, int) else len(result)  # type: ignore[arg-type]
            return result
        except FUSEError:
            raise
        except OSError as exc:
            # "No such name" and "no such attribute" are answers, not failures: the
            # kernel asks for security.capability on every write, for one.
            error = (op, exc.errno) not in _NEGATIVE_ANSWERS
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            self.unexpected_errors += 1
            log.exception("unexpected error in %s%s", op, _short_repr(args))
            raise FUSEError(errno.EIO) from None
        finally:
            recorder.end(op, start, error=error, nbytes=nbytes)

    return wrapper


def _update(
    fn: Callable[Concatenate[FS, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[FS, P], Coroutine[Any, Any, R]]:
    """A metadata update: in a mode with a metadata queue, the queue's task applies it."""

    @functools.wraps(fn)
    async def wrapper(self: FS, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.setting.metadata == "queue":
            return await self.metadata_queue.run(lambda: fn(self, *args, **kwargs))
        return await fn(self, *args, **kwargs)

    return wrapper


def _short_repr(args: tuple[object, ...]) -> str:
    """Arguments for a log line: a write's whole buffer would drown the traceback."""
    shortened = reprlib.Repr()
    shortened.maxstring = shortened.maxother = 80
    return shortened.repr(args)


class PassthroughInfo(FileInfo):
    """An open reply that hands the file to the kernel: FOPEN_PASSTHROUGH with the
    inode's *backing_id* (the dev transport sends it; see docs/passthrough.md)."""

    backing_id = 0


@dataclass(eq=False)
class Backing:
    """A backing file registered with the kernel for one inode, shared by all its opens:
    the kernel refuses two backing files for one inode (EBUSY)."""

    id: int
    opens: int = 0


@dataclass
class PassthroughCounters:
    """What the passthrough mode did with opens (the statistics' ``passthrough_*``)."""

    #: Opens handed to the kernel (FOPEN_PASSTHROUGH).
    opens: int = 0
    #: Opens in the passthrough mode served by the daemon: the file was open in another
    #: mode already (the kernel allows one I/O mode per file until its last close).
    declined_open: int = 0
    #: ... or it has set-user-ID, set-group-ID or a file capability: passthrough writes
    #: run with the daemon's credentials and would not drop them.
    declined_setid: int = 0
    #: ... or registering the backing file failed (logged once).
    backing_failures: int = 0
    #: Opens in another mode handed to the kernel all the same: the file was open in
    #: passthrough already.
    kept: int = 0


@dataclass(eq=False)
class OpenDir:
    fd: int  # O_RDONLY | O_DIRECTORY, for listing and fsyncdir
    inode: Inode
    entries: list[bytes] | None = None  # snapshot taken when a listing starts


class Filesystem(pyfuse3.Operations):
    """Passthrough of every operation to the directory open as *root_fd*."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        root_fd: int,
        engine: Engine,
        *,
        setting: Setting | None = None,
        attr_timeout: float = 1.0,
        entry_timeout: float = 1.0,
        statistics: bool = True,
        writeback_cache: bool = False,
        faults: FaultSpec = OFF,
        allow_fallback: bool = False,
        fd_budget: int = MAX_DEFAULT_FD_BUDGET,
        file_handles: bool = True,
    ) -> None:
        super().__init__()
        #: A switch to a mode whose engine cannot run here uses the closest one that can.
        self.allow_fallback = allow_fallback
        #: The last switch refused (spec, reason, time), for `iofs mode` to say why.
        self.refusal: Refusal | None = None
        #: Where the daemon logs (set by `iofs.mount`), for messages that point there.
        self.log_file: str | None = None
        #: Read by pyfuse3 when the kernel's INIT arrives: fixed for the mount's life.
        self.enable_writeback_cache = writeback_cache
        self.inodes = InodeTable(root_fd, budget=fd_budget, file_handles=file_handles)
        self.engine = engine
        self.setting = setting or Setting(
            mode="blocking",
            engine=engine.name,
            direct=engine.direct,
            metadata="inline",
            caching="kernel",
        )
        self.mount_attr_timeout = attr_timeout
        self.mount_entry_timeout = entry_timeout
        self.metadata_queue = MetadataQueue()
        #: The user who mounted: with root, the only one who may switch modes.
        self.owner = os.getuid()
        self.recorder = (Recorder if statistics else QuietRecorder)(self.setting.spec)
        #: Fault injection in front of the engine: not part of it, so switches keep it.
        self.faults = FaultInjector()
        if faults.active:
            self.set_faults(faults)
        self._draining: set[Engine] = set()  # old engines finishing their operations
        self._nursery: trio.Nursery | None = None
        #: The control xattrs on the root: `iofs.control_protocol`, served there.
        self.control = ControlServer(self)
        self.as_root = os.geteuid() == 0
        self.unexpected_errors = 0
        self._files: dict[int, Inode] = {}  # backing fd (also the handle) -> inode
        #: Files open for writing with FOPEN_DIRECT_IO, by a root daemon: who opened them
        #: (the kernel does not drop set-ID bits on their writes; see iofs.privileges).
        self._direct_writers: dict[int, Writer] = {}
        #: The FUSE connection's limits, as the mount set them (iofs.connection).
        self.background_limits = BackgroundLimits(
            KERNEL_MAX_BACKGROUND, KERNEL_CONGESTION_THRESHOLD
        )
        self._dirs: dict[int, OpenDir] = {}
        self._next_dir_handle = 1
        #: Inode id -> its backing file registered with the kernel (passthrough mode).
        self._backings: dict[int, Backing] = {}
        #: Open files handed to the kernel: handle -> their inode's backing.
        self._passthrough: dict[int, Backing] = {}
        self.passthrough_counters = PassthroughCounters()
        #: What carries the requests (set at mount): its counters join the statistics.
        self.transport: Transport | None = None
        #: The mount's device (major, minor) and whether others may use it, set once
        #: mounted: what the shared-mapping check before a switch looks for.
        self.device: tuple[int, int] | None = None
        self.others_allowed = False
        self._switching = trio.Lock()  # one switch (and its mapping scan) at a time
        #: Closes removed files' last descriptors beside the loop, once a transport that
        #: replies before it serves anything else asks for it (`close_after_replies`).
        self.closer: Closer | None = None
        self._note_waits()

    # -- lifecycle and modes -------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        """Start the engine's and the metadata queue's tasks in the daemon's nursery."""
        self._nursery = nursery
        self.engine.start(nursery)
        nursery.start_soon(self.metadata_queue.serve, name="iofs-metadata-queue")
        self.recorder.start(nursery)  # the loop-lag heartbeat

    def close_after_replies(self) -> Callable[[], None]:
        """For a transport that sends each reply before it serves anything else: from now
        on a removed file's last descriptor is handed, by the function returned, which
        the transport calls once it has sent a reply (see `InodeTable.released`), to a
        `Closer`; a later request that could take or report space waits for it."""
        inodes = self.inodes
        if inodes.released is None:
            inodes.released = []
        closer = self.closer = self.closer or Closer()

        def after_reply() -> None:
            released = inodes.released
            while released:
                closer.close(released.pop())

        return after_reply

    async def aclose(self) -> None:
        """Drain and close every engine (once no request is being served)."""
        with trio.CancelScope(shield=True):
            for engine in [self.engine, *self._draining]:
                await engine.aclose()

    def switch(self, setting: Setting) -> None:
        """Serve new requests with *setting*; the old engine drains in the background.

        Raises `EngineUnavailable` if the setting's engine cannot run here.
        """
        assert self._nursery is not None, "switch() before start()"
        if setting == self.setting:
            return  # already so: no new engine, no history entry
        requested = time.monotonic()
        old = self.engine
        previous = self.setting.spec
        if (setting.engine, setting.direct) != (self.setting.engine, self.setting.direct):
            engine = create_engine(setting.engine, replace(old.config, direct=setting.direct))
            engine.start(self._nursery)
            self.engine = engine
            self._draining.add(old)
            number = self.recorder.switch_began(setting.spec, previous, requested, old.statistics())
            self._nursery.start_soon(self._drain, old, number, name=f"iofs-drain-{old.name}")
        else:
            self.recorder.switch_began(setting.spec, previous, requested, None)
        passthrough_before = self.setting.passthrough
        self.setting = setting
        self._note_waits()
        self.recorder.mode_changed(setting.spec)
        log.info("mode switched to %s", setting.describe())
        if setting.passthrough != passthrough_before:
            log.info("%s", self.passthrough_note())

    def set_faults(self, spec: FaultSpec) -> None:
        """Inject *spec* into data operations from now on (`OFF` stops)."""
        self.faults.set(spec)
        if spec.active:
            seed = f" (seed {self.faults.seed})" if spec.random else ""
            log.warning("fault injection on: %s%s: %s", spec.text, seed, spec.describe())
        else:
            log.info("fault injection off")

    async def _drain(self, engine: Engine, switch: int) -> None:
        await engine.aclose()  # waits for its operations in flight
        self._draining.discard(engine)
        self.recorder.switch_drained(switch, engine.statistics())

    def passthrough_refusal(self, setting: Setting) -> str | None:
        """Why *setting* cannot be used on this mount (it hands files to the kernel and
        the transport cannot), or None."""
        if not setting.passthrough or self.transport is None:
            return None
        return self.transport.passthrough_refusal(self.enable_writeback_cache)

    def passthrough_note(self) -> str:
        """What a switch into or out of the passthrough mode does to files open now."""
        return (
            f"passthrough applies to files opened from now on; {len(self._files)} open "
            f"files ({len(self._passthrough)} of them passed through) keep their path, "
            "and so does every open of their file until its last close"
        )

    def may_wait(self, data: bool) -> bool:
        """Whether serving a request is likely to wait for the loop (an ``await`` that
        yields): a *data* request (read, write, fsync) unless the engine blocks the loop,
        an update in a mode with a metadata queue, anything while faults are armed.

        A transport serves the requests that do not wait in the task that read them (see
        `iofs.transport.dev`); it must still be ready for one that waits after all
        (e.g. a mode switch that scans for shared mappings in a thread).
        """
        return (self._data_waits if data else self._updates_wait) or self.faults.armed

    def waits_long(self) -> bool:
        """Whether a request may wait for long: while faults are armed (their delays last
        up to minutes). A transport lets an INTERRUPT cancel such a request; any other
        waits at most for an engine's operation, which completes first anyway."""
        return self.faults.armed

    def _note_waits(self) -> None:
        """Work out `may_wait`'s answers for the current engine and setting (enum flag
        arithmetic is too slow to do per request)."""
        self._data_waits = Capability.BLOCKS_LOOP not in self.engine.capabilities
        engine = self.engine
        self._task_free = engine if isinstance(engine, CompletionEngine) else None
        self._updates_wait = self.setting.metadata != "inline"

    @property
    def direct_io_allow_mmap(self) -> bool:
        """Whether the transport negotiated FUSE_DIRECT_IO_ALLOW_MMAP at INIT: then the
        kernel maps direct_io files shared too. pyfuse3 (libfuse 3.14) cannot."""
        return self.transport is not None and self.transport.direct_io_allows_mmap

    @property
    def open_files(self) -> int:
        """Files open on the mount now (for ``iofs.mode``)."""
        return len(self._files)

    @property
    def passthrough_files(self) -> int:
        """Of those, the ones handed to the kernel (FUSE passthrough)."""
        return len(self._passthrough)

    @property
    def shared_mmap(self) -> bool:
        """Whether files opened now may be mapped MAP_SHARED (see `SHARED_MMAP_LIMIT`)."""
        return self.direct_io_allow_mmap or not CACHINGS[self.setting.caching].direct_io

    @property
    def switching(self) -> trio.Lock:
        """Held through a switch that scans for shared mappings first: one at a time."""
        return self._switching

    def may_need_refusal(self, setting: Setting) -> bool:
        """Whether a switch to *setting* leaves files unable to be mapped shared."""
        entering = CACHINGS[setting.caching].direct_io and self.shared_mmap
        return entering and not self.direct_io_allow_mmap and self.device is not None

    async def refuse_if_mapped(self, setting: Setting) -> None:
        """Refuse (EBUSY) a switch into direct_io opens while a file is mapped shared.

        Without FUSE_DIRECT_IO_ALLOW_MMAP, a shared mapping of a file opened after the
        switch fails with ENODEV; an application that maps files now (SQLite maps its
        -shm file for each connection) is about to map again. The scan runs in a
        thread: reading a process's maps waits for its page faults, which may be
        waiting for this daemon.
        """
        if not self.may_need_refusal(setting) or self.device is None:
            return
        scan = await trio.to_thread.run_sync(shared_mappings, self.device)
        if scan.mappings:
            reason = (
                f"files on the mount are mapped shared: {scan.describe()}; a new shared "
                "mapping fails with ENODEV in that setting on this transport (unmap them "
                "first, or mount with --transport dev)"
            )
            log.warning("refused mode setting %s: %s", setting.spec, reason)
            # The client gets EBUSY only: it reads why from iofs.mode.
            self.refusal = {"spec": setting.spec, "reason": reason, "at": time.time()}
            raise FUSEError(errno.EBUSY)
        if scan.unreadable and self.others_allowed:
            log.warning(
                "switching to %s without looking at %d processes of other users for "
                "shared mappings (only a root daemon may read their maps)",
                setting.spec,
                scan.unreadable,
            )

    @property
    def attr_timeout(self) -> float:
        timeout = CACHINGS[self.setting.caching].timeout
        return self.mount_attr_timeout if timeout is None else timeout

    @property
    def entry_timeout(self) -> float:
        timeout = CACHINGS[self.setting.caching].timeout
        return self.mount_entry_timeout if timeout is None else timeout

    def close(self) -> None:
        """Close every descriptor the filesystem still holds (after unmount)."""
        for fd in self._files:
            self._forget_fd(fd)
            os.close(fd)
        self._direct_writers.clear()
        for dir_handle in self._dirs.values():
            os.close(dir_handle.fd)
        for fd, inode in self._files.items():
            inode.closed(fd)
        for dir_handle in self._dirs.values():
            dir_handle.inode.closed(dir_handle.fd)
        self._files.clear()
        self._dirs.clear()
        self._passthrough.clear()  # the kernel let go of the backing ids with the mount
        self._backings.clear()
        if self.closer is not None:
            self.closer.stop()
        self.inodes.close()

    # -- helpers ----------------------------------------------------------------------
    def _attributes(self, inode: Inode, st: os.stat_result) -> EntryAttributes:
        entry = EntryAttributes()
        entry.st_ino = inode.id
        entry.generation = inode.generation
        entry.entry_timeout = self.entry_timeout
        entry.attr_timeout = self.attr_timeout
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _lookup(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Find *name* in *parent* without changing any lookup count."""
        if name == b"." or (name == b".." and parent is self.inodes.root):
            return parent, os.fstat(parent.fd)
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        known = self.inodes.find(key_of(st))
        if known is not None:
            self.inodes.seen(known, parent, name)
            return known, st
        fd = self.inodes.reclaiming(
            lambda: os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.fd)
        )
        try:
            st = os.fstat(fd)  # the entry may have been replaced since the stat
        except BaseException:
            os.close(fd)
            raise
        return self.inodes.adopt(fd, st, parent, name), st

    def _entry(self, parent: Inode, name: bytes) -> EntryAttributes:
        """Look up *name* and count the lookup the kernel will later forget."""
        inode, st = self._lookup(parent, name)
        self.inodes.ref(inode)
        return self._attributes(inode, st)

    def _created(
        self, parent: Inode, name: bytes, ctx: RequestContext, opened: int | None = None
    ) -> EntryAttributes:
        """Finish creating *name*: give it to the caller, as the kernel would, and look it up.

        *opened* is a descriptor of the new file if there is one, so that the inode is
        the one created even if the name has been replaced since.
        """
        if opened is None:
            fd = self.inodes.reclaiming(
                lambda: os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.fd)
            )
        else:
            fd = self.inodes.reclaiming(lambda: os.open(proc_path(opened), os.O_PATH))
        try:
            st = os.fstat(fd)
            if self.as_root:
                st = self._give_to_caller(fd, st, parent, ctx)
        except BaseException:
            os.close(fd)
            raise
        inode = self.inodes.adopt(fd, st, parent, name)
        self.inodes.ref(inode)
        return self._attributes(inode, st)

    def _give_to_caller(
        self, fd: int, before: os.stat_result, parent: Inode, ctx: RequestContext
    ) -> os.stat_result:
        """chown a node the root daemon just created (fstat *before*) to the caller.

        In a set-group-ID directory the new node keeps the directory's group, as on
        the backing filesystem. chown clears set-uid/set-gid on non-directories, so
        bits the caller asked for are put back afterwards. Returns the node's fstat.
        """
        if before.st_uid == ctx.uid and before.st_gid == ctx.gid:
            return before  # root made it in a directory without set-group-ID: done
        gid = -1 if os.fstat(parent.fd).st_mode & stat.S_ISGID else ctx.gid
        if before.st_uid == ctx.uid and gid in (-1, before.st_gid):
            return before
        path = proc_path(fd)
        os.chown(path, ctx.uid, gid)
        after = os.fstat(fd)
        wanted = before.st_mode & _PRIVILEGE_BITS
        if (
            wanted
            and not stat.S_ISLNK(before.st_mode)
            and after.st_mode & _PRIVILEGE_BITS != wanted
        ):
            os.chmod(path, stat.S_IMODE(after.st_mode) | wanted)
            after = os.fstat(fd)
        return after

    def _file(self, fh: FileHandleT) -> int:
        """The backing descriptor of an open file (the handle is that descriptor)."""
        if fh not in self._files:
            raise FUSEError(errno.EBADF)
        return fh

    def _dir(self, fh: FileHandleT) -> OpenDir:
        try:
            return self._dirs[fh]
        except KeyError:
            raise FUSEError(errno.EBADF) from None

    def _open_file(self, fd: int, inode: Inode, flags: int, ctx: RequestContext) -> FileInfo:
        """Register the open file *fd* and say how the kernel is to treat it.

        An O_DIRECT open for writing gets FOPEN_DIRECT_IO: the kernel then sends each
        write alone, without asking for ``security.capability`` first, and in parallel
        where the transport allows. Where the kernel does not flag the writes that must
        drop set-ID bits (no HANDLE_KILLPRIV_V2), iofs drops them itself on direct_io
        files (see `iofs.privileges`). Without FUSE_DIRECT_IO_ALLOW_MMAP (the pyfuse3
        transport) the kernel refuses a shared mapping made through such a descriptor
        (ENODEV); one made through another descriptor of the file works.
        """
        backing = self._passthrough_backing(fd, inode)
        self._files[fd] = inode
        inode.opens += 1
        inode.opened(fd)
        if backing is not None:
            backing.opens += 1
            self._passthrough[fd] = backing
            info = PassthroughInfo(fh=fd, direct_io=False, keep_cache=False)
            info.backing_id = backing.id
            return info
        caching = CACHINGS[self.setting.caching]
        writes = flags & os.O_ACCMODE != os.O_RDONLY
        direct_io = caching.direct_io or bool(writes and flags & os.O_DIRECT)
        transport = self.transport
        kernel_flags_them = transport is not None and transport.kills_privileges
        if direct_io and writes and self.as_root and not kernel_flags_them:
            # A daemon without CAP_FSETID needs nothing: its own backing write drops them.
            # A writer with CAP_FSETID drops nothing: no fstat before each of its writes.
            writer = writer_of(ctx.pid, ctx.gid)
            if not writer.fsetid:
                self._direct_writers[fd] = writer
        return FileInfo(fh=fd, direct_io=direct_io, keep_cache=caching.keep_cache)

    def _passthrough_backing(self, fd: int, inode: Inode) -> Backing | None:
        """The backing to hand the open file *fd* of *inode* to the kernel with, or None
        to serve it here. Decided per inode: the kernel fails an open (EIO) whose I/O
        mode conflicts with the file's other opens, so while *inode* is open the mode it
        was first opened in holds for every open, whatever the setting is now."""
        counters = self.passthrough_counters
        backing = self._backings.get(inode.id)
        if backing is not None:
            if not self.setting.passthrough:
                counters.kept += 1
            counters.opens += 1
            return backing
        if not self.setting.passthrough or self.transport is None:
            return None
        if inode.opens:
            counters.declined_open += 1
            return None
        if self.as_root and _has_privileges(fd):
            counters.declined_setid += 1
            return None
        try:
            backing_id = self.transport.open_backing(fd)
        except OSError as exc:
            if not counters.backing_failures:
                log.warning(
                    "cannot register a backing file with the kernel (%s): files "
                    "are served by the daemon",
                    exc.strerror,
                )
            counters.backing_failures += 1
            return None
        backing = self._backings[inode.id] = Backing(backing_id)
        counters.opens += 1
        return backing

    def _release_passthrough(self, fh: int, inode: Inode) -> None:
        """*fh* is released: at its inode's last passthrough close, unregister the
        backing file, so that the file's next open may be in any mode."""
        backing = self._passthrough.pop(fh, None)
        if backing is None:
            return
        backing.opens -= 1
        if backing.opens == 0:
            del self._backings[inode.id]
            if self.transport is not None:
                try:
                    self.transport.close_backing(backing.id)
                except OSError as exc:  # the connection is gone: so is the backing id
                    log.debug("backing id %d not closed: %s", backing.id, exc.strerror)

    def _drop_privileges(self, fd: int, writer: Writer) -> None:
        """Before a write by *writer* to *fd*: clear set-ID bits as the kernel would."""
        st = os.fstat(fd)
        drop = bits_to_drop(st.st_mode, st.st_gid, writer)
        if drop:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~drop)

    def _forget_fd(self, fd: int) -> None:
        """*fd* is about to be closed: every engine that may know it lets go of it."""
        self.engine.forget(fd)
        for engine in self._draining:
            engine.forget(fd)

    def counters(self) -> dict[str, int]:
        """The filesystem's own counters (the statistics' ``extra`` part)."""
        queue = self.metadata_queue.statistics()
        return {
            **self.inodes.counters(),
            "open_files": len(self._files),
            "open_dirs": len(self._dirs),
            # File data the kernel moves itself: the daemon sees none of its reads and
            # writes (FUSE passthrough, see docs/passthrough.md).
            "passthrough_files": len(self._passthrough),
            "backing_files": len(self._backings),
            **{f"passthrough_{k}": v for k, v in asdict(self.passthrough_counters).items()},
            "unexpected_errors": self.unexpected_errors,
            "draining_engines": len(self._draining),
            "writeback_cache": int(self.enable_writeback_cache),
            "max_background": self.background_limits.max_background,
            "congestion_threshold": self.background_limits.congestion_threshold,
            **{f"metadata_queue_{name}": value for name, value in queue.items()},
            **(self.transport.statistics() if self.transport is not None else {}),
        }

    def statistics(self) -> Snapshot:
        engines = [self.engine, *self._draining]
        faults = self.faults.statistics() if self.faults.ever_armed else None
        transport = self.transport.name if self.transport is not None else "pyfuse3"
        return self.recorder.snapshot(
            [e.statistics() for e in engines], self.counters(), faults, transport
        )

    # -- inodes -----------------------------------------------------------------------
    @_handler
    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self.inodes[parent_inode]
        try:
            return self._entry(parent, name)
        except FileNotFoundError:
            timeout = self.entry_timeout
            if not timeout:
                raise
        # A negative entry: the kernel keeps the absence for the entry timeout, as it
        # keeps names, so the open(O_CREAT) that usually follows a failed lookup goes
        # straight to CREATE instead of asking again (one request less per new file).
        entry = EntryAttributes()
        entry.entry_timeout, entry.attr_timeout = timeout, 0
        return entry

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        for inode_id, count in inode_list:
            try:
                self.inodes.forget(inode_id, count)
            except Exception:  # forget must not raise: nobody would receive the error
                self.unexpected_errors += 1
                log.exception("unexpected error forgetting inode %d", inode_id)

    @_handler
    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        node = self.inodes.get_even_removed(inode)
        if node.removed_stat is not None:  # e.g. fstat of an O_PATH descriptor held by a user
            return self._attributes(node, node.removed_stat)
        return self._attributes(node, os.fstat(node.fd))

    @_handler
    @_update
    async def setattr(
        self,
        inode: InodeT,
        attr: EntryAttributes,
        fields: SetattrFields,
        fh: FileHandleT | None,
        ctx: RequestContext,
    ) -> EntryAttributes:
        node = self.inodes[inode]
        fd = self._file(fh) if fh is not None else None
        path = node.proc_path
        if fields.update_mode:
            if node.is_symlink:  # as lchmod(2) on Linux
                raise FUSEError(errno.EOPNOTSUPP)
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(path, uid, gid)
        if fields.update_size:
            closer = self.closer
            if closer is not None and not closer.idle:
                await closer.wait()  # a size may take space (see _BLIND_TO_SPACE)
            if fd is not None:
                os.ftruncate(fd, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_atime or fields.update_mtime:
            syscalls.utimensat(
                path,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return self._attributes(node, os.fstat(node.fd))

    @_handler
    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        node = self.inodes[inode]
        if not node.is_symlink:  # readlinkat(fd, "") would say ENOENT
            raise FUSEError(errno.EINVAL)
        return os.readlink(b"", dir_fd=node.fd)

    # -- directory entries ------------------------------------------------------------
    @_handler
    @_update
    async def mknod(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self.inodes[parent_inode]
        os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @_handler
    @_update
    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self.inodes[parent_inode]
        os.mkdir(name, mode, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @_handler
    @_update
    async def symlink(
        self, parent_inode: InodeT, name: FileNameT, target: FileNameT, ctx: RequestContext
    ) -> EntryAttributes:
        parent = self.inodes[parent_inode]
        os.symlink(target, name, dir_fd=parent.fd)
        return self._created(parent, name, ctx)

    @_handler
    @_update
    async def link(
        self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT, ctx: RequestContext
    ) -> EntryAttributes:
        node = self.inodes[inode]
        parent = self.inodes[new_parent_inode]
        # linkat() following the magic link reaches the inode itself, symlinks included.
        os.link(node.proc_path, new_name, dst_dir_fd=parent.fd, follow_symlinks=True)
        self.inodes.ref(node)
        return self._attributes(node, os.fstat(node.fd))

    @_handler
    @_update
    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self.inodes[parent_inode]
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        pinned = self.inodes.removing(st, parent, name)
        try:
            os.unlink(name, dir_fd=parent.fd)
        except BaseException:
            if pinned is not None:
                self.inodes.unpin(pinned)
            raise
        self._removed(st)

    @_handler
    @_update
    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent = self.inodes[parent_inode]
        pinned = None  # the directory, held so that whoever is still in it can stat it
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            pinned = self.inodes.removing(st, parent, name)
        try:
            os.rmdir(name, dir_fd=parent.fd)
        except BaseException:
            if pinned is not None:
                self.inodes.unpin(pinned)
            raise

    @_handler
    @_update
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: RequestContext,
    ) -> None:
        old_parent = self.inodes[parent_inode_old]
        new_parent = self.inodes[parent_inode_new]
        old_dir, new_dir = old_parent.fd, new_parent.fd
        moved = None  # what moves: its remembered name changes
        with contextlib.suppress(FileNotFoundError):
            moved = os.stat(name_old, dir_fd=old_dir, follow_symlinks=False)
        replaced = None  # what the new name meant before, if anything
        with contextlib.suppress(FileNotFoundError):
            replaced = os.stat(name_new, dir_fd=new_dir, follow_symlinks=False)
        exchange = bool(flags & syscalls.RENAME_EXCHANGE)
        pinned = None
        if replaced is not None and not exchange:
            pinned = self.inodes.removing(replaced, new_parent, name_new)
        try:
            if flags:
                syscalls.renameat2(old_dir, name_old, new_dir, name_new, flags)
            else:
                os.rename(name_old, name_new, src_dir_fd=old_dir, dst_dir_fd=new_dir)
        except BaseException:
            if pinned is not None:
                self.inodes.unpin(pinned)
            raise
        if moved is not None and (node := self.inodes.find(key_of(moved))) is not None:
            self.inodes.seen(node, new_parent, name_new)
        if replaced is not None:
            if exchange:
                if (node := self.inodes.find(key_of(replaced))) is not None:
                    self.inodes.seen(node, old_parent, name_old)
            else:
                self._removed(replaced)

    def _removed(self, st: os.stat_result) -> None:
        """A name of the backing node *st* is gone: if it was the last, let go of it."""
        inode = self.inodes.find(key_of(st))
        if inode is not None and not stat.S_ISDIR(st.st_mode):
            self.inodes.release_if_removed(inode, before_removal=st)

    # -- files ------------------------------------------------------------------------
    @_handler
    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        node = self.inodes[inode]
        fd = self.inodes.reclaiming(
            lambda: self._open_backing(flags, lambda f: os.open(node.proc_path, f))
        )
        return self._open_file(fd, node, flags, ctx)

    def _open_backing(self, flags: int, opener: Callable[[int], int]) -> int:
        """Open the backing file for the kernel's *flags*, adapted to the cache mode.

        With the writeback cache the kernel reads pages around partial writes through
        any open file, and appends by itself: a write-only open is widened to
        read-write (where the file's permissions allow it) and O_APPEND is dropped.
        """
        flags &= ~_DROPPED_OPEN_FLAGS
        if not self.enable_writeback_cache:
            return opener(flags)
        flags &= ~os.O_APPEND
        if flags & os.O_ACCMODE == os.O_WRONLY:
            with contextlib.suppress(PermissionError):
                return opener((flags & ~os.O_ACCMODE) | os.O_RDWR)
        return opener(flags)

    @_handler
    @_update
    async def create(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        flags: FlagT,
        ctx: RequestContext,
    ) -> tuple[FileInfo, EntryAttributes]:
        parent = self.inodes[parent_inode]
        try:
            # EMFILE comes before the name is looked at: nothing was created, try again.
            fd = self.inodes.reclaiming(
                lambda: self._open_backing(
                    flags,
                    lambda f: os.open(name, f | os.O_CREAT | os.O_EXCL, mode, dir_fd=parent.fd),
                )
            )
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # Created by someone else since the kernel's lookup. Opening it here would
            # skip the kernel's checks: its permissions, a symlink that leads out of the
            # backing tree, a FIFO that blocks the loop. ESTALE makes the kernel redo
            # the open once (LOOKUP_REVAL), which then finds the new node and opens it
            # as open(2) would.
            raise FUSEError(errno.ESTALE) from None
        try:
            entry = self._created(parent, name, ctx, opened=fd)
        except BaseException:
            os.close(fd)
            raise
        return self._open_file(fd, self.inodes[entry.st_ino], flags, ctx), entry

    @_handler
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer (PyObject_GetBuffer)
        self, fh: FileHandleT, off: int, size: int
    ) -> Buffer:
        fd = self._file(fh)
        if self.faults.armed:
            await self.faults.inject("read", off, size)
        return await self.engine.read(fd, off, size)

    def start_read(self, fh: int, off: int, size: int, token: Any, done: ReadDone) -> bool:
        """Start reading as `read` would, without a task, if the engine can (an aligned
        O_DIRECT read, `CompletionEngine.start_read`) and no faults are armed; False
        if not: then serve it with `read`. ``done(token, count, data)`` is called once
        it completed (*data* None when *count* is ``-errno``); it is counted as a read
        request. The caller calls `commit_reads` before its task waits."""
        engine = self._task_free
        if engine is None or self.faults.armed or fh not in self._files:
            return False
        twin = engine.task_free_twin(fh, off, size)
        if twin < 0:
            return False
        started = (token, done, self.recorder.begin("read"), fh, off, size)
        engine.start_read(twin, off, size, self._read_done, started)
        return True

    def commit_reads(self) -> None:
        """Commit the reads `start_read` prepared (one system call for a batch)."""
        if self._task_free is not None:
            self._task_free.commit()

    def _read_done(self, started: tuple[Any, ...], count: int, data: memoryview | None) -> None:
        token, done, start = started[:3]
        if count == -errno.EINVAL:  # O_DIRECT refused the range: read it the usual way
            assert self._nursery is not None
            self._nursery.start_soon(self._read_again, started, name="iofs read")
            return
        self.recorder.end("read", start, error=count < 0, nbytes=max(count, 0))
        done(token, count, data)

    async def _read_again(self, started: tuple[Any, ...]) -> None:
        token, done, start, fh, off, size = started
        count, data = -errno.EIO, None
        try:
            data = memoryview(await self.engine.read(self._file(fh), off, size)).cast("B")
            count = data.nbytes
        except FUSEError as exc:
            count = -exc.errno
        except OSError as exc:
            count = -(exc.errno or errno.EIO)
        except Exception:
            self.unexpected_errors += 1
            log.exception("unexpected error in read%s", _short_repr((fh, off, size)))
        finally:
            self.recorder.end("read", start, error=count < 0, nbytes=max(count, 0))
            done(token, count, data)

    @_handler
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        fd = self._file(fh)
        if self.faults.armed:  # decided before the engine sees it: a failed write wrote nothing
            await self.faults.inject("write", off, len(buf))
        writer = self._direct_writers.get(fd)
        if writer is not None:
            self._drop_privileges(fd, writer)
        return await self.engine.write(fd, off, buf)

    def drop_privileges(self, inode: InodeT, ctx: RequestContext) -> bool:
        """Drop what a write or truncate by *ctx*, a caller without CAP_FSETID, drops on
        the backing filesystem: set-user-ID, set-group-ID (when group-executable or the
        caller is not in the file's group) and security.capability. Returns whether
        anything changed.

        The kernel asks for this when HANDLE_KILLPRIV_V2 is negotiated (dev transport).
        A daemon that is not root need not: its own write or truncate drops them.
        """
        if not self.as_root:
            return False
        node = self.inodes.get_even_removed(inode)
        if node.removed_stat is not None or node.is_symlink:
            return False  # released: no name and no open file left to write through
        path = node.proc_path
        st = os.stat(path)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            return False
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and (
            mode & stat.S_IXGRP or st.st_gid not in pyfuse3.get_sup_groups(ctx.pid) | {ctx.gid}
        ):
            kill |= stat.S_ISGID
        if kill:
            os.chmod(path, stat.S_IMODE(mode) & ~kill)
        try:
            os.removexattr(path, b"security.capability")
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
        else:
            kill |= 1
        return bool(kill)

    @_handler
    @_update
    async def fallocate(self, fh: FileHandleT, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on the backing file, with the caller's mode flags. Only the dev
        transport calls it: pyfuse3 has no such operation."""
        syscalls.fallocate(self._file(fh), mode, offset, length)

    @_handler
    async def flush(self, fh: FileHandleT) -> None:
        # close(2) of a duplicate reports errors the backing filesystem defers to close.
        # With no descriptor left for the duplicate there is nothing to report: the
        # caller's close(2) must not fail with EMFILE.
        try:
            duplicate = os.dup(self._file(fh))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.inodes.reclaim()  # so that the next request has descriptors
                return
            raise
        os.close(duplicate)

    @_handler
    async def release(self, fh: FileHandleT) -> None:
        inode = self._files.pop(fh, None)
        self._direct_writers.pop(fh, None)
        if inode is not None:
            self._release_passthrough(fh, inode)
            self._forget_fd(fh)
            inode.closed(fh)
            # The last close frees an unlinked file: its stat says, even when the inode's
            # own descriptor was let go.
            current = os.fstat(fh) if inode.opens == 1 else None
            os.close(fh)
            inode.opens -= 1
            self.inodes.release_if_removed(inode, current=current)

    @_handler
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        fd = self._file(fh)
        if self.faults.armed:
            await self.faults.inject("fsync")
        await self.engine.fsync(fd, datasync)

    # -- directories ------------------------------------------------------------------
    @_handler
    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        node = self.inodes[inode]
        fd = self.inodes.reclaiming(lambda: os.open(node.proc_path, os.O_RDONLY | os.O_DIRECTORY))
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = OpenDir(fd, node)
        node.opened(fd)
        return handle

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        """List a snapshot taken when the listing starts (offset 0).

        Offsets are positions in the snapshot, so entries created or removed while a
        listing is under way can neither be skipped nor repeated; a rewind (offset 0)
        takes a fresh snapshot. Entries gone since the snapshot are left out.
        """
        handle = self._dir(fh)
        if start_id == 0 or handle.entries is None:
            # os.listdir(fd) lists through a duplicate of the descriptor.
            names = self.inodes.reclaiming(lambda: os.listdir(handle.fd))
            handle.entries = [b".", b"..", *map(os.fsencode, names)]
        parent = handle.inode
        replied = False
        for index in range(start_id, len(handle.entries)):
            name = handle.entries[index]
            try:
                if name in (b".", b".."):
                    node, st = self._dot_entry(parent, name)
                else:
                    node, st = self._lookup(parent, name)
            except FileNotFoundError:
                continue  # removed since the snapshot
            except OSError:
                if replied:
                    return  # send what we have (counted already); the next call fails
                raise
            if not readdir_reply(token, name, self._attributes(node, st), index + 1):
                self.inodes.drop_if_unused(node)
                return
            replied = True
            if name not in (b".", b".."):  # the kernel does not link dot entries
                self.inodes.ref(node)

    def _dot_entry(self, directory: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        if name == b".." and directory is not self.inodes.root:
            st = os.stat(b"..", dir_fd=directory.fd, follow_symlinks=False)
            parent = self.inodes.find(key_of(st))
            if parent is not None:
                return parent, st
        return directory, os.fstat(directory.fd)

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        handle = self._dirs.pop(fh, None)
        if handle is not None:
            handle.inode.closed(handle.fd)
            os.close(handle.fd)

    @_handler
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        sync_file(self._dir(fh).fd, datasync)

    @_handler
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        st = os.statvfs(self.inodes.root.fd)
        data = StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = st.f_bfree
        data.f_bavail = st.f_bavail
        data.f_files = st.f_files
        data.f_ffree = st.f_ffree
        data.f_favail = st.f_favail
        data.f_namemax = st.f_namemax
        return data

    # -- extended attributes ----------------------------------------------------------
    async def setxattr(
        self, inode: InodeT, name: XAttrNameT, value: bytes, ctx: RequestContext
    ) -> None:
        if inode == pyfuse3.ROOT_INODE and name in CONTROL_XATTRS:
            await self._control_write(name, value, ctx)
        else:
            await self._setxattr(inode, name, value)

    @_recorded_as("control")
    async def _control_write(self, name: XAttrNameT, value: bytes, ctx: RequestContext) -> None:
        await self.control.write(name, value, ctx.uid)

    @_recorded_as("setxattr")
    async def _setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes) -> None:
        await self._set_backing_xattr(inode, name, value)

    @_update
    async def _set_backing_xattr(self, inode: InodeT, name: XAttrNameT, value: bytes) -> None:
        os.setxattr(self.inodes[inode].proc_path, name, value)

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE and (
            name in CONTROL_XATTRS or write_in_read(name) is not None
        ):
            # Counted apart from the workload's getxattrs: `iofs top` polls this way.
            return await self._control_read(name, ctx)
        return await self._getxattr(inode, name)

    @_recorded_as("control")
    async def _control_read(self, name: XAttrNameT, ctx: RequestContext) -> bytes:
        request = write_in_read(name)
        if request is None:
            root = os.fstat(self.inodes[pyfuse3.ROOT_INODE].fd)
            groups = pyfuse3.get_sup_groups(ctx.pid) | {ctx.gid}
            if not _may_access(root, os.R_OK, ctx.uid, groups):
                raise FUSEError(errno.EACCES)  # readable by whoever may list the root
            return self.control.read(name, ctx.pid)
        # "iofs.mode=SETTING": a write on a read-only mount (see iofs.control_protocol).
        # Most readers ask twice (the size, then the value): the same setting again
        # changes nothing (see switch); the same faults restart their counters, which
        # the second read does at once.
        await self.control.write(*request, ctx.uid)
        return b""

    @_recorded_as("getxattr")
    async def _getxattr(self, inode: InodeT, name: XAttrNameT) -> bytes:
        return os.getxattr(self.inodes[inode].proc_path, name)

    @_handler
    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        return [os.fsencode(n) for n in os.listxattr(self.inodes[inode].proc_path)]

    @_handler
    @_update
    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        os.removexattr(self.inodes[inode].proc_path, name)

    @_handler
    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        # Only reached when mounted without default_permissions: check as the caller.
        st = os.fstat(self.inodes[inode].fd)
        groups = pyfuse3.get_sup_groups(ctx.pid) | {ctx.gid}
        return _may_access(st, mode, ctx.uid, groups)


def _has_privileges(fd: int) -> bool:
    """Whether the file open as *fd* has set-user-ID, set-group-ID or a file capability:
    what a write by an unprivileged caller must drop, and a passthrough write, made
    with the daemon's credentials, would not."""
    if os.fstat(fd).st_mode & _PRIVILEGE_BITS:
        return True
    try:
        os.getxattr(fd, b"security.capability")
    except OSError:
        return False  # ENODATA, or no xattrs on the backing filesystem at all
    return True


def _may_access(st: os.stat_result, mode: int, uid: int, groups: set[int]) -> bool:
    """The classic Unix permission check (no ACLs), as access(2) does it."""
    if mode == os.F_OK:
        return True
    if uid == 0:
        # root may do anything but execute a file that nobody may execute
        return not (mode & os.X_OK) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid in groups:
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return mode & granted == mode
