"""Modes: named I/O strategies modelled on real filesystems.

A mode says which engine serves data (and whether through O_DIRECT backing fds), how
metadata updates are served, and what the kernel may cache. A *setting* is a mode with
the user's overrides applied; it is written as ``NAME[,engine=E][,direct=on|off]
[,cache=kernel|none]``, the form `iofs mode` and the ``iofs.mode`` control attribute take.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .backends import ENGINES

Metadata = Literal["inline", "queue"]


@dataclass(frozen=True)
class Caching:
    """What the kernel may keep for itself instead of asking the daemon."""

    name: str
    #: Opens get FOPEN_DIRECT_IO: reads and writes bypass the mount's page cache, so
    #: every one reaches the daemon at the size the application used.
    direct_io: bool
    #: Cached pages of a file survive its next open (FOPEN_KEEP_CACHE).
    keep_cache: bool
    #: Seconds the kernel may trust attributes and name lookups; None means the mount's
    #: ``--attr-timeout``/``--entry-timeout``.
    timeout: float | None
    description: str


#: Why shared mmap and direct_io opens do not mix on the pyfuse3 transport, in one
#: sentence for `iofs modes`, `iofs mode` and the mode's description. The kernel
#: (fs/fuse/file.c, fuse_file_mmap) refuses every MAP_SHARED mapping, read-only ones
#: too, of a file opened with FOPEN_DIRECT_IO with ENODEV unless the daemon negotiated
#: FUSE_DIRECT_IO_ALLOW_MMAP at INIT; libfuse 3.14, which pyfuse3 runs on, cannot.
SHARED_MMAP_LIMIT = (
    "on the pyfuse3 transport, shared mmap (MAP_SHARED, what SQLite's WAL mode and LMDB "
    "use) of a file opened in this setting fails with ENODEV, because libfuse 3.14 cannot "
    "negotiate FUSE_DIRECT_IO_ALLOW_MMAP (mount with --transport dev for it); a switch "
    "into it while a file on the mount is mapped shared is refused"
)

CACHINGS: dict[str, Caching] = {
    "kernel": Caching(
        "kernel",
        direct_io=False,
        keep_cache=False,
        timeout=None,
        description="page cache on the mount, attributes and lookups cached for the "
        "mount's timeouts: what a normal FUSE filesystem gets",
    ),
    "none": Caching(
        "none",
        direct_io=True,
        keep_cache=False,
        timeout=0.0,
        description="no page cache on the mount (direct_io on every open) and no "
        "attribute or lookup caching: every request reaches the daemon; " + SHARED_MMAP_LIMIT,
    ),
}


@dataclass(frozen=True)
class Mode:
    name: str
    engine: str
    direct: bool
    metadata: Metadata
    caching: str
    #: What real system or technique the mode models.
    models: str
    #: How that maps onto iofs, and where the analogy stops.
    mapping: str
    #: What a user should expect to see in `iofs top` and fio.
    expect: str
    #: Files opened in this mode are handed to the kernel (FUSE passthrough): it reads
    #: and writes the backing file itself; the engine serves only the opens it cannot
    #: hand over (see docs/passthrough.md).
    passthrough: bool = False


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode(
            "xfs",
            engine="io_uring",
            direct=True,
            metadata="inline",
            caching="kernel",
            models="XFS's data path: asynchronous direct I/O (io_submit/io_uring) that "
            "overwrites in place, metadata changes logged inline.",
            mapping="Data goes to the kernel through io_uring (engine=aio for Linux AIO) "
            "with O_DIRECT backing fds for aligned requests; unaligned reads are bounced, "
            "unaligned writes buffered. Metadata is served inline by the event loop. The "
            "backing filesystem is still whatever it is: this mode models the I/O path, "
            "not XFS's allocator or journal.",
            expect="Low loop lag under data load; deep in-flight counts at high fio "
            "iodepth; direct_ops in the engine statistics; backing-file reads that miss "
            "the backing page cache.",
        ),
        Mode(
            "btrfs",
            engine="threads",
            direct=False,
            metadata="queue",
            caching="kernel",
            models="The event-driven path: Btrfs hands work to kernel worker threads and "
            "applies metadata changes through ordered queues (delayed items, "
            "transactions).",
            mapping="Data runs on a thread pool whose completions come back to the loop "
            "as events; creates, unlinks, renames, setattr, links, symlinks, mkdir/rmdir "
            "and xattr changes go through one ordered queue served by a dedicated task, "
            "one at a time in arrival order, while lookups and reads go on. Copy-on-write "
            "and checksums are Btrfs's own and are not modelled.",
            expect="A thread hand-off (~100 µs) on every data request, so small cached "
            "reads are slower than blocking; loop lag stays low under slow I/O; metadata "
            "updates show queueing latency under a create storm.",
        ),
        Mode(
            "nonblocking",
            engine="nowait",
            direct=False,
            metadata="inline",
            caching="kernel",
            models="Non-blocking I/O as ClickHouse's pread_threadpool does it: "
            "preadv2/pwritev2(RWF_NOWAIT) first, a thread only when it would block.",
            mapping="Page-cache hits are served inline on the loop; misses (EAGAIN) and "
            "operations the filesystem cannot do without blocking (EOPNOTSUPP, e.g. "
            "buffered writes on ext4) go to worker threads.",
            expect="Hot reads as fast as blocking; the nowait hit ratio (nowait_hits vs "
            "fallbacks) tells how much of the working set is cached.",
        ),
        Mode(
            "blocking",
            engine="blocking",
            direct=False,
            metadata="inline",
            caching="kernel",
            models="What most Python FUSE filesystems do: plain system calls on the one "
            "event-loop thread.",
            mapping="pread/pwrite/fsync inline; every request waits for the one before "
            "it to leave the kernel.",
            expect="The baseline: fine while the data is cached; under cold or slow I/O "
            "the loop lag grows and metadata requests queue behind data.",
        ),
        Mode(
            "uncached",
            engine="blocking",
            direct=False,
            metadata="inline",
            caching="none",
            models="An experiment setting rather than a filesystem: the kernel caches "
            "nothing, so every application request reaches the daemon.",
            mapping="The blocking data path with direct_io on every open and zero "
            "attribute/lookup timeouts.",
            expect="One daemon request per application read or write, at the "
            "application's size; many more getattr/lookup requests. Mapped files: "
            + SHARED_MMAP_LIMIT
            + ".",
        ),
        Mode(
            "passthrough",
            engine="blocking",
            direct=False,
            metadata="inline",
            caching="kernel",
            models="The physical limit of a FUSE data path: FUSE passthrough (Linux 6.9), "
            "as libfuse's passthrough_hp uses it.",
            mapping="On open the daemon registers the backing file with the kernel "
            "(FUSE_DEV_IOC_BACKING_OPEN) and answers FOPEN_PASSTHROUGH: from then on the "
            "kernel reads, writes and maps that file itself. Metadata still goes through "
            "the event loop. Needs --transport dev, root and no --writeback-cache. A live "
            "switch applies to files opened after it; a file open in another mode keeps "
            "it for every open until its last close (the kernel allows one I/O mode per "
            "file), served by the blocking engine.",
            expect="Native data speed; no reads or writes in the daemon's statistics "
            "(passthrough_opens and backing_files count what it handed over); opens, "
            "getattr and lookups as in any mode.",
            passthrough=True,
        ),
    )
}

DEFAULT_MODE = "blocking"


class BadSetting(ValueError):
    """A mode setting that does not parse or names something unknown (one line)."""


@dataclass(frozen=True)
class Setting:
    """A mode with the user's overrides applied: what a mount actually does."""

    mode: str
    engine: str
    direct: bool | None  # None: the engine's own default
    metadata: Metadata
    caching: str
    #: Files opened now are handed to the kernel (the mode's own, never overridden).
    passthrough: bool = False

    @property
    def spec(self) -> str:
        """The shortest text that `parse_setting` turns back into this setting."""
        base = MODES[self.mode]
        parts = [self.mode]
        if self.engine != base.engine:
            parts.append(f"engine={self.engine}")
        if self.direct != _mode_direct(base, self.engine):
            parts.append(f"direct={'on' if self.direct else 'off'}")
        if self.caching != base.caching:
            parts.append(f"cache={self.caching}")
        return ",".join(parts)

    def describe(self) -> str:
        direct = {True: "O_DIRECT backing fds", False: "buffered backing fds", None: ""}
        parts = [f"engine {self.engine}", direct[self.direct], f"metadata {self.metadata}"]
        parts.append(f"cache {self.caching}")
        if self.passthrough:
            parts[0] = f"engine {self.engine} for files not passed through to the kernel"
        return f"{self.mode} ({', '.join(p for p in parts if p)})"


def _mode_direct(mode: Mode, engine: str) -> bool | None:
    """A mode's direct choice; with another engine, that engine's default."""
    return mode.direct if engine == mode.engine else None


def resolve(
    mode: str,
    *,
    engine: str | None = None,
    direct: bool | None = None,
    caching: str | None = None,
) -> Setting:
    """*mode* with overrides. Raises `BadSetting` for unknown names."""
    if mode not in MODES:
        raise BadSetting(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if engine is not None and engine not in ENGINES:
        raise BadSetting(f"unknown engine {engine!r} (known: {', '.join(sorted(ENGINES))})")
    if caching is not None and caching not in CACHINGS:
        raise BadSetting(f"unknown cache setting {caching!r} (known: {', '.join(CACHINGS)})")
    base = MODES[mode]
    setting = Setting(
        mode=mode,
        engine=base.engine,
        direct=base.direct,
        metadata=base.metadata,
        caching=base.caching,
        passthrough=base.passthrough,
    )
    if engine is not None and engine != base.engine:
        setting = replace(setting, engine=engine, direct=None)
    if direct is not None:
        setting = replace(setting, direct=direct)
    if caching is not None:
        setting = replace(setting, caching=caching)
    return setting


_SWITCHES = {"on": True, "off": False, "1": True, "0": False, "yes": True, "no": False}
MAX_SPEC = 200  # bytes: a longer control write is garbage, not a setting


def parse_setting(text: str) -> Setting:
    """``NAME[,engine=E][,direct=on|off][,cache=kernel|none]`` -> a `Setting`."""
    if len(text) > MAX_SPEC:
        raise BadSetting(f"a mode setting is at most {MAX_SPEC} characters")
    name, *options = (part.strip() for part in text.strip().split(","))
    overrides: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("engine", "direct", "cache") or key in overrides:
            raise BadSetting(
                f"bad mode option {option!r} (expected engine=NAME, direct=on|off, "
                "cache=kernel|none, each at most once)"
            )
        overrides[key] = value
    direct: bool | None = None
    if "direct" in overrides:
        if overrides["direct"] not in _SWITCHES:
            raise BadSetting(f"direct must be on or off, not {overrides['direct']!r}")
        direct = _SWITCHES[overrides["direct"]]
    return resolve(
        name, engine=overrides.get("engine"), direct=direct, caching=overrides.get("cache")
    )
