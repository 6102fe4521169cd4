"""User-facing failures and the exit statuses the CLI gives them."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What ``iofs`` exits with: each kind of failure has its own status (see the README)."""

    OK = 0
    #: Something that was attempted failed: fio, an unmount, the daemon, a soak criterion.
    FAILED = 1
    #: The command line itself is wrong: unknown command or option, malformed value.
    USAGE = 2
    #: The backing directory or mountpoint is missing or not a directory.
    BAD_PATH = 3
    #: The mount table is in the way: already mounted, not mounted, busy, or the
    #: mountpoint and the backing directory lie inside each other.
    MOUNT_CONFLICT = 4
    #: An unknown mode, engine or cache setting, or a malformed mode setting.
    BAD_SETTING = 5
    #: This machine lacks what is needed: /dev/fuse, fusermount3, fio, or the kernel
    #: feature an engine needs (io_uring disabled, libaio missing).
    UNAVAILABLE = 6
    #: The user may not do this: no access to /dev/fuse or to the mountpoint, not the
    #: mount's owner.
    PERMISSION = 7
    #: Interrupted with Ctrl-C (128 + SIGINT, as shells report it).
    INTERRUPTED = 130


class IofsError(Exception):
    """A failure the user can act on: the CLI prints it as one line and exits with *status*."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.FAILED) -> None:
        super().__init__(message)
        self.status = status
