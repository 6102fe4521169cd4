"""The kernel's mount table, read as bytes: every mount point the kernel accepts.

A mount point may hold any byte but NUL. ``/proc/self/mountinfo`` writes space, tab,
newline and backslash as octal escapes and every other byte raw, so a name in Latin-1
(or any non-UTF-8 name) is not valid UTF-8, and reading the table as text fails for
every program on the machine as soon as one such mount exists. Fields are decoded as
paths are (`os.fsdecode`), so an entry's mount point equals ``str(path)`` for the same
path whatever its bytes. This module imports nothing heavy: clients use it too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    device: str  # major:minor of the mounted filesystem
    mountpoint: str
    fstype: str  # with the subtype: "fuse.iofs"
    source: str
    options: str  # the mount's options, then the superblock's (as /proc/mounts shows them)


def unescape(field: bytes) -> str:
    """A mount table field with its octal escapes undone, decoded as a path."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def entries() -> list[MountEntry]:
    """The current mount table, oldest mount first (so the last match is on top)."""
    found = []
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.split()
            # id parent major:minor root mountpoint options [optional...] - fstype source super
            dash = fields.index(b"-", 6)
            fstype, source, superblock = [*fields[dash + 1 : dash + 4], b"", b""][:3]
            found.append(
                MountEntry(
                    device=fields[2].decode(),
                    mountpoint=unescape(fields[4]),
                    fstype=unescape(fstype),
                    source=unescape(source),
                    # as /proc/mounts: the mount's, then the superblock's but its rw/ro
                    options=unescape(b",".join([fields[5], *superblock.split(b",")[1:]])),
                )
            )
    return found


def find(mountpoint: Path | str) -> MountEntry | None:
    """The mount on top at exactly *mountpoint*, or None."""
    matches = [m for m in entries() if m.mountpoint == str(mountpoint)]
    return matches[-1] if matches else None


def containing(path: Path | str) -> MountEntry | None:
    """The mount that holds *path* (the longest mount point above its real path)."""
    target = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in entries():
        point = entry.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = entry
    return best
