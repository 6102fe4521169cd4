"""``iofs bench``: run a fio job natively and through an iofs mount, side by side.

Every run keeps, in its own directory under ``results/``, the exact fio commands, the
job file, fio's raw JSON, the environment and the summary, so any figure can be traced
and rerun.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyfuse3
from rich import box
from rich.console import Console
from rich.table import Table

from .backends import EngineUnavailable, engine_class
from .errors import IofsError
from .mount import MountOptions, mounted


@dataclass(frozen=True)
class Figures:
    """One direction of one fio job, as fio measured it."""

    job: str
    direction: str  # "read" or "write"
    iops: float
    bandwidth: float  # bytes/s
    p50_us: float
    p99_us: float
    p999_us: float


def builtin_job() -> Path:
    return Path(str(resources.files("iofs") / "jobs" / "quick.fio"))


def parse_fio(report: dict[str, Any]) -> list[Figures]:
    """The per-direction figures of every job in a fio JSON report that did I/O."""
    figures = []
    for job in report["jobs"]:
        for direction in ("read", "write"):
            side = job[direction]
            if side["io_bytes"] == 0:
                continue
            percentiles = side["clat_ns"].get("percentile", {})
            figures.append(
                Figures(
                    job=job["jobname"],
                    direction=direction,
                    iops=float(side["iops"]),
                    bandwidth=float(side["bw_bytes"]),
                    p50_us=percentiles.get("50.000000", 0) / 1000,
                    p99_us=percentiles.get("99.000000", 0) / 1000,
                    p999_us=percentiles.get("99.900000", 0) / 1000,
                )
            )
    return figures


def comparison_table(native: list[Figures], fused: list[Figures], engine: str) -> Table:
    """Render the comparison, a native row and an iofs row per job; a pure function."""
    table = Table(
        title=f"fio natively vs through iofs (engine {engine})",
        caption="ratio: iofs IOPS / native IOPS; p50-p99.9: fio completion latency in µs",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("job / path", no_wrap=True)
    for heading in ("IOPS", "ratio", "MiB/s", "p50", "p99", "p99.9"):
        table.add_column(heading, justify="right", no_wrap=True)
    by_key = {(f.job, f.direction): f for f in fused}
    mixed = {n.job for n in native if (n.job, "read") in by_key and (n.job, "write") in by_key}
    for n in native:
        f = by_key.get((n.job, n.direction))
        if f is None:
            continue
        table.add_row(f"[bold]{n.job}[/]" + (f" ({n.direction})" if n.job in mixed else ""))
        ratio = f"{f.iops / n.iops:.2f}x" if n.iops else "-"
        for name, figures, vs in (("  native", n, ""), ("  iofs", f, ratio)):
            table.add_row(
                name,
                f"{figures.iops:,.0f}",
                vs,
                f"{figures.bandwidth / 2**20:,.1f}",
                f"{figures.p50_us:,.1f}",
                f"{figures.p99_us:,.1f}",
                f"{figures.p999_us:,.1f}",
                end_section=figures is f,
            )
    return table


def _filesystem_type(path: Path) -> str:
    """The type of the filesystem holding *path*: findmnt's name, else statfs's."""
    for command in (
        ["findmnt", "--noheadings", "--output", "FSTYPE", "--target", str(path)],
        ["stat", "--file-system", "--format", "%T", str(path)],  # e.g. in a chroot
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return "unknown"


def environment(directory: Path, fio: str) -> dict[str, object]:
    fio_version = subprocess.run([fio, "--version"], capture_output=True, text=True, check=False)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "pyfuse3": pyfuse3.__version__,
        "fio": fio_version.stdout.strip(),
        "backing_filesystem": _filesystem_type(directory),
        "load_average": os.getloadavg(),
    }


def with_runtime(job_text: str, runtime: float) -> str:
    """The job with every ``runtime=`` set to *runtime* seconds (and one in [global]).

    fio lets a job file's own options win over the command line's, so an override
    has to be written into the job itself.
    """
    lines = [
        f"runtime={runtime:g}" if line.strip().startswith("runtime=") else line
        for line in job_text.splitlines()
    ]
    if not any(line.strip().startswith("runtime=") for line in job_text.splitlines()):
        index = next((i for i, line in enumerate(lines) if line.strip() == "[global]"), None)
        if index is None:
            lines[:0] = ["[global]", f"runtime={runtime:g}", "time_based=1"]
        else:
            lines[index + 1 : index + 1] = [f"runtime={runtime:g}", "time_based=1"]
    return "\n".join(lines) + "\n"


def run_fio(fio: str, job: Path, directory: Path, output: Path) -> None:
    command = [fio, "--output-format=json", f"--output={output}", f"--directory={directory}"]
    command.append(str(job))
    (output.with_suffix(".command")).write_text(" ".join(command) + "\n")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise IofsError(f"fio failed on {directory} (status {result.returncode}): {reason}")


def run_bench(job: Path | None, engine: str, results: Path, runtime: float | None) -> int:
    try:
        engine_class(engine)  # fail now, not after the native run
    except EngineUnavailable as exc:
        raise IofsError(str(exc)) from None
    fio = shutil.which("fio")
    if fio is None:
        raise IofsError("fio not found: install it (apt-get install fio) or run scripts/setup.sh")
    job = job or builtin_job()
    if not job.is_file():
        raise IofsError(f"job file {job}: not found")
    run_dir = results / f"{time.strftime('%Y%m%d-%H%M%S')}-bench-{engine}"
    run_dir.mkdir(parents=True, exist_ok=False)
    job_text = job.read_text()
    if runtime is not None:
        job_text = with_runtime(job_text, runtime)
    job = run_dir / "job.fio"  # exactly what runs, kept with the results
    job.write_text(job_text)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="iofs-bench-") as scratch:
        native_dir = Path(scratch, "native")
        backing = Path(scratch, "backing")
        mountpoint = Path(scratch, "mnt")
        for d in (native_dir, backing, mountpoint):
            d.mkdir()
        env = environment(native_dir, fio)
        env["engine"] = engine
        (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")

        console.print(f"[bold]native[/] fio on {native_dir} ({env['backing_filesystem']})")
        run_fio(fio, job, native_dir, run_dir / "native.json")
        console.print(f"[bold]iofs[/] fio through {mountpoint} (engine {engine})")
        opts = MountOptions(
            backing=backing, mountpoint=mountpoint, engine=engine, log_file=run_dir / "daemon.log"
        )
        with mounted(opts):
            run_fio(fio, job, mountpoint, run_dir / "iofs.json")

    native = parse_fio(json.loads((run_dir / "native.json").read_text()))
    fused = parse_fio(json.loads((run_dir / "iofs.json").read_text()))
    table = comparison_table(native, fused, engine)
    console.print(table)
    with (run_dir / "summary.txt").open("w") as summary:
        Console(file=summary, width=160).print(table)
    console.print(f"raw fio JSON, commands, job and environment kept in {run_dir}")
    return 0
