"""Dropping set-user-ID and set-group-ID bits on writes the kernel does not check.

Before a write to a file opened without FOPEN_DIRECT_IO, the FUSE kernel module calls
``file_remove_privs``: it asks the daemon for ``security.capability`` (one GETXATTR
request per write, sent under the inode lock) and, if the writer is not privileged,
clears set-ID bits with a SETATTR. Files that iofs opens with FOPEN_DIRECT_IO take the
kernel's direct-write path, which skips that check (it only sets FUSE_WRITE_KILL_SUIDGID,
which libfuse 3.14 and pyfuse3 do not pass on). For those files iofs drops the bits
itself, before the write, with the rule of the kernel's ``setattr_should_drop_suidgid``:

- only regular files, and nothing when the writer has CAP_FSETID;
- set-user-ID always;
- set-group-ID if the group may execute the file, or if the writer is not in its group.

``security.capability`` needs nothing here: the daemon's own write to the backing file
makes the backing filesystem remove it (``file_remove_privs`` removes it whoever writes).
The writer is whoever opened the file; its groups and capabilities are read once, at
open, from ``/proc/PID/status``.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

#: The capability that lets a writer keep set-ID bits (linux/capability.h).
CAP_FSETID = 4


@dataclass(frozen=True, slots=True)
class Writer:
    """The credentials of a process that opened a file for writing."""

    gid: int  # its filesystem gid
    groups: frozenset[int]  # its supplementary groups
    fsetid: bool  # it has CAP_FSETID

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def writer_of(pid: int, gid: int) -> Writer:
    """The writer *pid* with filesystem gid *gid*, as ``/proc/PID/status`` shows it.

    If the process is gone already, it is taken for one without privileges or
    supplementary groups: that drops the bits in every case where the kernel might.
    """
    groups: frozenset[int] = frozenset()
    fsetid = False
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    groups = frozenset(int(g) for g in line.split()[1:])
                elif line.startswith(b"CapEff:"):
                    fsetid = bool(int(line.split()[1], 16) >> CAP_FSETID & 1)
    except (OSError, ValueError):
        pass
    return Writer(gid, groups, fsetid)


def bits_to_drop(st_mode: int, st_gid: int, writer: Writer) -> int:
    """The set-ID bits a write by *writer* clears on a node with *st_mode*, *st_gid*."""
    if not st_mode & (stat.S_ISUID | stat.S_ISGID) or writer.fsetid:
        return 0
    if not stat.S_ISREG(st_mode):
        return 0
    drop = st_mode & stat.S_ISUID
    if st_mode & stat.S_ISGID and (st_mode & stat.S_IXGRP or not writer.in_group(st_gid)):
        drop |= stat.S_ISGID
    return drop
