"""The iofs mounts on this machine, seen from outside: which mount a path lies in, its
daemon's state file and log, who made it, whether its daemon died, and unmounting it.

The client commands (``iofs umount``, ``mode``, ``stats``, ``top``, ``faults``, ``log``,
through `iofs.control`) and the daemon's side (`iofs.mount`) both use it; it loads
nothing of the daemon (no pyfuse3).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import psutil

from . import mounttable
from .errors import ExitStatus, IofsError
from .mounttable import MountEntry

log = logging.getLogger(__name__)

#: The type of an iofs mount in the kernel's mount table.
FSTYPE = "fuse.iofs"
#: What a request to a FUSE mount whose daemon has gone fails with: ENOTCONN once the
#: kernel has aborted the connection; ECONNABORTED (or, over io_uring, ECANCELED) for a
#: request made before that and ended by the abort. Over the uring transport that is
#: the first access in the few milliseconds after the daemon died: the kernel aborts
#: the connection only when the last reference to /dev/fuse goes, and the dead daemon's
#: io_uring commands hold one until its ring is torn down (docs/troubleshooting.md).
DEAD_CONNECTION = frozenset({errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED})


# -- where a mount's state lives -------------------------------------------------------
def runtime_dir() -> Path:
    """Per-user directory for daemon state files and background logs."""
    if os.geteuid() == 0:
        base = Path("/run/iofs")
    elif "XDG_RUNTIME_DIR" in os.environ:
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "iofs"
    else:
        base = Path(f"/tmp/iofs-{os.geteuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def escaped_mountpoint(mountpoint: Path) -> str:
    """*mountpoint* as a readable file name, the way ``systemd-escape --path`` does it:
    ``/srv/my mnt`` -> ``srv-my\\x20mnt``. Slashes become ``-``; a byte that is not a
    letter, digit, ``_``, ``.`` or ``:`` (and a leading ``.``) becomes ``\\xNN``, so two
    mountpoints never share a name (`unescaped_mountpoint` undoes it)."""
    raw = os.fsencode(mountpoint).strip(b"/")
    if not raw:
        return "-"
    out = []
    for index, byte in enumerate(raw):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_:" or (char == "." and index)):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescaped_mountpoint(name: str) -> Path:
    """The mountpoint a state or log file name (without its suffix) was made from."""
    if name == "-":
        return Path("/")
    raw = re.sub(
        rb"\\x([0-9a-f]{2})|-",
        lambda m: bytes([int(m[1], 16)]) if m[1] else b"/",
        name.encode(),
    )
    return Path(os.fsdecode(b"/" + raw))


def state_path(mountpoint: Path) -> Path:
    """Where the daemon serving *mountpoint* keeps its pid and settings (JSON)."""
    return runtime_dir() / (escaped_mountpoint(mountpoint) + ".json")


def default_log_path(mountpoint: Path) -> Path:
    return state_path(mountpoint).with_suffix(".log")


def read_state(mountpoint: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(state_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None
    return state


def find_mount(mountpoint: Path) -> MountEntry | None:
    return mounttable.find(mountpoint)


def mount_owner(entry: MountEntry) -> int | None:
    """The uid of the user who made a FUSE mount (its ``user_id=`` option), or None."""
    for option in entry.options.split(","):
        if option.startswith("user_id="):
            return int(option.removeprefix("user_id="))
    return None


def containing_mount(path: Path) -> Path:
    """The mountpoint of the iofs mount that *path* lies in: any path inside a mount
    names it, as for df. IofsError if *path* does not exist (BAD_PATH) or lies in no
    iofs mount (MOUNT_CONFLICT). A path in a mount whose daemon died is found too."""
    try:
        os.stat(path)
    except OSError as exc:
        # DEAD_CONNECTION: a dead mount; EACCES: a FUSE mount without allow_other,
        # closed to all but its owner. Both are found in the table below;
        # the caller says more.
        if exc.errno not in DEAD_CONNECTION | {errno.EACCES}:
            raise IofsError(f"{path}: {exc.strerror}", ExitStatus.BAD_PATH) from None
    real = Path(os.path.realpath(path))
    best = mounttable.containing(real)
    if best is not None and best.fstype == FSTYPE:
        return Path(best.mountpoint)
    if best is not None and Path(best.mountpoint) == real:
        raise IofsError(
            f"{real} is not an iofs mount (it is {best.fstype})", ExitStatus.MOUNT_CONFLICT
        )
    raise IofsError(f"{path} is not in an iofs mount", ExitStatus.MOUNT_CONFLICT)


def is_disconnected(mountpoint: Path) -> bool:
    """True if *mountpoint* is a FUSE mount whose daemon has gone (`DEAD_CONNECTION`)."""
    try:
        # statfs, not stat: the kernel answers stat from its attribute cache for up to
        # --attr-timeout after the daemon died, but always sends STATFS to the daemon.
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in DEAD_CONNECTION
    return False


# -- mounting --------------------------------------------------------------------------


# -- unmounting ------------------------------------------------------------------------
def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 10.0) -> str:
    """Unmount an iofs mount, also when its daemon has died. Returns what was done.

    Waits up to *timeout* seconds for the daemon to exit. A busy mount is refused, or
    with *lazy* detached at once: its daemon serves the files still open on it and
    exits after the last close, which nobody waits for.
    """
    mountpoint = containing_mount(mountpoint)
    entry = find_mount(mountpoint)
    owner = mount_owner(entry) if entry is not None else None
    if owner not in (None, os.getuid()) and os.geteuid() != 0:
        # fusermount3 would say "entry for ... not found" or suggest --lazy: say it plainly.
        raise IofsError(
            f"only root or the user who mounted {mountpoint} (uid {owner}) may unmount it",
            ExitStatus.PERMISSION,
        )
    dead = is_disconnected(mountpoint)
    # Read before unmounting: a daemon removes its state file on the way out, and
    # `iofs umount` must still know which process to wait for.
    state = read_state(mountpoint)
    # A dead mount can only be detached. --lazy tries a normal unmount first, to know
    # whether the daemon exits now or only once the mount's users let go of it.
    result = _fusermount(mountpoint, detach=dead)
    busy = lazy and not dead and result.returncode != 0
    if busy:
        result = _fusermount(mountpoint, detach=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise IofsError(
            f"cannot unmount {mountpoint}: {reason} (try --lazy)", ExitStatus.MOUNT_CONFLICT
        )
    if busy:
        # The daemon goes on serving the files still open on the detached mount; it
        # exits, and removes its state file, when the kernel lets go after the last close.
        return f"detached {mountpoint}: its daemon exits once the files open on it are closed"
    if state is not None:
        _wait_for_daemon(state, timeout)
        if read_state(mountpoint) == state:  # a killed daemon could not remove it
            with contextlib.suppress(OSError):
                state_path(mountpoint).unlink()
    if dead:
        log = (state or {}).get("log")
        kept = f"; its log: {log}" if log else ""  # the daemon never removed it
        return f"cleaned up {mountpoint} (its daemon had died{kept})"
    return f"unmounted {mountpoint}"


def _fusermount(mountpoint: Path, detach: bool) -> subprocess.CompletedProcess[str]:
    command = ["fusermount3", "-u", *(["-z"] if detach else []), str(mountpoint)]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise IofsError(
            "fusermount3 not found: install the fuse3 package", ExitStatus.UNAVAILABLE
        ) from None


def _daemon_process(state: dict[str, object]) -> psutil.Process | None:
    pid, started = state.get("pid"), state.get("started")
    if not isinstance(pid, int) or not isinstance(started, float):
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01:
            return None  # the pid has been reused
    except psutil.Error:
        return None
    return process


def _wait_for_daemon(state: dict[str, object], timeout: float) -> None:
    process = _daemon_process(state)
    if process is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.02)
    log.warning("daemon %d still running %.0f s after unmount", process.pid, timeout)
