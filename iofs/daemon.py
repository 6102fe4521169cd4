"""An iofs daemon as a child process, for the harnesses (``iofs bench``, ``soak``,
``switch``, the scripts) and the tests: `start_daemon` runs ``iofs mount --foreground``
and returns once the kernel shows the mount; `stop_daemon` unmounts and reaps it;
`mounted` does both around a block. `stop_peer_daemon` stops a FUSE daemon that is not
iofs (the comparison scripts' peers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import IofsError
from .harness import start_child
from .live_mounts import find_mount
from .mount import MountOptions


def start_daemon(
    opts: MountOptions,
    program: Sequence[str] = (sys.executable, "-m", "iofs"),
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start ``iofs mount --foreground`` as a child; return once the kernel shows the mount.

    *program* is what runs ``iofs`` (tests substitute a daemon with an injected fault).
    The caller owns the child: `stop_daemon` unmounts and reaps it.
    """
    command = [*program, "mount", "--foreground", "--mode", opts.mode]
    if opts.engine is not None:
        command += ["--engine", opts.engine]
    if opts.caching is not None:
        command += ["--cache", opts.caching]
    config = opts.engine_config
    if config.direct is not None:
        command.append("--direct" if config.direct else "--no-direct")
    command += ["--queue-depth", str(config.queue_depth), "--workers", str(config.workers)]
    for option in sorted(opts.fuse_options):
        command += ["-o", option]
    command += ["--attr-timeout", str(opts.attr_timeout)]
    command += ["--entry-timeout", str(opts.entry_timeout)]
    if opts.debug:
        command.append("--debug")
    if opts.log_file is not None:
        command += ["--log", str(opts.log_file)]
    if not opts.statistics:
        command.append("--no-statistics")
    if opts.writeback_cache:
        command.append("--writeback-cache")
    if opts.allow_fallback:
        command.append("--allow-fallback")
    if opts.faults != "off":
        command.append(f"--faults={opts.faults}")  # '=': a spec may start with '-'
    if opts.fd_budget is not None:
        command += ["--fd-budget", str(opts.fd_budget)]
    if not opts.file_handles:
        command.append("--no-file-handles")
    if opts.max_background is not None:
        command += ["--max-background", str(opts.max_background)]
    command += ["--transport", opts.transport]
    if opts.stats_log is not None:
        command += ["--stats-log", str(opts.stats_log)]
        command += ["--stats-interval", str(opts.stats_interval)]
    command += [str(opts.backing), str(opts.mountpoint)]
    mountpoint = Path(os.path.realpath(opts.mountpoint))
    daemon = start_child(
        lambda: subprocess.Popen(command, stdin=subprocess.DEVNULL),
        lambda child: stop_daemon(child, mountpoint),
    )
    try:
        deadline = time.monotonic() + timeout
        while find_mount(mountpoint) is None:
            if daemon.poll() is not None:
                raise IofsError(f"iofs mount exited with status {daemon.returncode}")
            if time.monotonic() > deadline:
                raise IofsError(f"{mountpoint} not mounted after {timeout:.0f} s")
            time.sleep(0.01)
    except BaseException:
        stop_daemon(daemon, mountpoint)
        raise
    return daemon


@contextlib.contextmanager
def mounted(opts: MountOptions) -> Iterator[subprocess.Popen[bytes]]:
    """An iofs daemon serving *opts.mountpoint* for the block, always stopped after it."""
    daemon = start_daemon(opts)
    try:
        yield daemon
    finally:
        stop_daemon(daemon, Path(os.path.realpath(opts.mountpoint)))


def stop_daemon(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """Unmount *mountpoint* and reap *daemon*, escalating until both are done."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)  # unmounts cleanly, see _serve
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    if find_mount(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def stop_peer_daemon(
    daemon: subprocess.Popen[Any], mountpoint: Path, timeout: float = 30.0
) -> None:
    """Unmount *mountpoint* and reap *daemon*, a FUSE daemon that exits once unmounted;
    killed if it lingers past *timeout*, and the mount detached if it stays."""
    mountpoint = Path(os.path.realpath(mountpoint))  # as the mount table has it
    if find_mount(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    if find_mount(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
