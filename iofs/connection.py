"""The FUSE connection's background limits, raised through fusectl.

Asynchronous direct I/O, readahead and writeback reach the daemon as *background*
requests, and the kernel keeps at most ``max_background`` of them in flight per
connection (12 by default; libfuse 3.14 and pyfuse3 do not ask for more in INIT). So
whatever fio's iodepth, an engine would never see more than 12 requests at once. Root
may raise the limit of a live connection in ``/sys/fs/fuse/connections/MINOR/``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Where the fusectl filesystem shows each FUSE connection, by the mount's device minor.
CONNECTIONS = Path("/sys/fs/fuse/connections")
#: The kernel's limits when the daemon does not set any (fs/fuse/inode.c).
KERNEL_MAX_BACKGROUND = 12
KERNEL_CONGESTION_THRESHOLD = 9
#: The most the kernel accepts (the limits are 16-bit in the protocol).
MAX_BACKGROUND_LIMIT = 65535


@dataclass(frozen=True)
class BackgroundLimits:
    """The connection's effective limits, and why they are what they are."""

    max_background: int
    congestion_threshold: int
    #: None if iofs set the limits; else one line saying why the kernel's stay.
    warning: str | None = None


def congestion_threshold_for(max_background: int) -> int:
    """Three quarters of *max_background*, the kernel's own ratio (12 and 9)."""
    return max(1, max_background * 3 // 4)


def set_background_limits(device: str | None, wanted: int) -> BackgroundLimits:
    """Raise the limits of the connection of the mount on *device* (``major:minor``).

    Only root may; otherwise, or if the connection cannot be found, the kernel's
    defaults stay and the result carries a one-line warning.
    """
    kernel = BackgroundLimits(KERNEL_MAX_BACKGROUND, KERNEL_CONGESTION_THRESHOLD)
    if os.geteuid() != 0:
        return BackgroundLimits(
            kernel.max_background,
            kernel.congestion_threshold,
            f"not root: the FUSE connection keeps the kernel's max_background of "
            f"{KERNEL_MAX_BACKGROUND}, so at most {KERNEL_MAX_BACKGROUND} asynchronous "
            f"requests reach the engine (mount as root for --max-background)",
        )
    if device is None:
        return BackgroundLimits(
            kernel.max_background,
            kernel.congestion_threshold,
            "the mount's device is not in /proc/self/mountinfo: max_background stays "
            f"at {KERNEL_MAX_BACKGROUND}",
        )
    directory = CONNECTIONS / device.partition(":")[2]
    try:
        if not directory.exists():
            _mount_fusectl()
        (directory / "max_background").write_text(f"{wanted}\n")
        (directory / "congestion_threshold").write_text(f"{congestion_threshold_for(wanted)}\n")
        return BackgroundLimits(
            int((directory / "max_background").read_text()),
            int((directory / "congestion_threshold").read_text()),
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        return BackgroundLimits(
            kernel.max_background,
            kernel.congestion_threshold,
            f"cannot set {directory}/max_background ({reason}): it stays at "
            f"{KERNEL_MAX_BACKGROUND}",
        )


def _mount_fusectl() -> None:
    """Mount the fusectl filesystem where it belongs (systemd usually has)."""
    with contextlib.suppress(FileExistsError):
        CONNECTIONS.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "fusectl", "fusectl", str(CONNECTIONS)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 and not os.path.ismount(CONNECTIONS):
        raise OSError(errno.ENODEV, result.stderr.strip() or "cannot mount fusectl")
