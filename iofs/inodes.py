"""The inode table: FUSE inode numbers mapped to backing inodes, with a bounded number
of descriptors.

Every operation on an inode is an ``*at`` call relative to an ``O_PATH | O_NOFOLLOW``
descriptor of the backing inode (or goes through ``/proc/self/fd/N``), so an inode
stays valid whatever happens to the path that led to it: renames of any ancestor,
paths longer than PATH_MAX, an unlinked-but-open file.

The kernel may know far more inodes than the process may hold descriptors (the soft
limit is 1024 on a default Debian login), so descriptors are a cache: at most
*budget* of them are held, least recently used first out. An inode whose descriptor
was let go is opened again, in this order of preference:

1. through a file or directory open on it through the mount (``/proc/self/fd/N``):
   this reaches an unlinked-but-open file too;
2. through its file handle (``name_to_handle_at`` when it was let go,
   ``open_by_handle_at`` now), where the daemon may use handles: it has
   CAP_DAC_READ_SEARCH and the backing filesystem exports them (probed at mount);
3. otherwise through the parent and name it was last seen under (kept up to date by
   lookup, create, rename, unlink), checking that the name still leads to the same
   ``(st_dev, st_ino)``: if not (the name was changed in the backing directory behind
   the mount's back), the inode is stale (ESTALE), as an NFS client would say.

The mount's root, and nodes that could not be found again once their last known name
is gone (a removed directory, a hard link whose remembered name was removed, in the
name-based fallback), are pinned: their descriptors are never let go.

Inodes are keyed by the backing ``(st_dev, st_ino)``: hard links share one inode. Its
number (the FUSE node id, which pyfuse3 also reports as ``st_ino``) is derived from that
key, not counted up: the kernel forgets inodes it evicts (memory pressure,
``drop_caches``) and looks them up again later, and a counted number would change each
time, so that two stats of one file, or of two names of one hard-linked file, could show
different ``st_ino`` (see `number_of`). Once
the last name and the last open file of an inode are gone, `release_if_removed` lets
go of it and drops its key (the backing filesystem may give the number to a new
file), as the backing filesystem would: the space is free when unlink(2) or rename(2)
returns, or when the kernel reports the last close.

Running out of descriptors anyway (EMFILE, ENFILE) costs only the request that met
it: `reclaiming` lets go of half the cache and tries once more.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pyfuse3

from . import syscalls

log = logging.getLogger(__name__)

InodeKey = tuple[int, int]
T = TypeVar("T")

#: Fewest descriptors the cache may hold: an operation uses at most three inodes at once
#: (rename: two directories and the moved node), and the most recent ones are kept.
MIN_FD_BUDGET = 4
#: The default budget's ceiling: reopening by handle costs a few microseconds, so more
#: cached descriptors gain little; the rest of the limit is left for open files.
MAX_DEFAULT_FD_BUDGET = 65536
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
#: Inode numbers: the backing st_ino in the low 56 bits, the backing device's index (in
#: the order met, the backing root's device first, as 0) in the 7 bits above them...
DEVICE_SHIFT = 56
MAX_DEVICES = 1 << 7
#: ...and, from bit 63 up, spare numbers counted up for the inodes that cannot have
#: theirs: the number is already taken (the backing filesystem gave a removed file's
#: number to a new file before the kernel forgot the old inode; the root's number is 1),
#: or the backing st_ino or the device does not fit.
SPARE_NUMBERS = 1 << 63


def default_fd_budget(limit: int) -> int:
    """The budget for a soft RLIMIT_NOFILE of *limit*: half of it, at most 65,536."""
    return max(MIN_FD_BUDGET, min(limit // 2, MAX_DEFAULT_FD_BUDGET))


def _stale() -> OSError:
    return OSError(errno.ESTALE, os.strerror(errno.ESTALE))


@dataclass(eq=False, slots=True)  # slots: a known inode costs memory, not a descriptor
class Inode:
    id: int
    key: InodeKey
    file_type: int  # the S_IFMT bits, which never change for an inode
    table: InodeTable = field(repr=False)
    #: Told to the kernel with the number (`InodeTable.new_generation`); the root's is
    #: 0, as the kernel made it.
    generation: int = 0
    _fd: int = -1  # O_PATH | O_NOFOLLOW on the backing inode, or -1 if not held now
    lookups: int = 0
    opens: int = 0  # files open on it through the mount
    #: Backing descriptors of files and directories open on it through the mount
    #: (None rather than an empty set: most inodes never have any).
    open_fds: set[int] | None = field(default=None, repr=False)
    #: Once removed and released: its last attributes, for getattr.
    removed_stat: os.stat_result | None = None
    #: Where it was last seen, to find it again without a handle.
    parent: Inode | None = field(default=None, repr=False)
    name: bytes = b""
    #: Its file handle (`syscalls.handle_of`), taken when its descriptor is let go.
    handle: bytes | None = field(default=None, repr=False)
    pinned: bool = False  # its descriptor is never let go

    @property
    def fd(self) -> int:
        """A descriptor of the backing inode, opened again if it was let go. Use it at
        once: touching other inodes may let it go (the most recent few are kept)."""
        fd = self._fd
        if fd >= 0:
            if not self.pinned:
                self.table.lru.move_to_end(self)
            return fd
        return self.table.reopen(self)

    @property
    def proc_path(self) -> bytes:
        """A path that reaches the backing inode itself, for calls that have no *at form."""
        return proc_path(self.fd)

    def opened(self, fd: int) -> None:
        """*fd*, a file or directory open on this inode through the mount, was opened."""
        if self.open_fds is None:
            self.open_fds = set()
        self.open_fds.add(fd)

    def closed(self, fd: int) -> None:
        """*fd* (see `opened`) is about to be closed."""
        if self.open_fds is not None:
            self.open_fds.discard(fd)
            if not self.open_fds:
                self.open_fds = None

    @property
    def is_symlink(self) -> bool:
        return self.file_type == stat.S_IFLNK


def proc_path(fd: int) -> bytes:
    """The magic link that reaches what *fd* refers to, even an O_PATH descriptor."""
    return b"/proc/self/fd/%d" % fd


def key_of(st: os.stat_result) -> InodeKey:
    return (st.st_dev, st.st_ino)


def _unlinked(st: os.stat_result) -> os.stat_result:
    """*st* with no link left: a removed node's attributes."""
    return os.stat_result(
        (
            st.st_mode,
            st.st_ino,
            st.st_dev,
            0,
            st.st_uid,
            st.st_gid,
            st.st_size,
            int(st.st_atime),
            int(st.st_mtime),
            int(st.st_ctime),
            st.st_atime,
            st.st_mtime,
            st.st_ctime,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_blksize,
            st.st_blocks,
            st.st_rdev,
        )
    )


def probe_file_handles(root_fd: int) -> tuple[int, int] | str:
    """Whether inodes under *root_fd* can be kept as file handles: (a descriptor of the
    backing mount for open_by_handle_at, its mount id), or why not."""
    try:
        handle, mount_id = syscalls.handle_of(root_fd)
    except OSError as exc:
        return f"the backing filesystem exports no file handles ({exc.strerror})"
    try:
        mount_fd = os.open(proc_path(root_fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open the backing directory ({exc.strerror})"
    try:
        fd = syscalls.open_by_handle(mount_fd, handle, os.O_PATH)
    except OSError as exc:
        os.close(mount_fd)
        if exc.errno == errno.EPERM:
            return "open_by_handle_at needs CAP_DAC_READ_SEARCH"
        return f"open_by_handle_at fails ({exc.strerror})"
    same = key_of(os.fstat(fd)) == key_of(os.fstat(root_fd))
    os.close(fd)
    if not same:
        os.close(mount_fd)
        return "open_by_handle_at reached another inode"
    return mount_fd, mount_id


class InodeTable:
    """Owns the inodes and a budget of their descriptors (see the module docstring)."""

    def __init__(self, root_fd: int, *, budget: int, file_handles: bool = True) -> None:
        if budget < MIN_FD_BUDGET:
            raise ValueError(f"the descriptor budget must be at least {MIN_FD_BUDGET}")
        st = os.fstat(root_fd)
        self.root = Inode(
            pyfuse3.ROOT_INODE, key_of(st), stat.S_IFDIR, self, _fd=root_fd, lookups=1, pinned=True
        )
        self._by_id: dict[int, Inode] = {self.root.id: self.root}
        self._by_key: dict[InodeKey, Inode] = {self.root.key: self.root}
        #: Index of each backing device in inode numbers (see `DEVICE_SHIFT`).
        self._devices: dict[int, int] = {st.st_dev: 0}
        self._next_spare = SPARE_NUMBERS
        #: The spare number each backing inode that got one keeps until it is removed,
        #: so that its number too stays the same after the kernel forgets it (few: see
        #: `number_of`).
        self._spares: dict[InodeKey, int] = {}
        self._last_generation = random.getrandbits(32)  # see `new_generation`
        self.budget = budget
        #: Held descriptors that may be let go, least recently used first.
        self.lru: OrderedDict[Inode, None] = OrderedDict()
        self._pinned: set[Inode] = set()  # besides the root
        self.most_known = 1  # the most inodes known at once
        self.evictions = 0
        self.reopens = 0
        self.reclaims = 0
        self._mount_fd = -1
        self._mount_id = -1
        #: Descriptors of removed files let go of and not closed yet, or None: closed at
        #: once. The last close frees the file (on ext4, a few hundred µs of an unlink);
        #: a transport that replies before it serves anything else sets a list, which
        #: `close_after_replies` in `iofs.fs` hands to a `Closer` after each reply: closed
        #: beside the loop, before any later request that could take or report space.
        self.released: list[int] | None = None
        #: Why inodes are not kept as file handles, or None if they are.
        self.no_handles_reason: str | None = "turned off (--no-file-handles)"
        if file_handles:
            probed = probe_file_handles(root_fd)
            if isinstance(probed, str):
                self.no_handles_reason = probed
            else:
                self._mount_fd, self._mount_id = probed
                self.no_handles_reason = None

    @property
    def file_handles(self) -> bool:
        return self.no_handles_reason is None

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, inode_id: int) -> Inode:
        """The inode (ESTALE once removed and released, or if unknown)."""
        inode = self.get_even_removed(inode_id)
        if inode.removed_stat is not None:
            raise OSError(errno.ESTALE, "the backing file has been removed")
        return inode

    def get_even_removed(self, inode_id: int) -> Inode:
        """The inode, even removed; ESTALE if its number is unknown: the kernel forgot
        it, yet asks (``open_by_handle_at`` of a handle taken through the mount looks
        up ``.`` in the number, as an NFS server would), so the answer is that of a
        removed file, not an error of the daemon's."""
        try:
            return self._by_id[inode_id]
        except KeyError:
            raise OSError(errno.ESTALE, "no such inode (forgotten)") from None

    def find(self, key: InodeKey) -> Inode | None:
        return self._by_key.get(key)

    @property
    def held(self) -> int:
        """Descriptors held for inodes: the cache, the pinned ones, the root and the
        mount descriptor for open_by_handle_at."""
        return len(self.lru) + len(self._pinned) + 1 + (self._mount_fd >= 0)

    def counters(self) -> dict[str, int]:
        return {
            "inodes": len(self._by_id),
            "inodes_max": self.most_known,
            "fd_budget": self.budget,
            "fds_cached": len(self.lru),
            "fds_pinned": len(self._pinned),
            "fd_evictions": self.evictions,
            "fd_reopens": self.reopens,
            "fd_reclaims": self.reclaims,
            "file_handles": int(self.file_handles),
        }

    # -- descriptors ---------------------------------------------------------------------
    def reclaiming(self, call: Callable[[], T]) -> T:
        """*call*; if it runs out of descriptors, let go of half the cache and call again."""
        try:
            return call()
        except OSError as exc:
            if exc.errno not in _OUT_OF_DESCRIPTORS:
                raise
        self.reclaim()
        return call()

    def reclaim(self) -> None:
        """Out of descriptors: let go of the least recently used half of the cache.

        The most recent `MIN_FD_BUDGET` stay: the operation under way may be using them.
        """
        self.reclaims += 1
        count = min(len(self.lru) // 2, max(0, len(self.lru) - MIN_FD_BUDGET))
        log.warning(
            "out of file descriptors (%d held for inodes): letting go of %d",
            self.held,
            count,
        )
        self._evict(count)

    def _hold(self, inode: Inode, fd: int) -> None:
        inode._fd = fd
        self.lru[inode] = None
        if len(self.lru) > self.budget:
            self._evict(len(self.lru) - self.budget)

    def _evict(self, count: int) -> None:
        lru = self.lru
        for _ in range(count):
            victim, _ = lru.popitem(last=False)
            self._let_go(victim)
            self.evictions += 1

    def _let_go(self, inode: Inode) -> None:
        fd = inode._fd
        if self._mount_fd >= 0 and inode.handle is None:
            try:
                handle, mount_id = syscalls.handle_of(fd)
            except OSError:
                pass  # found again by name
            else:
                if mount_id == self._mount_id:  # a submount would need its own mount fd
                    inode.handle = handle
        inode._fd = -1
        os.close(fd)

    def reopen(self, inode: Inode) -> int:
        """A descriptor of *inode*, whose own was let go (see the module docstring)."""
        if inode.removed_stat is not None:
            raise _stale()
        chain: list[Inode] = []  # ancestors to find again by name, nearest first
        node = inode
        while node._fd < 0 and not node.open_fds and node.handle is None:
            chain.append(node)
            if node.parent is None or node.parent in chain:
                raise _stale()
            node = node.parent
        parent_fd = node.fd if node._fd >= 0 else self._open_known(node)
        for child in reversed(chain):
            parent_fd = self._open_by_name(child, parent_fd)
        return parent_fd

    def _open_known(self, inode: Inode) -> int:
        """Open *inode* through an open file or its handle."""
        if inode.open_fds:
            path = proc_path(next(iter(inode.open_fds)))
            fd = self.reclaiming(lambda: os.open(path, os.O_PATH | os.O_CLOEXEC))
        else:
            assert inode.handle is not None
            handle = inode.handle
            flags = os.O_PATH | os.O_NOFOLLOW
            fd = self.reclaiming(lambda: syscalls.open_by_handle(self._mount_fd, handle, flags))
        self.reopens += 1
        self._hold(inode, fd)
        return fd

    def _open_by_name(self, inode: Inode, parent_fd: int) -> int:
        name = inode.name
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = self.reclaiming(lambda: os.open(name, flags, dir_fd=parent_fd))
        except (FileNotFoundError, NotADirectoryError):
            raise _stale() from None
        try:
            same = key_of(os.fstat(fd)) == inode.key
        except BaseException:
            os.close(fd)
            raise
        if not same:  # renamed or replaced in the backing directory, not through the mount
            os.close(fd)
            raise _stale()
        self.reopens += 1
        self._hold(inode, fd)
        return fd

    def pin(self, inode: Inode) -> None:
        """Keep *inode*'s descriptor until it is forgotten (it may not be found again)."""
        if inode.pinned:
            return
        inode.fd  # noqa: B018  # open it again if it was let go
        del self.lru[inode]
        inode.pinned = True
        self._pinned.add(inode)

    def unpin(self, inode: Inode) -> None:
        if not inode.pinned or inode is self.root:
            return
        inode.pinned = False
        self._pinned.discard(inode)
        if inode._fd >= 0:
            self._hold(inode, inode._fd)

    # -- the kernel's references ---------------------------------------------------------
    def adopt(self, fd: int, st: os.stat_result, parent: Inode, name: bytes) -> Inode:
        """Return the inode for the backing file *fd* (an O_PATH descriptor, fstat *st*),
        found as *name* in *parent*.

        Takes ownership of *fd*: it is kept for a new inode, or for a known one whose
        descriptor was let go, and closed otherwise. The lookup count is not changed;
        callers `ref` what they report.
        """
        known = self._by_key.get(key_of(st))
        if known is not None:
            self.seen(known, parent, name)
            if known._fd < 0 and known.removed_stat is None:
                self._hold(known, fd)
            else:
                os.close(fd)
            return known
        key, file_type = key_of(st), stat.S_IFMT(st.st_mode)
        generation = self.new_generation()
        inode = Inode(self.number_of(key), key, file_type, self, generation=generation)
        self.seen(inode, parent, name)
        self._by_id[inode.id] = inode
        self._by_key[inode.key] = inode
        self.most_known = max(self.most_known, len(self._by_id))
        self._hold(inode, fd)
        if inode.parent is None and not self.file_handles:
            self.pin(inode)  # found through "..": no name known to find it again by
        return inode

    def number_of(self, key: InodeKey) -> int:
        """The number for a new inode of the backing *key*: the same each time the key
        comes back after the kernel forgot it, so that ``st_ino`` through the mount is
        stable for as long as the backing file lives, as on the backing filesystem.

        A number is never that of another inode the kernel may still know: a taken one
        (or one that does not fit) gives way to a spare number (`SPARE_NUMBERS`), which
        the backing inode keeps until it is removed through the mount.
        """
        spare = self._spares.get(key)
        if spare is not None and spare not in self._by_id:
            return spare
        dev, ino = key
        index = self._devices.get(dev)
        if index is None and len(self._devices) < MAX_DEVICES:
            index = self._devices[dev] = len(self._devices)
        if spare is None and index is not None and 0 < ino < 1 << DEVICE_SHIFT:
            number = index << DEVICE_SHIFT | ino
            if number not in self._by_id:  # the root's number, 1, is always there
                return number
        while self._next_spare in self._by_id:
            self._next_spare += 1
        spare = self._spares[key] = self._next_spare
        self._next_spare += 1
        return spare

    def new_generation(self) -> int:
        """The generation for a new inode: the next of a counter that starts at a random
        32-bit value for each mount.

        The kernel puts the generation next to the number in the handles
        ``name_to_handle_at`` takes through the mount, and opens such a handle only while
        the inode it knows under that number has that generation. Numbers are given
        again (a new file may get a removed one's backing inode number once the kernel
        forgot the old inode), so a new inode gets a new generation, and a handle of a
        removed file cannot open the new one. The kernel never sees the generation of a
        number change while it knows the inode (it would take the inode for a stale
        one): an inode keeps its generation until the kernel forgets it. The random
        start keeps handles from an earlier mount from matching, as ext4 does with its
        own generations.
        """
        self._last_generation = (self._last_generation + 1) & 0xFFFFFFFF
        return self._last_generation

    def seen(self, inode: Inode, parent: Inode, name: bytes) -> None:
        """*inode* is (now) *name* in *parent* (a dot entry says nothing of the kind)."""
        if inode is not self.root and name not in (b".", b".."):
            inode.parent, inode.name = parent, name

    def ref(self, inode: Inode) -> None:
        inode.lookups += 1

    def forget(self, inode_id: int, count: int) -> None:
        inode = self._by_id.get(inode_id)
        if inode is None or inode is self.root:
            return
        inode.lookups -= count
        self.drop_if_unused(inode)

    def drop_if_unused(self, inode: Inode) -> None:
        if inode.lookups > 0 or inode is self.root:
            return
        del self._by_id[inode.id]
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
        self._close(inode)

    def _close(self, inode: Inode, *, removed: bool = False) -> None:
        """Let go of *inode*'s descriptor for good (its handle is of no more use); that
        of a *removed* file may be closed later (see `released`)."""
        if inode.pinned:
            inode.pinned = False
            self._pinned.discard(inode)
        else:
            self.lru.pop(inode, None)
        if inode._fd >= 0:
            if removed and self.released is not None:
                self.released.append(inode._fd)
            else:
                os.close(inode._fd)
            inode._fd = -1

    def close_released(self) -> None:
        """Close the descriptors of removed files let go of since the last call."""
        released = self.released
        while released:
            fd = released.pop()
            try:
                os.close(fd)
            except OSError as exc:  # the space may stay taken; the daemon goes on
                log.error("closing the descriptor of a removed file failed: %s", exc)

    def removing(self, st: os.stat_result, parent: Inode, name: bytes) -> Inode | None:
        """*name* in *parent* (the backing node *st*) is about to be removed: if the
        inode could not be found again afterwards, pin it. Returns it if pinned here,
        for `unpin` should the removal fail."""
        inode = self._by_key.get(key_of(st))
        if inode is None or inode.pinned or inode.removed_stat is not None:
            return None
        if stat.S_ISDIR(st.st_mode):
            pass  # a removed directory has no name and, on most filesystems, no handle
        elif inode.parent is not parent or inode.name != name or st.st_nlink < 2:
            return None  # found by another name, or gone with this one
        elif self.file_handles:
            return None  # found by its handle
        self.pin(inode)
        return inode

    def release_if_removed(
        self,
        inode: Inode,
        *,
        current: os.stat_result | None = None,
        before_removal: os.stat_result | None = None,
    ) -> None:
        """Let go of a file with no name and no open file left.

        *current* is its stat now, if the caller has one; *before_removal* its stat
        just before one of its names was removed. The inode stays known to the kernel
        until it forgets it; meanwhile getattr answers its last attributes and anything
        else ESTALE. Its key leaves the table, since the backing filesystem may now give
        the number to a new file.
        """
        if inode.opens or inode is self.root or inode.removed_stat is not None:
            return
        if current is not None:
            st = current
        elif inode._fd >= 0:
            st = os.fstat(inode._fd)
        elif before_removal is not None and before_removal.st_nlink <= 1:
            st = _unlinked(before_removal)
        else:
            return  # not held: it still has a name (or was removed behind our back)
        if st.st_nlink:
            return
        inode.removed_stat = st
        if self._by_key.get(inode.key) is inode:
            del self._by_key[inode.key]
            self._spares.pop(inode.key, None)  # the number may be the backing's for a new file
        self._close(inode, removed=True)

    def close(self) -> None:
        """Close every descriptor but the root's, which belongs to the caller."""
        self.close_released()
        for inode in [*self.lru, *self._pinned]:
            self._close(inode)
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1
        self._by_id = {self.root.id: self.root}
        self._by_key = {self.root.key: self.root}
