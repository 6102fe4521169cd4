"""Mounting as a user who is not root, over every transport, without changing the machine.

A default Debian machine has /dev/fuse ``crw-rw-rw-`` and a set-user-ID ``fusermount3``,
so anyone may mount; test machines often keep /dev/fuse 0600 (root only). Each test
here makes a private mount namespace (``unshare --mount --propagation private``) in
which a 0666 node of the same device (``c 10 229``, made with mknod on a tmpfs of the
namespace) is bind-mounted over /dev/fuse: inside, ``nobody`` (setpriv) mounts with the
real fusermount3, works on the mount, reads ``iofs stats`` and unmounts; the host's
/dev/fuse, its mount table and the fuse module's settings stay as they are. What only
root may do is checked too: each is refused, or warned about, in one line.

The namespace lives as long as a holder process (``cat`` on a pipe) or a daemon in it;
at the end every process in it is killed by PID, so nothing outlives a failing test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from iofs.errors import ExitStatus
from iofs.live_mounts import find_mount
from iofs.transport import TRANSPORT_NAMES
from iofs.transport.uring import ENABLE_URING, unavailable_reason

from .conftest import ROOT, scratch_dir
from .test_security import NOBODY

FUSE_DEVICE = (10, 229)  # the misc device /dev/fuse, on every Linux


def _namespace_unavailable() -> str | None:
    if not ROOT:
        return "needs root (a mount namespace with its own /dev/fuse node)"
    for tool in ("unshare", "nsenter", "setpriv", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    return None


pytestmark = pytest.mark.skipif(
    _namespace_unavailable() is not None, reason=str(_namespace_unavailable())
)


class Namespace:
    """A private mount namespace whose /dev/fuse anyone may open; commands run in it as
    *uid* through nsenter + setpriv. `close` kills every process left in it."""

    def __init__(self, base: Path, *, uring_off: bool = False, fuse_mode: int = 0o666) -> None:
        self.base = base
        self.runtime = base / "run"  # $XDG_RUNTIME_DIR: the daemons' state files
        self.runtime.mkdir()
        os.chown(self.runtime, NOBODY, NOBODY)
        devices = base / "dev"
        devices.mkdir()
        major, minor = FUSE_DEVICE
        # A tmpfs of the namespace's own, so the node works even where /tmp is nodev.
        setup = [
            f"mount -t tmpfs -o mode=0755,size=64k iofs-test-dev {devices}",
            f"mknod -m {fuse_mode:o} {devices}/fuse c {major} {minor}",
            f"mount --bind {devices}/fuse /dev/fuse",
        ]
        if uring_off:
            # What nobody sees on a machine where fuse.enable_uring is off, without turning
            # it off for everyone: the namespace's copy of the parameter file says N.
            off = base / "enable_uring"
            off.write_text("N\n")
            setup.append(f"mount --bind {off} {ENABLE_URING}")
        script = " && ".join([*setup, "echo ready", "exec cat"])
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline() != "ready\n":
            self.holder.kill()
            _, err = self.holder.communicate()
            raise RuntimeError(f"cannot set up the mount namespace: {err.strip()}")
        self.mnt_ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        assert self.mnt_ns != os.readlink("/proc/self/ns/mnt")

    def run(
        self, argv: Sequence[str], uid: int = NOBODY, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* in the namespace as *uid* (its group, no supplementary groups)."""
        command = [
            "nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--",
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv,
        ]  # fmt: skip
        # setpriv executes *argv* itself (no `env` in between): this venv's interpreter may
        # lie under a directory nobody cannot search (/root here), which only setpriv's
        # exec still resolves; the process then runs as nobody, with no capabilities.
        environment = dict(os.environ, XDG_RUNTIME_DIR=str(self.runtime))
        child = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A process waiting on a FUSE request cannot be killed: the daemons first.
            self.kill_strays()
            child.kill()
            child.communicate()
            raise
        return subprocess.CompletedProcess(command, child.returncode, out, err)

    def iofs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-m", "iofs", *args])

    def mount_table(self) -> str:
        """The namespace's /proc/self/mountinfo."""
        return Path(f"/proc/{self.holder.pid}/mountinfo").read_text()

    def strays(self) -> list[psutil.Process]:
        """Every process in the namespace but the holder (daemons, commands)."""
        found = []
        for process in psutil.process_iter():
            if process.pid == self.holder.pid:
                continue
            try:
                if os.readlink(f"/proc/{process.pid}/ns/mnt") == self.mnt_ns:
                    found.append(process)
            except OSError:
                continue  # gone, or a kernel thread
        return found

    def kill_strays(self) -> None:
        strays = self.strays()
        for process in strays:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(strays, timeout=30)

    def close(self) -> None:
        """Kill what is left in the namespace, then the holder: the namespace, and any
        mount in it, is gone."""
        self.kill_strays()
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.communicate()


@pytest.fixture
def base() -> Iterator[Path]:
    path = scratch_dir("iofs-nonroot-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _namespace(base: Path, **settings: Any) -> Iterator[Namespace]:
    host_fuse = os.stat("/dev/fuse")
    namespace = Namespace(base, **settings)
    try:
        yield namespace
    finally:
        namespace.close()
        after = os.stat("/dev/fuse")
        assert (after.st_mode, after.st_rdev) == (host_fuse.st_mode, host_fuse.st_rdev)


@pytest.fixture
def namespace(base: Path) -> Iterator[Namespace]:
    yield from _namespace(base)


@pytest.fixture
def uring_off_namespace(base: Path) -> Iterator[Namespace]:
    yield from _namespace(base, uring_off=True)


@pytest.fixture
def root_only_namespace(base: Path) -> Iterator[Namespace]:
    yield from _namespace(base, fuse_mode=0o600)


@pytest.fixture
def dirs(base: Path) -> tuple[Path, Path]:
    """A backing directory and a mountpoint that belong to nobody."""
    backing, mountpoint = base / "backing", base / "mnt"
    for path in (backing, mountpoint):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    return backing, mountpoint


def transport_runs_for_nobody(transport: str) -> None:
    if transport == "uring":
        reason = unavailable_reason()
        if reason is None and ENABLE_URING.read_text().strip() != "Y":
            reason = "fuse.enable_uring is off (test_nobody_without_uring covers that)"
        if reason is not None:
            pytest.skip(reason)


#: Run by nobody on the mount: create, write, read, rename, list, an O_DIRECT write
#: from an aligned buffer and its read-back, unlink; prints the outcomes as JSON.
WORK = textwrap.dedent(
    """
    import json, mmap, os, sys
    mnt = sys.argv[1]
    status = open("/proc/self/status").read()
    out = {"ids": [os.getuid(), os.geteuid()], "caps": status.split("CapEff:")[1].split()[0]}
    with open(os.path.join(mnt, "a.txt"), "w") as f:
        f.write("hello from nobody\\n")
    with open(os.path.join(mnt, "a.txt")) as f:
        out["read"] = f.read()
    os.rename(os.path.join(mnt, "a.txt"), os.path.join(mnt, "b.txt"))
    out["listing"] = sorted(os.listdir(mnt))
    buf = mmap.mmap(-1, 8192)
    buf.write(bytes(range(256)) * 32)
    fd = os.open(os.path.join(mnt, "direct.bin"), os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        out["direct_written"] = os.pwrite(fd, buf, 0)
    finally:
        os.close(fd)
    with open(os.path.join(mnt, "direct.bin"), "rb") as f:
        out["direct_read_ok"] = f.read() == bytes(range(256)) * 32
    os.unlink(os.path.join(mnt, "b.txt"))
    out["after_unlink"] = sorted(os.listdir(mnt))
    print(json.dumps(out))
    """
)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"wanted one line, got:\n{stderr}"
    return lines[0]


def assert_nothing_left(namespace: Namespace, mountpoint: Path) -> None:
    assert f" {mountpoint} " not in namespace.mount_table()
    assert find_mount(mountpoint) is None  # never on the host either
    assert namespace.strays() == [], "a daemon outlived its mount"


@pytest.mark.parametrize("transport", TRANSPORT_NAMES)
def test_nobody_mounts_works_and_unmounts(
    transport: str, namespace: Namespace, dirs: tuple[Path, Path]
) -> None:
    transport_runs_for_nobody(transport)
    backing, mountpoint = dirs
    mounted = namespace.iofs("mount", "--transport", transport, "--mode", "blocking",
                             str(backing), str(mountpoint))  # fmt: skip
    assert mounted.returncode == 0, mounted.stderr
    if transport == "pyfuse3":
        # libfuse leaves max_background to fusectl, which only root may write.
        assert one_line(mounted.stderr).startswith(
            "iofs: not root: the FUSE connection keeps the kernel's max_background of 12"
        )
    else:
        # dev and uring ask for it in INIT, which the kernel grants up to max_user_bgreq.
        assert mounted.stderr == ""
    entry = next(line for line in namespace.mount_table().splitlines() if f" {mountpoint} " in line)
    assert " - fuse.iofs " in entry and f"user_id={NOBODY}," in entry

    worked = namespace.run([sys.executable, "-c", WORK, str(mountpoint)])
    assert worked.returncode == 0, worked.stderr
    assert json.loads(worked.stdout) == {
        "ids": [NOBODY, NOBODY],
        "caps": "0000000000000000",
        "read": "hello from nobody\n",
        "listing": ["b.txt"],
        "direct_written": 8192,
        "direct_read_ok": True,
        "after_unlink": ["direct.bin"],
    }
    # The backing directory (the host sees it too) holds what nobody wrote, as nobody's.
    assert sorted(os.listdir(backing)) == ["direct.bin"]
    written = os.stat(backing / "direct.bin")
    assert (written.st_uid, written.st_size, stat.S_IMODE(written.st_mode)) == (
        NOBODY,
        8192,
        0o644,
    )
    assert (backing / "direct.bin").read_bytes() == bytes(range(256)) * 32

    stats = namespace.iofs("stats", str(mountpoint))
    assert stats.returncode == 0, stats.stderr
    assert re.search(rf"^transport\s+{transport}\b", stats.stdout, re.MULTILINE), stats.stdout
    snapshot = json.loads(namespace.iofs("stats", "--json", str(mountpoint)).stdout)
    assert snapshot["transport"] == transport
    if transport != "pyfuse3":
        assert snapshot["extra"]["transport_requests"] > 0

    unmounted = namespace.iofs("umount", str(mountpoint))
    assert unmounted.returncode == 0, unmounted.stderr
    assert f"unmounted {mountpoint}" in unmounted.stdout + unmounted.stderr
    assert_nothing_left(namespace, mountpoint)


@pytest.mark.parametrize("transport", TRANSPORT_NAMES)
def test_nobody_is_refused_passthrough_in_one_line(
    transport: str, namespace: Namespace, dirs: tuple[Path, Path]
) -> None:
    """FUSE passthrough registers backing files with an ioctl that needs CAP_SYS_ADMIN
    (and libfuse 3.14 has none): the mount is refused before anything is mounted."""
    transport_runs_for_nobody(transport)
    backing, mountpoint = dirs
    refused = namespace.iofs("mount", "--transport", transport, "--mode", "passthrough",
                             str(backing), str(mountpoint))  # fmt: skip
    assert refused.returncode == ExitStatus.UNAVAILABLE, refused.stderr
    line = one_line(refused.stderr)
    assert line.startswith("iofs: error: mode passthrough: ")
    assert ("--transport dev" if transport == "pyfuse3" else "mount as root") in line
    assert_nothing_left(namespace, mountpoint)


def test_nobody_without_uring(uring_off_namespace: Namespace, dirs: tuple[Path, Path]) -> None:
    """With fuse.enable_uring off only root can turn it on: nobody is told so in one line
    (as root iofs turns it on; `test_transport_uring` mounts that way)."""
    if unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    backing, mountpoint = dirs
    namespace = uring_off_namespace
    seen = namespace.run(["cat", str(ENABLE_URING)])
    assert seen.stdout == "N\n"
    refused = namespace.iofs("mount", "--transport", "uring", str(backing), str(mountpoint))
    assert refused.returncode == ExitStatus.UNAVAILABLE, refused.stderr
    assert one_line(refused.stderr) == (
        f"iofs: error: --transport uring: FUSE over io_uring is off (fuse module parameter "
        f"{ENABLE_URING}) and only root may turn it on"
    )
    assert_nothing_left(namespace, mountpoint)


MAX_USER_BGREQ = Path("/sys/module/fuse/parameters/max_user_bgreq")


@pytest.mark.parametrize("transport", ["dev", "uring"])
def test_nobody_asking_for_more_background_than_the_kernel_allows(
    transport: str, namespace: Namespace, dirs: tuple[Path, Path]
) -> None:
    """dev and uring ask for max_background in INIT; the kernel grants a daemon without
    CAP_SYS_ADMIN at most the fuse module's max_user_bgreq. Asking for more mounts with
    that cap, one warning line, and the cap in `iofs stats`."""
    transport_runs_for_nobody(transport)
    cap = int(MAX_USER_BGREQ.read_text())
    if cap >= 65535:
        pytest.skip(f"max_user_bgreq is {cap}: no max_background above it to ask for")
    backing, mountpoint = dirs
    mounted = namespace.iofs("mount", "--transport", transport, "--max-background",
                             str(cap + 1), str(backing), str(mountpoint))  # fmt: skip
    try:
        assert mounted.returncode == 0, mounted.stderr
        assert one_line(mounted.stderr) == (
            f"iofs: not root: the fuse module caps max_background at its max_user_bgreq of "
            f"{cap} (asked for {cap + 1}; mount as root for more)"
        )
        snapshot = json.loads(namespace.iofs("stats", "--json", str(mountpoint)).stdout)
        assert snapshot["extra"]["fuse_max_background"] == cap
    finally:
        unmounted = namespace.iofs("umount", str(mountpoint))
    assert unmounted.returncode == 0, unmounted.stderr
    assert_nothing_left(namespace, mountpoint)


def test_nobody_without_access_to_dev_fuse(
    root_only_namespace: Namespace, dirs: tuple[Path, Path]
) -> None:
    """Where /dev/fuse is root's only, every transport stops before mounting, in one line."""
    backing, mountpoint = dirs
    for transport in TRANSPORT_NAMES:
        refused = root_only_namespace.iofs(
            "mount", "--transport", transport, str(backing), str(mountpoint)
        )
        assert refused.returncode == ExitStatus.PERMISSION, refused.stderr
        assert one_line(refused.stderr) == (
            "iofs: error: no access to /dev/fuse: ask an administrator for it (or mount as root)"
        )
        assert_nothing_left(root_only_namespace, mountpoint)
