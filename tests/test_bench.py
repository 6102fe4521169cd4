"""`iofs bench` run for real: tiny sizes, one-second jobs, real FUSE mounts, real fio.

Every test gives the bench its own scratch directory (``--dir``) and checks afterwards
that nothing is left mounted under it and no loop device points at an image in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofs.errors import ExitStatus
from iofs.loopfs import LoopFilesystem, attached_devices
from iofs.mounttable import entries as mounts
from iofs.report import NATIVE
from iofs.results import load_results

from .conftest import ROOT, needs_fuse, needs_root, scratch_dir

needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")


def iofs(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iofs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def left_behind(scratch: Path) -> list[str]:
    """Mounts under *scratch* and loop devices whose backing file lies under it."""
    found = [f"mounted: {m.mountpoint}" for m in mounts() if m.mountpoint.startswith(str(scratch))]
    if shutil.which("losetup"):
        listing = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
        found += [f"loop: {line}" for line in listing.stdout.splitlines() if str(scratch) in line]
    return found


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The bench's --dir; afterwards nothing may be mounted or attached under it."""
    path = scratch_dir("iofs-bench-test-")
    try:
        yield path
    finally:
        leftovers = left_behind(path)
        for line in leftovers:  # clean up for the next test, then fail this one
            if line.startswith("mounted: "):
                subprocess.run(["umount", "-l", line.removeprefix("mounted: ")], check=False)
        shutil.rmtree(path, ignore_errors=True)
        assert not leftovers, leftovers


def only_run_dir(results: Path) -> Path:
    (run_dir,) = results.iterdir()
    return run_dir


@needs_fuse
@needs_fio
def test_bench_over_a_directory_in_two_modes(tmp_path: Path, scratch: Path) -> None:
    results = tmp_path / "results"
    run = iofs(
        "bench",
        *("--jobs", "rand-read-4k", "mixed"),
        *("--modes", "native", "blocking", "nonblocking"),
        *("--runtime", "1", "--size", "4m"),
        *("--results", str(results), "--dir", str(scratch)),
    )
    assert run.returncode == 0, run.stderr
    run_dir = only_run_dir(results)
    kept = {p.name for p in run_dir.iterdir()}
    assert {"plan.json", "environment.json", "jobs", "runs", "summary.txt"} <= kept
    assert {"chart.svg", "chart.html"} <= kept
    assert {p.name for p in (run_dir / "jobs").iterdir()} == {
        "rand-read-4k.fio",
        "rand-read-4k.prepare.fio",
        "mixed.fio",
        "mixed.prepare.fio",
    }
    assert "runtime=1\n" in (run_dir / "jobs" / "rand-read-4k.fio").read_text()

    # Every run keeps its exact commands, fio's raw JSON and, through iofs, statistics.
    runs = sorted((run_dir / "runs").iterdir())
    assert len(runs) == 6
    for directory in runs:
        files = {p.name for p in directory.iterdir()}
        assert {"run.json", "fio.command", "fio.json", "prepare.command"} <= files
        record = json.loads((directory / "run.json").read_text())
        assert record["status"] == "ok", record
        command = (directory / "fio.command").read_text()
        assert f"--directory={record['directory']}" in command
        # Files are laid out natively, before the mount.
        prepare = (directory / "prepare.command").read_text()
        assert f"--directory={record['backing']}" in prepare and "--create_only=1" in prepare
        if record["path"] == NATIVE:
            assert record["directory"] == record["backing"]
            assert "stats-before.json" not in files
        else:
            assert {"stats-before.json", "stats-after.json", "daemon.log"} <= files
            assert record["directory"] != record["backing"]
            assert record["daemon_log_errors"] == 0

    results_data = load_results(run_dir)
    for result in results_data.runs:
        assert result.figures and all(f.iops > 0 for f in result.figures), result
        if result.path != NATIVE:
            assert result.daemon is not None and result.daemon.cpu_seconds > 0
            assert result.cpu_per_op is not None
    nonblocking = results_data.find("dir", "nonblocking", "rand-read-4k")
    assert nonblocking is not None and nonblocking.daemon is not None
    assert nonblocking.daemon.engine_counters["reads"] > 0
    mixed = {
        (f.section, f.direction) for r in results_data.runs if r.job == "mixed" for f in r.figures
    }
    assert mixed == {("data", "write"), ("data", "sync"), ("metadata", "read")}

    env = json.loads((run_dir / "environment.json").read_text())
    assert env["fio"].startswith("fio-") and env["kernel"] and env["cpus"]
    assert env["cache_drop"] and env["filesystems"]["dir"]["type"]

    summary = (run_dir / "summary.txt").read_text()
    for text in ("rand-read-4k", "mixed", "fsync/fdatasync", "dir · native", "dir · nonblocking"):
        assert text in summary and text in run.stdout
    assert "x " in summary  # ratios against native
    ET.fromstring((run_dir / "chart.svg").read_text())
    assert "<svg" in (run_dir / "chart.html").read_text()

    # `iofs report` renders the same summary from the saved files alone.
    for name in ("summary.txt", "chart.svg", "chart.html"):
        (run_dir / name).unlink()
    again = iofs("report", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert (run_dir / "summary.txt").read_text() == summary
    assert again.stdout == run.stdout[run.stdout.index(summary.splitlines()[0]) :]
    assert (run_dir / "chart.svg").is_file() and (run_dir / "chart.html").is_file()


@needs_fuse
@needs_fio
@needs_root
def test_bench_on_loop_images(tmp_path: Path, scratch: Path) -> None:
    results = tmp_path / "results"
    run = iofs(
        "bench",
        *("--targets", "xfs", "btrfs", "--modes", "native", "blocking"),
        *("--jobs", "rand-write-4k", "--runtime", "1", "--size", "4m"),
        *("--results", str(results), "--dir", str(scratch)),
    )
    assert run.returncode == 0, run.stderr
    run_dir = only_run_dir(results)
    env = json.loads((run_dir / "environment.json").read_text())
    for kind in ("xfs", "btrfs"):
        info = env["filesystems"][kind]
        assert info["type"] == kind and info["source"].startswith("/dev/loop")
        assert not Path(info["image"]).exists(), "the image was not removed"
    loaded = load_results(run_dir)
    assert [(r.filesystem, r.path, r.status) for r in loaded.runs] == [
        ("xfs", NATIVE, "ok"),
        ("xfs", "blocking", "ok"),
        ("btrfs", NATIVE, "ok"),
        ("btrfs", "blocking", "ok"),
    ]
    assert "xfs img · blocking" in run.stdout and "btrfs img · native" in run.stdout


@needs_fuse
@needs_fio
def test_interrupt_leaves_nothing_mounted(tmp_path: Path, scratch: Path) -> None:
    """SIGINT while fio runs through iofs (on an XFS image as root): everything undone."""
    _interrupt_a_bench("xfs" if ROOT else "dir", tmp_path / "results", scratch)


@needs_fuse
@needs_fio
def test_interrupt_is_honoured_when_started_with_sigint_ignored(
    tmp_path: Path, scratch: Path
) -> None:
    """A shell without job control starts `cmd &` with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: the bench must take the signal all the same
    (it ran its 60 s and exited 0 when the test suite itself ran in the background)."""
    _interrupt_a_bench("dir", tmp_path / "results", scratch, ignoring_sigint=True)


def _interrupt_a_bench(
    target: str,
    results: Path,
    scratch: Path,
    ignoring_sigint: bool = False,
) -> None:
    """Start a 60 s bench run through iofs, SIGINT it once fio runs: everything undone."""
    # sh's `trap '' INT` ignores SIGINT, and what it execs inherits that.
    command = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh"] if ignoring_sigint else []
    command += [sys.executable, "-m", "iofs", "bench", "--targets", target]
    command += ["--modes", "blocking", "--jobs", "rand-read-4k", "--runtime", "60"]
    command += ["--size", "4m", "--results", str(results), "--dir", str(scratch)]
    bench = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(
            m.fstype == "fuse.iofs" and m.mountpoint.startswith(str(scratch)) for m in mounts()
        ):
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "the bench never mounted iofs"
            time.sleep(0.05)
        if target == "xfs":
            assert any(
                m.fstype == "xfs" and m.mountpoint.startswith(str(scratch)) for m in mounts()
            )
        time.sleep(1.0)  # let fio start on the mount
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, err
    assert b"iofs: interrupted" in err
    assert left_behind(scratch) == []
    assert not list(scratch.iterdir()), "scratch directories or images were left"
    # What ran is recorded: the interrupted run has a run.json without a status.
    run_dir = only_run_dir(results)
    (loaded,) = load_results(run_dir).runs
    assert (loaded.status, loaded.reason) == ("failed", "interrupted")
    assert (run_dir / "summary.txt").is_file()
    assert json.loads((run_dir / "environment.json").read_text())["interrupted"] is True


@needs_root
def test_loop_filesystem_is_destroyed_even_if_the_block_fails(scratch: Path) -> None:
    loop = LoopFilesystem("xfs", directory=scratch, size=320 * 2**20)
    with pytest.raises(RuntimeError), loop as root:
        assert os.statvfs(root).f_blocks > 0
        assert attached_devices(loop.image)
        raise RuntimeError("the block failed")
    assert not loop.image.exists() and left_behind(scratch) == []
    loop.destroy()  # idempotent


def test_usage_mistakes_are_one_line(tmp_path: Path) -> None:
    bad_setting, bad_path = ExitStatus.BAD_SETTING, ExitStatus.BAD_PATH
    cases = {
        ("bench", "--targets", "zfs"): (
            bad_setting,
            "unknown target 'zfs' (known: dir, xfs, btrfs)",
        ),
        ("bench", "--modes", "warp"): (bad_setting, "unknown mode 'warp'"),
        ("bench", "--jobs", "nope"): (bad_setting, "unknown job 'nope' (built-in: "),
        ("report", str(tmp_path)): (
            bad_path,
            f"{tmp_path}: not an iofs results directory (no plan.json)",
        ),
    }
    for args, (status, message) in cases.items():
        result = iofs(*args)
        assert result.returncode == status, args
        assert result.stderr.startswith(f"iofs: error: {message}"), result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    result = iofs("bench", "--size", "lots")
    assert result.returncode == ExitStatus.USAGE and "not a size" in result.stderr
