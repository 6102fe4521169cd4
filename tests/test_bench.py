"""The main job, `iofs bench`, run for real on a short runtime."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from iofs.bench import Figures, comparison_table, parse_fio, with_runtime

from .conftest import needs_fuse


@needs_fuse
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_bench_compares_native_and_iofs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "iofs", "bench", "--runtime", "1", "--results", str(results)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    (run_dir,) = results.iterdir()
    kept = {p.name for p in run_dir.iterdir()}
    assert {"job.fio", "environment.json", "native.json", "iofs.json", "summary.txt"} <= kept
    assert {"native.command", "iofs.command", "daemon.log"} <= kept
    native = parse_fio(json.loads((run_dir / "native.json").read_text()))
    fused = parse_fio(json.loads((run_dir / "iofs.json").read_text()))
    jobs = {"seq-write-1m", "rand-read-4k", "rand-write-4k-fsync32"}
    assert {f.job for f in native} == {f.job for f in fused} == jobs
    assert all(f.iops > 0 and f.p99_us >= f.p50_us > 0 for f in native + fused)
    for job in jobs:  # the table on screen shows every job and the saved summary too
        assert job in run.stdout and job in (run_dir / "summary.txt").read_text()
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["engine"] == "blocking" and env["fio"].startswith("fio-")
    assert "runtime=1\n" in (run_dir / "job.fio").read_text()
    assert "runtime=4" not in (run_dir / "job.fio").read_text()


def test_table_is_a_pure_function_of_the_figures() -> None:
    native = [Figures("j", "read", 1000.0, 4096000.0, 10.0, 20.0, 30.0)]
    fused = [Figures("j", "read", 250.0, 1024000.0, 40.0, 80.0, 120.0)]
    first = comparison_table(native, fused, "blocking")
    second = comparison_table(native, fused, "blocking")

    def render(table: object) -> str:
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(table)
        return console.export_text()

    assert render(first) == render(second)
    assert "0.25x" in render(first) and "1,000" in render(first)


def test_runtime_override_is_written_into_the_job() -> None:
    assert with_runtime("[global]\nruntime=4\n[a]\nruntime=9\nrw=read\n", 1.5) == (
        "[global]\nruntime=1.5\n[a]\nruntime=1.5\nrw=read\n"
    )
    assert with_runtime("; intent\n[global]\nbs=4k\n[a]\n", 2) == (
        "; intent\n[global]\nruntime=2\ntime_based=1\nbs=4k\n[a]\n"
    )
    assert with_runtime("[a]\nrw=read\n", 3) == "[global]\nruntime=3\ntime_based=1\n[a]\nrw=read\n"
