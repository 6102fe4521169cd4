"""Which processes map files of a mount shared: a scan of ``/proc/*/maps``.

The daemon asks before it switches into a setting whose opens get FOPEN_DIRECT_IO on
a transport that cannot negotiate FUSE_DIRECT_IO_ALLOW_MMAP (see "Mapped files and
cache=none" in docs/modes-and-engines.md): a mapping made before such a switch would go
on serving the page cache while reads and writes bypass it.

A line of ``/proc/PID/maps`` names the device (``major:minor`` in hex) and inode of
the mapped file, and its fourth permission character is ``s`` for every MAP_SHARED
mapping, writable or not (the kernel's VM_MAYSHARE, which is what it refuses on a
direct_io file). Reading another user's maps needs root (PTRACE_MODE_READ): those
processes are counted as unreadable, not guessed at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SharedMapping:
    pid: int
    command: str
    path: str  # as that process sees it; " (deleted)" if unlinked since


@dataclass(frozen=True)
class MappingScan:
    """Shared mappings of one device, and how many processes could not be looked at."""

    mappings: tuple[SharedMapping, ...]
    unreadable: int

    def describe(self, limit: int = 3) -> str:
        """One line naming the first *limit* mappings (one per process and path)."""
        shown = [f"pid {m.pid} ({m.command}) {m.path}" for m in self.mappings[:limit]]
        rest = len(self.mappings) - limit
        return ", ".join(shown) + (f" and {rest} more" if rest > 0 else "")


def parse_device(text: str) -> tuple[int, int]:
    """``major:minor`` (decimal, as in /proc/self/mountinfo) -> (major, minor)."""
    major, _, minor = text.partition(":")
    return int(major), int(minor)


def _maps_lines(pid_dir: Path) -> Iterator[str]:
    with open(pid_dir / "maps", encoding="utf-8", errors="surrogateescape") as maps:
        yield from maps


def _command(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text(errors="replace").strip()
    except OSError:
        return "?"


def shared_mappings(device: tuple[int, int], proc: Path = Path("/proc")) -> MappingScan:
    """Every MAP_SHARED mapping of a file on *device*, in every process we may read.

    Blocking (a process's maps lock may be held by a page fault waiting for this very
    daemon): call it from a worker thread, never on the event loop.
    """
    wanted = f"{device[0]:02x}:{device[1]:02x}"
    found: list[SharedMapping] = []
    unreadable = 0
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid_dir = Path(entry.path)
        seen: set[str] = set()
        try:
            for line in _maps_lines(pid_dir):
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) < 5 or fields[3] != wanted or fields[1][3:4] != "s":
                    continue
                path = fields[5] if len(fields) == 6 else f"inode {fields[4]}"
                if path not in seen:
                    seen.add(path)
                    found.append(SharedMapping(int(entry.name), _command(pid_dir), path))
        except FileNotFoundError:
            continue  # the process exited
        except PermissionError:
            unreadable += 1
        except ProcessLookupError:
            continue
    return MappingScan(tuple(found), unreadable)
