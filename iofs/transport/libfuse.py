"""The pyfuse3 transport: libfuse 3 reads /dev/fuse, pyfuse3 runs the handlers on trio."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

import pyfuse3

from ..connection import BackgroundLimits


class Pyfuse3Transport:
    name = "pyfuse3"
    # libfuse 3.14 can negotiate neither (its do_init knows no such capability).
    direct_io_allows_mmap = False
    kills_privileges = False

    def __init__(self) -> None:
        self._mounted = False
        self.failure: str | None = None  # libfuse ends its loop on errors by itself

    def passthrough_refusal(self, writeback_cache: bool) -> str | None:
        return (
            "the pyfuse3 transport cannot use FUSE passthrough (libfuse 3.14 negotiates "
            "no FUSE_PASSTHROUGH and has no backing-file ioctl): mount with --transport dev"
        )

    def open_backing(self, fd: int) -> int:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def close_backing(self, backing_id: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def mount(self, fs: pyfuse3.Operations, mountpoint: Path, options: set[str]) -> None:
        """Raises RuntimeError; libfuse says why on stderr (see `iofs.mount`)."""
        pyfuse3.init(fs, str(mountpoint), options)
        self._mounted = True

    async def serve(self, max_tasks: int) -> None:
        # Request tasks, once started, stay: with pyfuse3's default (min_tasks=1) a busy
        # daemon started a task for one request and ended it after, every time.
        await pyfuse3.main(min_tasks=max_tasks, max_tasks=max_tasks)

    def terminate(self) -> None:
        pyfuse3.terminate()

    def close(self, unmount: bool) -> None:
        if self._mounted:
            pyfuse3.close(unmount=unmount)
            self._mounted = False

    def statistics(self) -> Mapping[str, int]:
        return {}

    def background_limits(self, wanted: int) -> BackgroundLimits | None:
        return None  # libfuse 3.14 sends 0 in INIT: the kernel's 12 stay
