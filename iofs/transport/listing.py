"""A directory listing the dev transport builds: the token its readdir handlers fill."""

from __future__ import annotations

from pyfuse3 import EntryAttributes

from .protocol import DIRENT, ENTRY_OUT


def entry_out(attr: EntryAttributes) -> bytes:
    """fuse_entry_out for *attr* (what pyfuse3 builds in fuse_reply_entry)."""
    entry_timeout, attr_timeout = attr.entry_timeout, attr.attr_timeout
    atime, atime_ns = divmod(attr.st_atime_ns, 1_000_000_000)
    mtime, mtime_ns = divmod(attr.st_mtime_ns, 1_000_000_000)
    ctime, ctime_ns = divmod(attr.st_ctime_ns, 1_000_000_000)
    return ENTRY_OUT.pack(
        attr.st_ino,
        attr.generation,
        int(entry_timeout),
        int(attr_timeout),
        int(entry_timeout % 1 * 1e9),
        int(attr_timeout % 1 * 1e9),
        attr.st_ino,
        attr.st_size,
        attr.st_blocks,
        atime,
        mtime,
        ctime,
        atime_ns,
        mtime_ns,
        ctime_ns,
        attr.st_mode,
        attr.st_nlink,
        attr.st_uid,
        attr.st_gid,
        attr.st_rdev & 0xFFFFFFFF,
        attr.st_blksize,
        0,
    )


class DirectoryListing:
    """Entries for one READDIR or READDIRPLUS reply of at most *size* bytes."""

    __slots__ = ("linked", "parts", "plus", "remaining")

    def __init__(self, size: int, plus: bool) -> None:
        self.parts: list[bytes] = []
        self.remaining = size
        self.plus = plus
        #: Inodes a plain READDIR listed (the filesystem counted a lookup for each).
        self.linked: list[int] = []

    def add(self, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
        length = DIRENT.size + len(name)
        padded = (length + 7) & ~7
        needed = padded + (ENTRY_OUT.size if self.plus else 0)
        if needed > self.remaining:
            return False
        self.remaining -= needed
        if self.plus:
            self.parts.append(entry_out(attr))
        elif name not in (b".", b".."):
            self.linked.append(attr.st_ino)
        header = DIRENT.pack(attr.st_ino, next_id, len(name), (attr.st_mode >> 12) & 0o17)
        self.parts.append(header + name + bytes(padded - length))
        return True
