"""The control protocol: what a live mount's daemon and its clients say to each other.

A mount is controlled through extended attributes on its root, which the daemon
(`iofs.control_server`, reached from `iofs.fs`) answers itself and never passes to the
backing directory. The clients are ``iofs mode``, ``stats``, ``top``, ``faults`` and
``log`` (`iofs.control`), and anyone with ``getfattr``/``setfattr``. This module holds
the names, the shape of the values and the limits, for both sides; it imports neither
(nor pyfuse3), so that a client loads nothing of the daemon.

| xattr | read | write (owner and root) |
|---|---|---|
| ``iofs.statistics`` | a statistics snapshot, JSON (`iofs.stats.Snapshot`) | refused (EPERM) |
| ``iofs.mode`` | the mount's setting and history, JSON (`ModeValue`) | a setting: switch |
| ``iofs.faults`` | fault injection and its counters, JSON (`FaultsValue`) | a fault spec |

None of them is listed by listxattr, so they do not show up in copies or comparisons.
Reads are allowed to whoever may list the root. A write the daemon refuses fails with
EINVAL (a setting it cannot parse), EPERM (not the owner or root), EOPNOTSUPP (an engine
that cannot run here; the reason is then in ``refused`` of ``iofs.mode``) or EBUSY
(files are mapped shared; likewise).

On a read-only mount the kernel refuses every setxattr before the daemon sees it, so a
write is sent as a read of the attribute named ``NAME=VALUE`` (`read_only_request`):
the daemon does the same checks and answers an empty value.
"""

from __future__ import annotations

from typing import TypedDict

#: Read-only: the statistics as JSON.
STATISTICS_XATTR = b"iofs.statistics"
#: Reads as the current mode setting (JSON); writing a setting
#: (``NAME[,engine=E][,direct=on|off][,cache=kernel|none]``) switches to it.
MODE_XATTR = b"iofs.mode"
#: Reads as the fault-injection setting (JSON); writing a fault spec (see `iofs.faults`,
#: ``off`` to stop) sets it.
FAULTS_XATTR = b"iofs.faults"
CONTROL_XATTRS = frozenset({STATISTICS_XATTR, MODE_XATTR, FAULTS_XATTR})
#: The control xattrs that take a write (and so a ``NAME=VALUE`` read).
WRITABLE_XATTRS = frozenset({MODE_XATTR, FAULTS_XATTR})
#: Between NAME and VALUE in a write sent as a read (see the module docstring).
CONTROL_SEPARATOR = b"="
#: The longest xattr name the kernel passes on (Linux's XATTR_NAME_MAX): it bounds a
#: write sent as a read.
XATTR_NAME_MAX = 255
#: The most an xattr value may hold (Linux's XATTR_SIZE_MAX): the statistics fit in it.
XATTR_SIZE_MAX = 65536


def read_only_request(name: bytes, value: bytes) -> bytes:
    """The xattr name whose read writes *value* to the control xattr *name*."""
    return name + CONTROL_SEPARATOR + value


def write_in_read(name: bytes) -> tuple[bytes, bytes] | None:
    """(control xattr, value) if reading *name* is a write sent as a read, else None."""
    control, separator, value = name.partition(CONTROL_SEPARATOR)
    if separator and control in WRITABLE_XATTRS:
        return control, value
    return None


class ModeSwitch(TypedDict):
    mode: str  # the setting's spec
    at: float  # time.time() of the switch


class Refusal(TypedDict):
    spec: str
    reason: str
    at: float


class ModeValue(TypedDict):
    """What ``iofs.mode`` reads as (JSON), besides the other fields of
    `iofs.modes.Setting` (mode, engine, direct, metadata, caching)."""

    spec: str
    description: str
    #: Files opened from now on are handed to the kernel (FUSE passthrough).
    passthrough: bool
    writeback_cache: bool
    #: False: files opened with direct_io cannot be mapped shared in this setting.
    shared_mmap: bool
    #: Files open now, and how many of them are passed through to the kernel.
    open_files: int
    passthrough_files: int
    history: list[ModeSwitch]
    #: The last setting the daemon refused, and why (None: none was).
    refused: Refusal | None
    #: Where the daemon logs (None: to the standard error it was started with).
    log: str | None


class FaultsValue(TypedDict):
    """What ``iofs.faults`` reads as (JSON)."""

    spec: str
    description: str
    seed: int | None
    #: Per operation, the fields of `iofs.faults.FaultCounters`.
    operations: dict[str, dict[str, int]]
