"""How FUSE requests reach the filesystem: the transports, behind one small interface.

A transport mounts, reads the kernel's requests, calls the `Filesystem` operations
(written against `pyfuse3.Operations`) and sends the replies:

- ``dev`` (the default): iofs's own reader of /dev/fuse on the trio loop
  (`iofs.transport.dev`), which negotiates what libfuse 3.14 cannot (HANDLE_KILLPRIV_V2,
  DIRECT_IO_ALLOW_MMAP, the background limit, 1 MiB requests);
- ``pyfuse3``: libfuse 3 through pyfuse3, on the trio loop;
- ``uring``: the dev transport's protocol with requests fetched and answered through
  FUSE-over-io_uring queues (`iofs.transport.uring`; Linux 6.14+, ``fuse.enable_uring``).

Transports are registered by name in `TRANSPORTS`; the filesystem reaches its transport
only through `readdir_reply`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pyfuse3
from pyfuse3 import EntryAttributes, ReaddirToken

from ..connection import BackgroundLimits
from ..errors import ExitStatus
from .listing import DirectoryListing

#: dev: the whole suite passes over it, it meets issue 12's targets that pyfuse3 misses
#: (docs/performance.md), and without root it still gets a max_background above 12.
DEFAULT_TRANSPORT = "dev"
#: The environment variable that sets the default of ``--transport``.
TRANSPORT_ENV = "IOFS_TRANSPORT"


class MountFailed(Exception):
    """The kernel or the mount helper refused the mount: one line saying why, and the
    exit status if it is not the one `iofs.mount` reads from the line."""

    def __init__(self, reason: str, status: ExitStatus | None = None) -> None:
        super().__init__(reason)
        self.status = status


class Transport(Protocol):
    """One way of carrying FUSE requests between the kernel and the filesystem."""

    name: str
    #: Why `serve` stopped although the mount is still there (its connection broke), in
    #: one line; None after an unmount or `terminate`. The daemon then detaches the mount.
    failure: str | None

    @property
    def direct_io_allows_mmap(self) -> bool:
        """Negotiated FUSE_DIRECT_IO_ALLOW_MMAP: files opened with direct_io map shared."""

    @property
    def kills_privileges(self) -> bool:
        """Negotiated HANDLE_KILLPRIV_V2: the kernel flags the writes, truncates and opens
        that must drop set-ID bits, and the transport has the filesystem drop them."""

    def passthrough_refusal(self, writeback_cache: bool) -> str | None:
        """Why this transport cannot hand files to the kernel for FUSE passthrough (the
        ``passthrough`` mode), in one line; None if it can (or may, before INIT)."""

    def open_backing(self, fd: int) -> int:
        """Register the open backing file *fd* with the kernel (FUSE_DEV_IOC_BACKING_OPEN):
        its backing id for an open reply. Raises OSError."""

    def close_backing(self, backing_id: int) -> None:
        """Unregister a backing id (FUSE_DEV_IOC_BACKING_CLOSE). Raises OSError."""

    def mount(self, fs: pyfuse3.Operations, mountpoint: Path, options: set[str]) -> None:
        """Mount *fs* at *mountpoint* (before the daemon forks). Raises MountFailed."""

    async def serve(self, max_tasks: int) -> None:
        """Serve requests on the trio loop until unmounted or `terminate`d, or until the
        connection breaks (then `failure` says how)."""

    def terminate(self) -> None:
        """Stop serving soon (from the loop): `serve` returns."""

    def close(self, unmount: bool) -> None:
        """Let go of the kernel connection; with *unmount*, detach the mount lazily."""

    def statistics(self) -> Mapping[str, int]:
        """The transport's own counters and negotiated values (plain integers)."""

    def background_limits(self, wanted: int) -> BackgroundLimits | None:
        """The limits this transport asks for in INIT for *wanted* background requests,
        or None if it leaves them to the kernel (then iofs sets them through fusectl)."""


def readdir_reply(
    token: ReaddirToken | DirectoryListing, name: bytes, attr: EntryAttributes, next_id: int
) -> bool:
    """Add one entry to a directory listing; False once the kernel's buffer is full."""
    if type(token) is DirectoryListing:
        return token.add(name, attr, next_id)
    return pyfuse3.readdir_reply(token, name, attr, next_id)  # type: ignore[arg-type]


def default_transport() -> str:
    return os.environ.get(TRANSPORT_ENV) or DEFAULT_TRANSPORT


TRANSPORT_NAMES = ("pyfuse3", "dev", "uring")


def passthrough_unavailable(name: str | None = None) -> str | None:
    """Why the passthrough mode cannot be mounted over transport *name* (None: the
    default one) here, in one line; None if it can (as far as is known before INIT)."""
    return create_transport(name or default_transport()).passthrough_refusal(False)


def create_transport(name: str, *, max_background: int | None = None) -> Transport:
    """A transport by name (one of `TRANSPORT_NAMES`); raises KeyError for others."""
    if name == "pyfuse3":
        from .libfuse import Pyfuse3Transport

        return Pyfuse3Transport()
    if name == "dev":
        from .dev import DevTransport

        return DevTransport(max_background=max_background)
    if name == "uring":
        from .uring import UringTransport

        return UringTransport(max_background=max_background)
    raise KeyError(name)
