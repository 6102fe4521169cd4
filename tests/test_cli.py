"""The command line as a user meets it: background mounts, unmounting, signals, errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from iofs.backends import ENGINES
from iofs.modes import MODES
from iofs.mount import default_log_path, find_mount, is_disconnected, state_path

from .conftest import Mount, MountFactory, needs_fuse, scratch_dir

IOFS = [sys.executable, "-m", "iofs"]


def iofs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOFS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    """A backing directory and a mountpoint; anything left mounted is cleaned up."""
    base = scratch_dir("iofs-cli-")
    backing, mountpoint = base / "backing", base / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    try:
        yield backing, mountpoint
    finally:
        state = state_path(mountpoint)
        pid = json.loads(state.read_text())["pid"] if state.exists() else None
        if find_mount(mountpoint) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        if pid is not None and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
        state.unlink(missing_ok=True)
        default_log_path(mountpoint).unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def daemon_pid(mountpoint: Path) -> int:
    pid = json.loads(state_path(mountpoint).read_text())["pid"]
    assert isinstance(pid, int)
    return pid


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.02)
    return False


@needs_fuse
def test_background_mount_serves_at_once_and_umount_stops_the_daemon(
    dirs: tuple[Path, Path],
) -> None:
    backing, mountpoint = dirs
    (backing / "hello").write_text("world")
    result = iofs("mount", str(backing), str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert (mountpoint / "hello").read_text() == "world"  # no waiting needed
    again = iofs("mount", str(backing), str(mountpoint))
    assert (again.returncode, again.stderr) == (
        1,
        f"iofs: error: {mountpoint} is already an iofs mount (of {backing})\n",
    )
    entry = find_mount(mountpoint)
    assert entry is not None and entry.fstype == "fuse.iofs" and entry.source == str(backing)
    pid = daemon_pid(mountpoint)
    assert psutil.Process(pid).ppid() != os.getpid()  # detached, not our child
    result = iofs("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"iofs: unmounted {mountpoint}"
    assert find_mount(mountpoint) is None
    assert wait_gone(pid), "the daemon outlived its mount"
    assert not state_path(mountpoint).exists()
    assert (backing / "hello").read_text() == "world"


@needs_fuse
def test_umount_cleans_up_after_a_dead_daemon(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    assert iofs("mount", str(backing), str(mountpoint)).returncode == 0
    pid = daemon_pid(mountpoint)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    with pytest.raises(OSError) as info:
        os.stat(mountpoint)
    assert info.value.errno == errno.ENOTCONN
    again = iofs("mount", str(backing), str(mountpoint))
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"iofs: error: {mountpoint} is a stale mount whose daemon died: "
        f"run 'iofs umount {mountpoint}'"
    )
    result = iofs("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert "daemon had died" in result.stdout
    assert find_mount(mountpoint) is None
    assert not is_disconnected(mountpoint)


@needs_fuse
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(mount_factory: MountFactory, signum: int) -> None:
    mnt: Mount = mount_factory()
    (mnt.mountpoint / "f").write_bytes(b"kept")
    mnt.daemon.send_signal(signum)
    assert mnt.daemon.wait(timeout=15) == 0
    assert find_mount(mnt.mountpoint) is None
    assert (mnt.backing / "f").read_bytes() == b"kept"
    log = mnt.log_text()
    assert f"received {signal.Signals(signum).name}, unmounting" in log
    assert "lazily" not in log


@needs_fuse
def test_signal_with_files_still_open_detaches(mount_factory: MountFactory) -> None:
    mnt: Mount = mount_factory()
    (mnt.mountpoint / "f").write_bytes(b"kept")
    busy = os.open(mnt.mountpoint / "f", os.O_RDONLY)
    try:
        mnt.daemon.send_signal(signal.SIGTERM)
        assert mnt.daemon.wait(timeout=15) == 0
        assert find_mount(mnt.mountpoint) is None
        with pytest.raises(OSError) as info:
            os.read(busy, 4)
        assert info.value.errno == errno.ENOTCONN
    finally:
        try:
            os.close(busy)
        except OSError as exc:
            assert exc.errno == errno.ENOTCONN
    assert "detaching lazily" in mnt.log_text()
    assert (mnt.backing / "f").read_bytes() == b"kept"


@needs_fuse
def test_umount_of_a_busy_mount_says_so(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    assert iofs("mount", str(backing), str(mountpoint)).returncode == 0
    holder = subprocess.Popen(["sleep", "60"], cwd=mountpoint)
    try:
        result = iofs("umount", str(mountpoint))
        assert result.returncode == 1
        assert result.stderr.startswith(f"iofs: error: cannot unmount {mountpoint}: ")
        assert result.stderr.count("\n") == 1
        assert find_mount(mountpoint) is not None
        lazy = iofs("umount", "--lazy", str(mountpoint))
        assert lazy.returncode == 0, lazy.stderr
        assert find_mount(mountpoint) is None
    finally:
        holder.kill()
        holder.wait()


def test_bad_arguments_are_one_line_and_status_1(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    (backing / "file").touch()
    (backing / "inside").mkdir()
    cases = {
        ("mount", str(backing / "missing"), str(mountpoint)): (
            f"backing directory {backing / 'missing'}: No such file or directory"
        ),
        ("mount", str(backing / "file"), str(mountpoint)): (
            f"backing directory {backing / 'file'}: not a directory"
        ),
        ("mount", str(backing), str(backing / "file")): (
            f"mountpoint {backing / 'file'}: not a directory"
        ),
        ("mount", str(backing), str(backing / "inside")): (
            f"mountpoint {backing / 'inside'} lies inside the backing directory {backing}"
        ),
        ("mount", "--engine", "warp", str(backing), str(mountpoint)): (
            f"unknown engine 'warp' (known: {', '.join(sorted(ENGINES))})"
        ),
        ("umount", str(mountpoint)): f"{mountpoint} is not mounted",
        ("umount", "/proc"): "/proc is not an iofs mount (it is proc)",
        (
            "bench",
            "--engine",
            "warp",
        ): f"unknown engine 'warp' (known: {', '.join(sorted(ENGINES))})",
        ("bench", "--job", str(backing / "missing.fio")): (
            f"job file {backing / 'missing.fio'}: not found"
        ),
    }
    for args, message in cases.items():
        result = iofs(*args)
        assert (result.returncode, result.stderr) == (1, f"iofs: error: {message}\n"), args
        assert result.stdout == ""


@needs_fuse
def test_unknown_fuse_option_is_one_line(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    result = iofs("mount", "-o", "bogus", str(backing), str(mountpoint))
    assert result.returncode == 1
    assert result.stderr == (
        f"iofs: error: cannot mount {mountpoint}: fuse: unknown option(s): `-o bogus'\n"
    )
    assert find_mount(mountpoint) is None


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("mount",),
        ("mount", "a"),
        ("frobnicate",),
        ("mount", "a", "b", "--attr-timeout", "x"),
        ("bench", "--runtime", "0"),
    ],
)
def test_usage_errors_are_one_line_and_status_2(args: tuple[str, ...]) -> None:
    result = iofs(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("iofs: error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_engines_lists_every_engine() -> None:
    result = iofs("engines")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines() if not line[0].isspace()]
    assert listed == sorted(ENGINES)
    for name, cls in ENGINES.items():
        reason = cls.probe()
        assert (reason or "available") in result.stdout, name
        assert cls.summary in result.stdout


def test_modes_describe_every_mode() -> None:
    result = iofs("modes")
    assert result.returncode == 0
    for name, mode in MODES.items():
        assert f"{name} (engine {mode.engine}" in result.stdout
    assert result.stdout.count("  expect ") == len(MODES)


@needs_fuse
def test_mount_options_reach_the_kernel(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=("ro", "allow_other"))
    with open("/proc/self/mounts") as table:
        line = next(x for x in table if f" {mnt.mountpoint} " in x)
    assert " fuse.iofs ro," in line and "allow_other" in line and "default_permissions" in line
    with pytest.raises(OSError) as info:
        (mnt.mountpoint / "f").touch()
    assert info.value.errno == errno.EROFS
