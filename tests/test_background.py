"""fio's queue depth reaches the engine: the FUSE connection's background limit is raised."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iofs.connection import KERNEL_MAX_BACKGROUND
from iofs.control_protocol import FAULTS_XATTR

from .conftest import Mount, MountFactory, mode_runs, needs_fuse, needs_root
from .test_security import NOBODY, as_user

IOFS = [sys.executable, "-m", "iofs"]

pytestmark = needs_fuse


def _fio_randread(directory: Path, iodepth: int) -> None:
    command = [
        "fio",
        "--name=deep",
        f"--directory={directory}",
        "--ioengine=libaio",
        "--direct=1",
        "--rw=randread",
        "--bs=4k",
        "--size=4m",
        f"--iodepth={iodepth}",
        f"--iodepth_batch_submit={iodepth}",  # the whole queue at once
        f"--number_ios={2 * iodepth}",
        "--randrepeat=1",
        "--output-format=json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    assert json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]["error"] == 0


def _reads_in_flight(mnt: Mount) -> tuple[int, int]:
    """The most reads the daemon had at once, and the most its engine had."""
    operations = mnt.statistics()["operations"]
    assert isinstance(operations, dict)
    return operations["read"]["max_in_flight"], mnt.engine_statistics()["max_in_flight"]


@needs_root
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
@pytest.mark.parametrize("max_background", [None, 12])
def test_fio_queue_depth_reaches_the_xfs_engine(
    mount_factory: MountFactory, max_background: int | None
) -> None:
    """fio at iodepth 32: with the default limit (the queue depth) every request
    reaches the daemon at once; with the kernel's 12, never more than 12.

    Each read is held 300 ms by a delay fault in front of the engine, so that what is
    measured is how many requests the kernel lets through, not how fast the disk is;
    then the 32 reads, released together, meet in the engine.
    """
    reason = mode_runs("xfs")
    if reason is not None:
        pytest.skip(f"mode xfs cannot run here: {reason}")
    mnt = mount_factory(engine=None, mode="xfs", max_background=max_background)
    extra = mnt.counters()
    limit = max_background or 64  # the engine's queue depth, by default
    assert (extra["max_background"], extra["congestion_threshold"]) == (limit, limit * 3 // 4)
    (mnt.mountpoint / "deep.0.0").write_bytes(b"\0" * 4 * 2**20)  # fio's file, laid out
    os.setxattr(mnt.mountpoint, FAULTS_XATTR, b"delay=300ms,ops=read")
    _fio_randread(mnt.mountpoint, 32)
    in_daemon, in_engine = _reads_in_flight(mnt)
    if max_background is None:
        assert in_daemon >= 24
    else:
        assert in_daemon == 12
        assert in_engine <= 12


@needs_root
def test_max_background_option_sets_the_connection(mount_factory: MountFactory) -> None:
    mnt = mount_factory(max_background=200)
    assert mnt.counters()["max_background"] == 200
    assert mnt.counters()["congestion_threshold"] == 150
    assert "FUSE max_background 200, congestion_threshold 150" in mnt.log_text()


@needs_root
def test_without_root_the_kernel_default_stays_with_one_warning() -> None:
    probe = (
        "from iofs.connection import set_background_limits; "
        "limits = set_background_limits('0:999', 64); "
        "print(limits.max_background, limits.congestion_threshold); print(limits.warning)"
    )
    result = as_user(NOBODY, [sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr
    numbers, warning = result.stdout.splitlines()
    assert numbers == f"{KERNEL_MAX_BACKGROUND} 9"
    assert warning.startswith("not root: ") and "\n" not in warning


@needs_root
def test_a_queue_deeper_than_the_kernel_takes_fills_every_slot(tmp_path: Path) -> None:
    """The default follows the queue depth only as far as the kernel's 65,535."""
    backing, mountpoint = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mountpoint.mkdir()
    iofs = IOFS
    mount = [*iofs, "mount", "--mode", "blocking", "--queue-depth", "70000"]
    result = subprocess.run(
        [*mount, str(backing), str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    try:
        assert result.stderr == ""  # no "cannot set max_background" warning
        stats = subprocess.run(
            [*iofs, "stats", "--json", str(mountpoint)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(stats.stdout)["extra"]["max_background"] == 65_535
    finally:
        subprocess.run([*iofs, "umount", str(mountpoint)], check=True, timeout=60)


def test_max_background_beyond_the_kernels_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    result = subprocess.run(
        [*IOFS, "mount", "--max-background", "70000", str(tmp_path / "b"), str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 5, result.stderr
    assert result.stderr == "iofs: error: --max-background: the kernel takes at most 65535\n"
