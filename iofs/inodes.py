"""The inode table: FUSE inode numbers mapped to O_PATH handles on the backing directory.

Every inode the kernel knows is held open as an ``O_PATH | O_NOFOLLOW`` descriptor, and
every operation on it is an ``*at`` call relative to that descriptor (or goes through
``/proc/self/fd/N``). So an inode stays valid whatever happens to the path that led to
it: renames of any ancestor, paths longer than PATH_MAX, an unlinked-but-open file.

Inodes are keyed by the backing ``(st_dev, st_ino)``: hard links share one inode. The
held descriptor pins the backing inode, so its number cannot be reused while the key
is in the table.

Pinning also keeps a removed file's blocks allocated until the kernel forgets the
inode, which it may do a little later. So once the last name and the last open file of
an inode are gone, `release_if_removed` lets go of it, as the backing filesystem
would: the space is free when unlink(2) or rename(2) returns, or when the kernel
reports the last close (FUSE sends that release just after close(2) returns).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import pyfuse3

InodeKey = tuple[int, int]


@dataclass(eq=False)
class Inode:
    id: int
    fd: int  # O_PATH | O_NOFOLLOW on the backing inode
    key: InodeKey
    file_type: int  # the S_IFMT bits, which never change for an inode
    lookups: int = 0
    opens: int = 0  # files open on it through the mount
    #: Once removed and released (fd -1): its last attributes, for getattr.
    removed_stat: os.stat_result | None = None

    @property
    def proc_path(self) -> bytes:
        """A path that reaches the backing inode itself, for calls that have no *at form."""
        return proc_path(self.fd)

    @property
    def is_symlink(self) -> bool:
        return self.file_type == stat.S_IFLNK


def proc_path(fd: int) -> bytes:
    """The magic link that reaches what *fd* refers to, even an O_PATH descriptor."""
    return b"/proc/self/fd/%d" % fd


def key_of(st: os.stat_result) -> InodeKey:
    return (st.st_dev, st.st_ino)


class InodeTable:
    """Owns the O_PATH descriptors; closes each when the kernel forgets its inode."""

    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        self.root = Inode(pyfuse3.ROOT_INODE, root_fd, key_of(st), stat.S_IFDIR, lookups=1)
        self._by_id: dict[int, Inode] = {self.root.id: self.root}
        self._by_key: dict[InodeKey, Inode] = {self.root.key: self.root}
        self._next_id = pyfuse3.ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, inode_id: int) -> Inode:
        """The inode, with a usable descriptor (ESTALE once removed and released)."""
        inode = self._by_id[inode_id]
        if inode.fd < 0:
            raise OSError(errno.ESTALE, "the backing file has been removed")
        return inode

    def get_even_removed(self, inode_id: int) -> Inode:
        return self._by_id[inode_id]

    def find(self, key: InodeKey) -> Inode | None:
        return self._by_key.get(key)

    def adopt(self, fd: int, st: os.stat_result) -> Inode:
        """Return the inode for the backing file *fd* (an O_PATH descriptor, fstat *st*).

        Takes ownership of *fd*: it is kept for a new inode and closed if the inode is
        already known. The lookup count is not changed; callers `ref` what they report.
        """
        known = self._by_key.get(key_of(st))
        if known is not None:
            os.close(fd)
            return known
        inode = Inode(self._next_id, fd, key_of(st), stat.S_IFMT(st.st_mode))
        self._next_id += 1
        self._by_id[inode.id] = inode
        self._by_key[inode.key] = inode
        return inode

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
        if inode.fd >= 0:
            del self._by_key[inode.key]
            os.close(inode.fd)

    def release_if_removed(self, inode: Inode) -> None:
        """Close the handle of a file with no name and no open file left.

        The inode stays known to the kernel until it forgets it; meanwhile getattr
        answers its last attributes and anything else ESTALE. Its key leaves the
        table, since the backing filesystem may now give the number to a new file.
        """
        if inode.opens or inode is self.root or inode.fd < 0:
            return
        st = os.fstat(inode.fd)
        if st.st_nlink:
            return
        inode.removed_stat = st
        del self._by_key[inode.key]
        os.close(inode.fd)
        inode.fd = -1

    def close(self) -> None:
        """Close every descriptor but the root's, which belongs to the caller."""
        for inode in list(self._by_id.values()):
            if inode is not self.root and inode.fd >= 0:
                os.close(inode.fd)
        self._by_id = {self.root.id: self.root}
        self._by_key = {self.root.key: self.root}
