"""The command line as a user meets it: background mounts, unmounting, signals, errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from iofs import mounttable
from iofs.backends import ENGINES
from iofs.errors import ExitStatus
from iofs.live_mounts import (
    DEAD_CONNECTION,
    default_log_path,
    find_mount,
    is_disconnected,
    read_state,
    state_path,
)
from iofs.modes import MODES
from iofs.transport import default_transport

from .conftest import Mount, MountFactory, needs_fuse, needs_root, scratch_dir

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
        remove_leftovers(mountpoint)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def remove_leftovers(mountpoint: Path) -> None:
    """Unmount *mountpoint* if mounted, kill the daemon its state file names, and remove
    its state and log files. The daemon may remove its state file at any moment: it is
    read once (never exists() first), and the process it names is killed only if its
    pid was not reused since."""
    state: dict[str, Any] = read_state(mountpoint) or {}
    daemon = None
    with contextlib.suppress(psutil.Error, KeyError, TypeError, ValueError):
        daemon = psutil.Process(state["pid"])
        if abs(daemon.create_time() - float(state["started"])) > 0.01:
            daemon = None
    if find_mount(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    if daemon is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            daemon.kill()
    state_path(mountpoint).unlink(missing_ok=True)
    default_log_path(mountpoint).unlink(missing_ok=True)


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
        ExitStatus.MOUNT_CONFLICT,
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
    # Over uring the first access may still come before the kernel aborted the connection
    # (see DEAD_CONNECTION); once it has, every access gets ENOTCONN.
    with pytest.raises(OSError) as info:
        os.statvfs(mountpoint)
    assert info.value.errno in DEAD_CONNECTION
    with pytest.raises(OSError) as info:
        os.stat(mountpoint)
    assert info.value.errno == errno.ENOTCONN
    # (`iofs mount` recovers a dead mount too: tests/test_crash.py.)
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
        assert result.returncode == ExitStatus.MOUNT_CONFLICT
        assert result.stderr.startswith(f"iofs: error: cannot unmount {mountpoint}: ")
        assert result.stderr.count("\n") == 1
        assert find_mount(mountpoint) is not None
        lazy = iofs("umount", "--lazy", str(mountpoint))
        assert lazy.returncode == 0, lazy.stderr
        assert find_mount(mountpoint) is None
    finally:
        holder.kill()
        holder.wait()


def test_bad_arguments_are_one_line_and_a_status_per_kind(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    (backing / "file").touch()
    (backing / "inside").mkdir()
    (mountpoint / "inside").mkdir()
    engines = ", ".join(sorted(ENGINES))
    cases: dict[tuple[str, ...], tuple[ExitStatus, str]] = {
        ("mount", str(backing / "missing"), str(mountpoint)): (
            ExitStatus.BAD_PATH,
            f"backing directory {backing / 'missing'}: No such file or directory",
        ),
        ("mount", str(backing / "file"), str(mountpoint)): (
            ExitStatus.BAD_PATH,
            f"backing directory {backing / 'file'}: not a directory",
        ),
        ("mount", str(backing), str(backing / "file")): (
            ExitStatus.BAD_PATH,
            f"mountpoint {backing / 'file'}: not a directory",
        ),
        ("mount", str(backing), str(mountpoint / "missing")): (
            ExitStatus.BAD_PATH,
            f"mountpoint {mountpoint / 'missing'}: No such file or directory",
        ),
        ("mount", str(backing), str(backing / "inside")): (
            ExitStatus.MOUNT_CONFLICT,
            f"mountpoint {backing / 'inside'} lies inside the backing directory {backing}",
        ),
        ("mount", str(mountpoint / "inside"), str(mountpoint)): (
            ExitStatus.MOUNT_CONFLICT,
            f"backing directory {mountpoint / 'inside'} lies inside the mountpoint {mountpoint}",
        ),
        ("mount", "--engine", "warp", str(backing), str(mountpoint)): (
            ExitStatus.BAD_SETTING,
            f"unknown engine 'warp' (known: {engines})",
        ),
        ("mount", "--mode", "zfs", str(backing), str(mountpoint)): (
            ExitStatus.BAD_SETTING,
            f"unknown mode 'zfs' (known: {', '.join(MODES)})",
        ),
        ("umount", str(mountpoint)): (
            ExitStatus.MOUNT_CONFLICT,
            f"{mountpoint} is not in an iofs mount",
        ),
        ("umount", str(mountpoint / "missing")): (
            ExitStatus.BAD_PATH,
            f"{mountpoint / 'missing'}: No such file or directory",
        ),
        ("umount", "/proc"): (ExitStatus.MOUNT_CONFLICT, "/proc is not an iofs mount (it is proc)"),
        ("mode", str(mountpoint), "xfs"): (
            ExitStatus.MOUNT_CONFLICT,
            f"{mountpoint} is not in an iofs mount",
        ),
        ("stats", str(mountpoint / "missing")): (
            ExitStatus.BAD_PATH,
            f"{mountpoint / 'missing'}: No such file or directory",
        ),
        ("bench", "--engine", "warp"): (
            ExitStatus.BAD_SETTING,
            f"unknown engine 'warp' (known: {engines})",
        ),
        ("bench", "--job", str(backing / "missing.fio")): (
            ExitStatus.BAD_PATH,
            f"job file {backing / 'missing.fio'}: not found",
        ),
    }
    for args, (status, message) in cases.items():
        result = iofs(*args)
        assert (result.returncode, result.stderr) == (status, f"iofs: error: {message}\n"), args
        assert result.stdout == ""
        assert find_mount(mountpoint) is None and find_mount(backing / "inside") is None
    assert len({status for status, _ in cases.values()}) == 3  # the kinds stay apart


@needs_fuse
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_background_daemon_serves_data_with_every_engine(
    dirs: tuple[Path, Path], engine: str
) -> None:
    """The daemon forks after the mount: what the engine holds in the kernel must be its
    own (an AIO context made before the fork killed the daemon with SIGBUS)."""
    reason = ENGINES[engine].probe()
    if reason is not None:
        pytest.skip(f"engine {engine} cannot run here: {reason}")
    backing, mountpoint = dirs
    log = backing.parent / "daemon.log"
    result = iofs("mount", "--engine", engine, "--log", str(log), str(backing), str(mountpoint))
    assert result.returncode == 0, result.stderr
    try:
        data = os.urandom(1 << 20)
        fd = os.open(mountpoint / "f", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            assert os.pwrite(fd, data, 0) == len(data)
            os.fsync(fd)
            assert os.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)
        assert (backing / "f").read_bytes() == data
    finally:
        unmounted = iofs("umount", str(mountpoint))
    assert unmounted.stdout == f"iofs: unmounted {mountpoint}\n", log.read_text()
    assert "Fatal Python error" not in log.read_text()


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@needs_root
@needs_fuse
def test_a_user_without_fuse_access_gets_one_line(dirs: tuple[Path, Path]) -> None:
    """/dev/fuse is hidden behind a 0600 file in a private mount namespace, as on a host
    where only a group may use FUSE; and a user may not mount on a directory not theirs."""
    backing, mountpoint = dirs
    forbidden = backing.parent / "fuse-0600"
    forbidden.touch(mode=0o600)
    os.chown(mountpoint, 65534, 65534)  # theirs: only /dev/fuse stands in the way
    hidden = iofs_as_nobody(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount --bind {forbidden} /dev/fuse && exec "$@"', "sh"],
        "mount", str(backing), str(mountpoint),
    )  # fmt: skip
    assert (hidden.returncode, hidden.stderr) == (
        ExitStatus.PERMISSION,
        "iofs: error: no access to /dev/fuse: ask an administrator for it (or mount as root)\n",
    )
    os.chown(mountpoint, 0, 0)
    not_theirs = iofs_as_nobody([], "mount", str(backing), str(mountpoint))
    assert (not_theirs.returncode, not_theirs.stderr) == (
        ExitStatus.PERMISSION,
        f"iofs: error: mountpoint {mountpoint}: no write access (mount on a directory you own)\n",
    )
    assert find_mount(mountpoint) is None


def iofs_as_nobody(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``iofs ARGS`` as uid 65534, after *prefix* (which runs as root and execs the rest)."""
    command = [*prefix, *AS_NOBODY, *IOFS, *args]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(scratch_dir("iofs-nobody-run-"))}
    Path(env["XDG_RUNTIME_DIR"]).chmod(0o777)
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, env=env
        )
    finally:
        subprocess.run(["rm", "-rf", env["XDG_RUNTIME_DIR"]], check=False)


#: The transport of the mounts that hide io_uring from iofs to take an engine away: the
#: run's own, unless that is uring, which needs io_uring itself (its refusal without it
#: is tested in test_transport_uring); then dev, the same protocol over read(2).
WITHOUT_IO_URING_TRANSPORT = "dev" if default_transport() == "uring" else default_transport()


def mount_without(hidden: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``iofs mount ARGS`` with the system calls *hidden* refused, over a transport that
    does not need them (`WITHOUT_IO_URING_TRANSPORT`)."""
    command = [sys.executable, "-m", "tests.without_syscalls", hidden, "--", *IOFS, "mount"]
    command += ["--transport", WITHOUT_IO_URING_TRANSPORT, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@needs_fuse
def test_a_mode_whose_engine_cannot_run_is_refused_with_the_reason(
    dirs: tuple[Path, Path],
) -> None:
    backing, mountpoint = dirs
    hidden = "io_uring_setup,io_setup"
    result = mount_without(hidden, "--mode", "xfs", str(backing), str(mountpoint))
    assert result.returncode == ExitStatus.UNAVAILABLE
    assert result.stderr == (
        "iofs: error: mode xfs: engine 'io_uring' cannot run here: io_uring_setup is not "
        "available (ENOSYS): a seccomp filter hides it (--allow-fallback uses the closest "
        "engine that runs)\n"
    )
    assert find_mount(mountpoint) is None
    # Mounted in a mode that runs, a switch to the missing engine is refused likewise.
    result = mount_without(hidden, "--mode", "btrfs", str(backing), str(mountpoint))
    assert result.returncode == 0, result.stderr
    try:
        switched = iofs("mode", str(mountpoint), "xfs")
        # The daemon's own reason, and where its log is.
        assert (switched.returncode, switched.stderr) == (
            ExitStatus.UNAVAILABLE,
            f"iofs: error: {mountpoint} stays in btrfs: engine 'io_uring' cannot run here: "
            "io_uring_setup is not available (ENOSYS): a seccomp filter hides it "
            f"(its log: {default_log_path(mountpoint)})\n",
        )
        assert json.loads(os.getxattr(mountpoint, "iofs.mode"))["spec"].startswith("btrfs")
    finally:
        assert iofs("umount", str(mountpoint)).returncode == 0


@needs_fuse
def test_allow_fallback_uses_the_closest_engine_that_runs(dirs: tuple[Path, Path]) -> None:
    """Without io_uring the xfs mode runs on aio; without either, on a thread pool."""
    backing, mountpoint = dirs
    for hidden, expected in (("io_uring_setup", "aio"), ("io_uring_setup,io_setup", "threads")):
        result = mount_without(
            hidden, "--allow-fallback", "--mode", "xfs", str(backing), str(mountpoint)
        )
        try:
            assert result.returncode == 0, result.stderr
            assert result.stderr.startswith("iofs: engine io_uring cannot run here (")
            assert result.stderr.endswith(f"mode xfs uses {expected} instead (--allow-fallback)\n")
            (mountpoint / "f").write_bytes(b"data" * 1024)
            assert (backing / "f").read_bytes() == b"data" * 1024
            mode = json.loads(os.getxattr(mountpoint, "iofs.mode"))
            assert mode["spec"].startswith(f"xfs,engine={expected}")
            assert daemon_engine(mountpoint) == expected
            # A later switch to a mode on the missing engine falls back the same way.
            for spec, engine in (("btrfs", "threads"), ("xfs", expected)):
                switched = iofs("mode", str(mountpoint), spec)
                assert switched.returncode == 0, switched.stderr
                assert f"switched to {spec} (engine {engine}" in switched.stdout
                assert daemon_engine(mountpoint) == engine
        finally:
            unmounted = iofs("umount", str(mountpoint))
            assert unmounted.returncode == 0, unmounted.stderr


def daemon_engine(mountpoint: Path) -> str:
    engines = json.loads(os.getxattr(mountpoint, "iofs.statistics"))["engines"]
    name: str = engines[0]["engine"]
    return name


@needs_fuse
def test_unknown_fuse_option_is_one_line(dirs: tuple[Path, Path]) -> None:
    backing, mountpoint = dirs
    result = iofs("mount", "-o", "bogus", str(backing), str(mountpoint))
    assert result.returncode == ExitStatus.USAGE
    assert result.stderr == (
        f"iofs: error: cannot mount {mountpoint}: fuse: unknown option(s): `-o bogus'\n"
    )
    assert find_mount(mountpoint) is None
    # No log is left behind for a mount that never served (`iofs log` needs a mount).
    assert not default_log_path(mountpoint).exists()


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
    assert result.returncode == ExitStatus.USAGE
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
    # The one mode whose opens cannot be mapped shared on pyfuse3 says so (issue 17).
    uncached = result.stdout.partition("\nuncached (")[2].partition("\n\n")[0]
    assert "ENODEV" in uncached and "FUSE_DIRECT_IO_ALLOW_MMAP" in " ".join(uncached.split())
    assert "--transport dev" in " ".join(uncached.split())


@needs_fuse
def test_mounting_without_shared_mmap_says_so(tmp_path: Path) -> None:
    """A mount whose setting cannot map files shared (cache=none on pyfuse3) notes it
    on stderr; the others say nothing."""
    backing, mountpoint = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mountpoint.mkdir()
    for options, noted in (
        (["--mode", "uncached"], True),
        (["--cache", "none"], True),
        (["--mode", "uncached", "--cache", "kernel"], False),
        ([], False),
    ):
        result = iofs("mount", *options, str(backing), str(mountpoint))
        try:
            assert result.returncode == 0, result.stderr
            expected = noted and default_transport() == "pyfuse3"
            assert ("ENODEV" in result.stderr) is expected, (options, result.stderr)
            assert len(result.stderr.splitlines()) == int(expected)
        finally:
            iofs("umount", str(mountpoint))


@needs_fuse
def test_mount_options_reach_the_kernel(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=("ro", "allow_other"))
    entry = mounttable.find(mnt.mountpoint)
    assert entry is not None and entry.fstype == "fuse.iofs"
    options = entry.options.split(",")
    assert options[0] == "ro" and "allow_other" in options and "default_permissions" in options
    with pytest.raises(OSError) as info:
        (mnt.mountpoint / "f").touch()
    assert info.value.errno == errno.EROFS
