"""Real fio against the mount: whatever fio writes, it must read back intact."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from .conftest import Mount, MountFactory

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")


#: The fio jobs of one verify run: sequential and random writes (128 KiB blocks, and
#: 4-64 KiB ones), each through psync and through libaio (16 requests in flight).
VERIFY_JOBS = [(rw, ioengine) for rw in ("randwrite", "write") for ioengine in ("psync", "libaio")]


@pytest.mark.parametrize("backing_direct", [False, True], ids=["backing-cached", "backing-direct"])
@pytest.mark.parametrize("direct", [0, 1], ids=["buffered", "direct"])
def test_fio_verify(
    mount_factory: MountFactory, mount_engine: str, backing_direct: bool, direct: int
) -> None:
    """fio's O_DIRECT and buffered I/O on the mount, with the engine's backing fds
    buffered or O_DIRECT (``--direct``): every job of `VERIFY_JOBS` at once, two
    processes each, on one mount (a job per rw/ioengine pair, each verifying its own
    files, so a failure names the pair)."""
    fio_verify(mount_factory, mount_engine, backing_direct, direct, VERIFY_JOBS)


def fio_verify(
    mount_factory: MountFactory,
    mount_engine: str,
    backing_direct: bool,
    direct: int,
    jobs: list[tuple[str, str]],
) -> None:
    """Mount, run the fio *jobs* (rw, ioengine) at once on it, and check that each wrote
    and read back (verified) all of its data, and what the engine counted."""
    name = mount_engine.partition("+")[0]
    mnt = mount_factory(engine=f"{name}+direct" if backing_direct else name)
    command = [
        "fio",
        f"--directory={mnt.mountpoint}",
        f"--direct={direct}",
        "--size=8m",
        "--iodepth=16",
        "--numjobs=2",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",  # else fio leaves *.state files in the working directory
        "--output-format=json",
    ]
    for rw, ioengine in jobs:
        command += [
            f"--name={rw}-{ioengine}",
            f"--rw={rw}",
            f"--ioengine={ioengine}",
            "--bsrange=4k-64k" if rw == "randwrite" else "--bs=128k",
        ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    names = sorted(job["jobname"] for job in report["jobs"])
    assert names == sorted(2 * [f"{rw}-{ioengine}" for rw, ioengine in jobs])
    for job in report["jobs"]:
        assert job["error"] == 0, job["jobname"]
        assert job["write"]["io_bytes"] == 8 * 2**20, job["jobname"]
        assert job["read"]["io_bytes"] == 8 * 2**20, job["jobname"]  # all read back
    stats = mnt.engine_statistics()
    assert stats["bytes_written"] >= len(report["jobs"]) * 8 * 2**20
    assert stats["errors"] == 0
    if backing_direct:
        assert stats["direct_ops"] > 0


def test_fio_fsync_every_write(mnt: Mount) -> None:
    before = mnt.engine_statistics()
    command = [
        "fio",
        "--name=fsync",
        f"--directory={mnt.mountpoint}",
        "--ioengine=psync",
        "--rw=write",
        "--bs=4k",
        "--size=1m",
        "--fsync=1",
        "--output-format=json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    syncs = json.loads(result.stdout)["jobs"][0]["sync"]["total_ios"]
    assert syncs >= 255  # fio syncs after every 4 KiB write of 1 MiB
    after = mnt.engine_statistics()
    assert after["fsyncs"] - before["fsyncs"] == syncs
