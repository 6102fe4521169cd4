"""Faults a mount must survive, in every mode: its daemon killed in the middle of heavy
writes, a stop while fio runs, and a backing filesystem that fills up."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import psutil
import pytest

from iofs.control_protocol import MODE_XATTR
from iofs.errors import ExitStatus
from iofs.live_mounts import (
    DEAD_CONNECTION,
    default_log_path,
    find_mount,
    is_disconnected,
    read_state,
    state_path,
)
from iofs.modes import CACHINGS, MODES, SHARED_MMAP_LIMIT
from iofs.mounttable import entries as mounts
from iofs.transport import default_transport

from .acknowledged import AckedWriter, AppendWriter, SlotWriter
from .conftest import (
    ALL_MODES,
    Mount,
    MountFactory,
    finish_mount,
    mode_runs,
    needs_fuse,
    needs_root,
    read_if_present,
    scratch_dir,
    start_mount,
)

pytestmark = needs_fuse

IOFS = [sys.executable, "-m", "iofs"]

#: What users of a mount get once its daemon is gone: ECONNABORTED (over uring also
#: ECANCELED) for requests that were in flight when the connection was cut, ENOTCONN
#: for any made after.
GONE = DEAD_CONNECTION


def iofs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IOFS, *args], capture_output=True, text=True, timeout=60, check=False)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def skip_unless_runs(mode: str) -> None:
    reason = mode_runs(mode)
    if reason is not None:
        pytest.skip(f"mode {mode} cannot run here: {reason}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        os.fsync(file.fileno())


def exited(process: psutil.Process) -> bool:
    """True once *process* has ended (a zombie waiting for its parent counts)."""
    try:
        status: str = process.status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)  # psutil types its constants as Any


def matrix(modes: list[str], variants: list[str]) -> list[pytest.ParameterSet]:
    """Every mode with every variant. The default run takes a diagonal, so that each
    mode runs once and each variant at least once; the slow run takes the rest."""
    return [
        pytest.param(
            mode,
            variant,
            id=f"{mode}-{variant}",
            marks=() if j == i % len(variants) else pytest.mark.slow,
        )
        for i, mode in enumerate(modes)
        for j, variant in enumerate(variants)
    ]


# -- the daemon killed during heavy writes ------------------------------------------------
@dataclass
class Background:
    """Background mounts made the way a user makes them (``iofs mount``), and every
    daemon they started, so that a failing test still kills exactly those."""

    backing: Path
    mountpoint: Path
    daemons: list[psutil.Process] = field(default_factory=list)

    def mount(self, mode: str) -> subprocess.CompletedProcess[str]:
        result = iofs("mount", "--mode", mode, str(self.backing), str(self.mountpoint))
        if result.returncode == 0:
            pid = json.loads(state_path(self.mountpoint).read_text())["pid"]
            self.daemons.append(psutil.Process(pid))
        return result

    def daemon(self) -> psutil.Process:
        return self.daemons[-1]


@pytest.fixture
def background() -> Iterator[Background]:
    base = scratch_dir("iofs-crash-")
    bg = Background(base / "backing", base / "mnt")
    bg.backing.mkdir()
    bg.mountpoint.mkdir()
    try:
        yield bg
    finally:
        if find_mount(bg.mountpoint) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(bg.mountpoint)], check=False)
        for daemon in bg.daemons:
            with contextlib.suppress(psutil.NoSuchProcess):
                daemon.kill()  # psutil checks first that the pid was not reused
        state_path(bg.mountpoint).unlink(missing_ok=True)
        default_log_path(bg.mountpoint).unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def _writers() -> list[AckedWriter]:
    """Four writers on three files: two share a journal they overwrite in place (one
    ending its batches with fsync, one with fdatasync); two append to logs."""
    return [
        SlotWriter("journal", "fsync", seed=1, slots=range(0, 512, 2)),
        SlotWriter("journal", "fdatasync", seed=2, slots=range(1, 512, 2)),
        AppendWriter("o_append.log", "fsync", seed=3, o_append=True),
        AppendWriter("pwrite.log", "fdatasync", seed=4, o_append=False),
    ]


def kill_under_load(bg: Background, writers: list[AckedWriter]) -> None:
    """Start the writers, SIGKILL the daemon once all of them are busy, and check that
    each writer is then told the mount is gone instead of hanging."""
    stop = threading.Event()
    threads = [writer.thread(bg.mountpoint, stop) for writer in writers]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: all(w.syncs >= 2 or w.error is not None for w in writers),
            "every writer to get a few batches acknowledged",
        )
        assert all(w.error is None for w in writers), [w.error for w in writers]
        bg.daemon().kill()
        bg.daemon().wait(timeout=10)
        for thread in threads:
            thread.join(timeout=10)
        assert not [t.name for t in threads if t.is_alive()], "writers hang on the dead mount"
    finally:
        stop.set()  # only matters if the test failed before the kill
    errors = {w.label: w.error.errno if w.error else None for w in writers}
    assert set(errors.values()) <= GONE, errors
    with pytest.raises(OSError) as info:
        os.stat(bg.mountpoint)
    assert info.value.errno == errno.ENOTCONN


def assert_acknowledged(mountpoint: Path, writers: list[AckedWriter]) -> None:
    """Every write a sync acknowledged reads back intact through the mount."""
    problems = []
    for writer in writers:
        problems += writer.problems((mountpoint / writer.name).read_bytes())
    assert not problems, problems[:20]


@pytest.mark.parametrize(("mode", "recover"), matrix(ALL_MODES, ["iofs mount", "iofs umount"]))
def test_killed_daemon_recovers_in_one_command_and_keeps_acknowledged_writes(
    background: Background, mode: str, recover: str
) -> None:
    """SIGKILL under heavy writes leaves a dead mount (ENOTCONN). One command recovers
    it: `iofs umount`, or `iofs mount` on the same mountpoint, which detaches the dead
    mount and mounts afresh. Every write a successful fsync or fdatasync acknowledged
    before the kill reads back intact afterwards."""
    skip_unless_runs(mode)
    bg, writers, mp = background, _writers(), background.mountpoint
    dead = f"iofs: cleaned up {mp} (its daemon had died; its log: {default_log_path(mp)})\n"
    # What `iofs mount` says of a mode whose files cannot be mapped shared (pyfuse3).
    direct_io = CACHINGS[MODES[mode].caching].direct_io
    note = (
        f"iofs: note: {SHARED_MMAP_LIMIT}\n"
        if direct_io and default_transport() == "pyfuse3"
        else ""
    )
    assert bg.mount(mode).returncode == 0
    kill_under_load(bg, writers)
    if recover == "iofs umount":
        result = iofs("umount", str(mp))
        assert (result.returncode, result.stdout, result.stderr) == (0, dead, "")
        assert find_mount(mp) is None and not is_disconnected(mp)
        assert not state_path(mp).exists()
        result = bg.mount(mode)
        assert (result.returncode, result.stderr) == (0, note)
    else:
        result = bg.mount(mode)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", note + dead)
        assert [e.mountpoint for e in mounts()].count(str(mp)) == 1  # the dead one is gone
    entry = find_mount(mp)
    assert entry is not None and entry.source == str(bg.backing)
    assert_acknowledged(mp, writers)

    result = iofs("umount", str(mp))
    assert (result.returncode, result.stdout) == (0, f"iofs: unmounted {mp}\n"), result.stderr
    assert exited(bg.daemon()), read_if_present(default_log_path(mp))
    assert find_mount(mp) is None and not state_path(mp).exists()


# -- a clean stop while fio runs ----------------------------------------------------------
STOP_JOB = """\
; stop while busy: several jobs mix reads and writes, and check what they wrote as they go
[global]
size=2m
bs=4k
time_based
runtime=60
verify_state_save=0

[write-verify-psync]
ioengine=psync
rw=randwrite
verify=crc32c
verify_backlog=16
verify_fatal=1

[write-verify-libaio-direct]
ioengine=libaio
iodepth=8
direct=1
rw=randwrite
verify=crc32c
verify_backlog=16
verify_fatal=1

[randrw-libaio-direct]
ioengine=libaio
iodepth=4
direct=1
rw=randrw

[randread-psync]
ioengine=psync
rw=randread
"""


def files_held_under(*roots: Path) -> list[str]:
    """Files under *roots* still open in this process or any process it started."""
    me = psutil.Process()
    held = []
    for process in [me, *me.children(recursive=True)]:
        fd_dir = f"/proc/{process.pid}/fd"
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(f"{fd_dir}/{fd}")
                    if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
                        held.append(f"{process.pid} ({process.name()}): {target}")
    return held


def fio_jobs(output: str) -> dict[str, int]:
    """Each job's name and error (an errno; 0 if it ran clean) from fio's JSON output."""
    report = json.loads(output[output.index("{") :])
    return {job["jobname"]: job["error"] for job in report["jobs"]}


def _newest_mtime(directory: Path) -> int:
    return max(entry.stat().st_mtime_ns for entry in os.scandir(directory))


def _stop_by_signal(signum: signal.Signals) -> Callable[[Mount, Popen[str]], None]:
    def stop(mnt: Mount, fio: Popen[str]) -> None:
        """The daemon unmounts, lazily since fio holds files open, and exits at once;
        fio's requests in flight fail with ECONNABORTED, later ones with ENOTCONN."""
        mnt.daemon.send_signal(signum)
        assert mnt.daemon.wait(timeout=15) == 0
        assert find_mount(mnt.mountpoint) is None
        output, errors = fio.communicate(timeout=20)
        jobs = fio_jobs(output)
        assert fio.returncode != 0, errors
        assert set(jobs.values()) <= GONE | REOPENED | {0}, (jobs, errors)
        assert set(jobs.values()) & GONE, jobs
        assert "detaching lazily" in mnt.log_text()

    return stop


def _stop_by_iofs_umount(mnt: Mount, fio: Popen[str]) -> None:
    """Refused while busy, changing nothing; `--lazy` detaches the mount at once, and
    the daemon serves fio's open files until fio ends, then exits."""
    mp = mnt.mountpoint
    refused = iofs("umount", str(mp))
    assert refused.returncode == ExitStatus.MOUNT_CONFLICT
    assert "Device or resource busy (try --lazy)" in refused.stderr
    assert find_mount(mp) is not None and fio.poll() is None
    detached_at = time.time_ns()
    detached = iofs("umount", "--lazy", str(mp))
    assert (detached.returncode, detached.stdout) == (
        0,
        f"iofs: detached {mp}: its daemon exits once the files open on it are closed\n",
    ), detached.stderr
    assert find_mount(mp) is None and mnt.daemon.poll() is None
    wait_for(
        lambda: _newest_mtime(mnt.backing / "fio") > detached_at,
        "fio's writes to reach the backing files after the detach",
    )
    fio.send_signal(signal.SIGINT)  # as Ctrl-C: fio ends its jobs
    output, errors = fio.communicate(timeout=20)
    jobs = fio_jobs(output)
    assert set(jobs.values()) <= REOPENED | {0}, (jobs, errors)


def _stop_by_fusermount(mnt: Mount, fio: Popen[str]) -> None:
    """Refused while busy, changing nothing; once fio is stopped it succeeds."""
    mp = mnt.mountpoint
    refused = subprocess.run(
        ["fusermount3", "-u", str(mp)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert "Device or resource busy" in refused.stderr
    assert find_mount(mp) is not None and fio.poll() is None
    fio.send_signal(signal.SIGINT)  # as Ctrl-C: fio ends its jobs and exits 128
    output, errors = fio.communicate(timeout=20)
    jobs = fio_jobs(output)
    assert (fio.returncode, set(jobs.values())) == (128, {0}), (jobs, errors)
    subprocess.run(["fusermount3", "-u", str(mp)], check=True)


#: How a mount is stopped while fio uses it: the daemon signalled, or an unmount.
STOPS: dict[str, Callable[[Mount, Popen[str]], None]] = {
    "SIGTERM": _stop_by_signal(signal.SIGTERM),
    "SIGINT": _stop_by_signal(signal.SIGINT),
    "iofs umount": _stop_by_iofs_umount,
    "fusermount3 -u": _stop_by_fusermount,
}

#: fio reopens its files by name as it goes. Once the mount is detached a name leads to
#: the directory underneath, where fio's subdirectory is missing: ENOENT.
REOPENED = frozenset({errno.ENOENT})


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
@pytest.mark.parametrize(("mode", "stop"), matrix(ALL_MODES, list(STOPS)))
def test_stop_while_fio_runs_ends_cleanly_and_leaves_nothing_behind(
    mount_factory: MountFactory, mode: str, stop: str, tmp_path: Path
) -> None:
    """A signal stops the daemon at once: fio's requests fail with ENOTCONN or
    ECONNABORTED and fio exits. An unmount is refused while fio holds files open and
    changes nothing; then either the mount is detached (`iofs umount --lazy`) and the
    daemon serves fio on until fio closes its files, or fio is stopped first and
    `fusermount3 -u` succeeds. Either way nothing is left behind."""
    skip_unless_runs(mode)
    if MODES[mode].passthrough:
        pytest.skip(
            "passthrough: fio's reads bypass the daemon, which cannot tell when its jobs run"
        )
    mnt, threads_before = mount_factory(engine=None, mode=mode), threading.active_count()
    mp = mnt.mountpoint
    kept = os.urandom(1 << 20)
    write_synced(mp / "kept", kept)
    job = tmp_path / "stop.fio"
    job.write_text(STOP_JOB)
    (mp / "fio").mkdir()  # see REOPENED
    fio = subprocess.Popen(
        ["fio", "--output-format=json", f"--directory={mp / 'fio'}", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Reads reach the daemon only once the jobs run (laying out files only writes).
        wait_for(
            lambda: fio.poll() is not None or mnt.engine_statistics()["reads"] >= 64,
            "fio's jobs to get going",
        )
        assert fio.poll() is None, fio.communicate()
        STOPS[stop](mnt, fio)
        assert mnt.daemon.wait(timeout=15) == 0
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert find_mount(mp) is None and os.listdir(mp) == []
    assert not state_path(mp).exists()
    assert files_held_under(mnt.backing, mp) == []
    assert threading.active_count() == threads_before
    assert (mnt.backing / "kept").read_bytes() == kept


def test_signalled_after_a_lazy_detach_the_daemon_leaves_a_new_mount_alone(
    mount_factory: MountFactory,
) -> None:
    """Once `iofs umount --lazy` has detached a busy mount, a new one may take its
    mountpoint; the old daemon, stopped by a signal, must not unmount the new one."""
    old = mount_factory()
    mp = old.mountpoint
    held = os.open(mp / "held", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        detached = iofs("umount", "--lazy", str(mp))
        assert detached.returncode == 0 and "detached" in detached.stdout, detached.stderr
        backing = old.backing.parent / "new-backing"
        backing.mkdir()
        new = start_mount(backing, mp, old.log.with_name("new-daemon.log"))
        try:
            old.daemon.send_signal(signal.SIGTERM)
            assert old.daemon.wait(timeout=15) == 0
            state = read_state(mp)  # the old daemon left the new one's state file alone
            assert state is not None and state["pid"] == new.daemon.pid
            entry = find_mount(mp)
            assert entry is not None and entry.source == str(backing)
            (mp / "f").write_bytes(b"new")
            assert (backing / "f").read_bytes() == b"new"
            with pytest.raises(OSError) as info:
                os.pwrite(held, b"x", 0)
            assert info.value.errno == errno.ENOTCONN
        finally:
            finish_mount(new)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: its daemon is gone
            os.close(held)
    assert "the mount was detached already: stopping" in old.log_text()


# -- a full backing filesystem --------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "iofs-full", str(path)], check=True
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@needs_root
@pytest.mark.parametrize("mode", ALL_MODES)
def test_full_backing_filesystem_fails_writes_with_enospc_and_recovers(mode: str) -> None:
    """On an 8 MiB tmpfs: writes fail with ENOSPC (buffered and O_DIRECT), the daemon
    serves on, what was written stays intact, and unlinking makes room again."""
    skip_unless_runs(mode)
    base = scratch_dir("iofs-full-")
    (base / "backing").mkdir()
    (base / "mnt").mkdir()
    try:
        with small_tmpfs(base / "backing", "8m") as backing:
            mnt = start_mount(backing, base / "mnt", base / "daemon.log", engine=None, mode=mode)
            try:
                _fill_and_recover(mnt)
            finally:
                finish_mount(mnt)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def read_direct(path: Path, size: int) -> bytes:
    """Read *size* bytes with O_DIRECT: through a mount, the daemon has to serve them."""
    buffer = mmap.mmap(-1, size)  # O_DIRECT wants an aligned buffer
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.preadv(fd, [buffer], 0) == size
    finally:
        os.close(fd)
    return bytes(buffer)


def _fill_and_recover(mnt: Mount) -> None:
    mp = mnt.mountpoint
    kept = {f"kept{i}": os.urandom(512 * 1024) for i in range(3)}
    for name, data in kept.items():
        write_synced(mp / name, data)

    fd = os.open(mp / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        chunk = os.urandom(1 << 20)
        with pytest.raises(OSError) as full:
            for _ in range(16):  # twice what the tmpfs holds; short writes come first
                os.write(fd, chunk)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    fd = os.open(mp / "direct", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        aligned = mmap.mmap(-1, 64 * 1024)  # O_DIRECT wants an aligned buffer
        with pytest.raises(OSError) as full:
            os.write(fd, aligned)
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)

    # The daemon serves on, and nothing written before is damaged.
    assert mnt.daemon.poll() is None
    assert os.statvfs(mp).f_bavail == 0
    assert sorted(os.listdir(mp)) == sorted([*kept, "filler", "direct"])
    for name, data in kept.items():
        assert digest(read_direct(mp / name, len(data))) == digest(data), name
        assert digest((mnt.backing / name).read_bytes()) == digest(data), name

    # Unlinking through the mount gives the space back (once the daemon has had the
    # releases, which FUSE sends after close returns), and writes succeed again.
    os.unlink(mp / "filler")
    os.unlink(mp / "direct")
    wait_for(
        lambda: os.statvfs(mnt.backing).f_bavail * os.statvfs(mnt.backing).f_frsize >= 5 << 20,
        "the unlinked files' space to come back",
    )
    after = os.urandom(4 << 20)
    write_synced(mp / "after", after)
    assert digest((mp / "after").read_bytes()) == digest(after)
    for name, data in kept.items():
        assert digest((mp / name).read_bytes()) == digest(data), name

    engine = mnt.engine_statistics()
    # ENOSPC came from the backing filesystem, via the engine (in passthrough, via the kernel)
    passthrough = json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))["passthrough"]
    assert engine["errors"] >= 1 or passthrough
    if engine["direct"]:
        assert engine["direct_ops"] > 0  # the O_DIRECT twins were used, and failed cleanly
    assert mnt.counters()["unexpected_errors"] == 0
