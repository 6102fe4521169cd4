#!/usr/bin/env python3
"""Compare the FUSE transports side by side in one run: pyfuse3 (libfuse), dev, uring.

Each transport gets its own iofs mount (blocking mode, same backing directory layout)
and the same fio jobs: 4 KiB O_DIRECT random writes and random reads at queue depth 16
(libaio), on a 128 MiB file, a few seconds each. Rounds alternate the transports so
that noise from other load hits them alike; the median round is shown, and each
transport's IOPS as a ratio to pyfuse3's. ``--transports pyfuse3,dev,uring`` adds the
uring transport (Linux 6.14+, see docs/transports.md).

Per job and transport: IOPS (fio), FUSE requests per I/O and daemon CPU per request
(the daemon's user+system CPU time over the run, from /proc, divided by the requests
it counted in its statistics), and the getxattr requests the job caused.

Output: a table on stdout and every round's figures in ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iofs.daemon import start_daemon, stop_daemon
from iofs.mount import MountOptions

JOBS = {
    "randwrite-4k-qd16-direct": ["--rw=randwrite"],
    "randread-4k-qd16-direct": ["--rw=randread"],
}


def _statistics(mountpoint: Path) -> dict[str, Any]:
    import os

    document: dict[str, Any] = json.loads(os.getxattr(mountpoint, "iofs.statistics"))
    return document


def _requests(document: dict[str, Any]) -> dict[str, int]:
    """The workload's requests per operation: the statistics reads themselves are
    counted apart, as the operation ``control``, and left out."""
    operations = document["operations"].items()
    return {name: int(op["count"]) for name, op in operations if op["kind"] != "control"}


def run_job(
    mountpoint: Path, daemon: psutil.Process, job: str, runtime: float, size: str
) -> dict[str, float]:
    before = _requests(_statistics(mountpoint))
    cpu = daemon.cpu_times()
    command = [
        "fio",
        f"--name={job}",
        f"--filename={mountpoint / 'data'}",
        "--ioengine=libaio",
        "--direct=1",
        "--bs=4k",
        "--iodepth=16",
        f"--size={size}",
        f"--runtime={runtime}",
        "--time_based",
        "--randrepeat=0",
        "--output-format=json",
        *JOBS[job],
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    cpu_after = daemon.cpu_times()
    after = _requests(_statistics(mountpoint))
    report = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    ios = report["write"]["total_ios"] + report["read"]["total_ios"]
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    requests = sum(delta.values())
    seconds = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
    return {
        "iops": report["write"]["iops"] + report["read"]["iops"],
        "requests_per_io": requests / ios if ios else 0.0,
        "getxattr": delta.get("getxattr", 0),
        "cpu_us_per_request": seconds / requests * 1e6 if requests else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", type=float, default=3.0, help="seconds per fio job")
    parser.add_argument("--size", default="128m")
    parser.add_argument("--transports", default="pyfuse3,dev")
    parser.add_argument("--output", type=Path, default=None, help="JSON of every round")
    args = parser.parse_args()
    if shutil.which("fio") is None:
        print("bench_transports: fio is not installed", file=sys.stderr)
        return 1
    transports = args.transports.split(",")
    base = Path(tempfile.mkdtemp(prefix="iofs-transports-", dir="/var/tmp"))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    mounted: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        daemons = {}
        for name in transports:
            backing, mountpoint = base / f"{name}-backing", base / f"{name}-mnt"
            backing.mkdir()
            mountpoint.mkdir()
            opts = MountOptions(
                backing, mountpoint, mode="blocking", transport=name, log_file=base / f"{name}.log"
            )
            daemon = start_daemon(opts)
            mounted.append((daemon, mountpoint))
            daemons[name] = (psutil.Process(daemon.pid), mountpoint)
            subprocess.run(
                ["fio", "--name=fill", f"--filename={mountpoint / 'data'}", "--rw=write",
                 "--bs=1m", f"--size={args.size}", "--direct=1", "--output=/dev/null"],
                check=True,
            )  # fmt: skip
        for round_index in range(args.rounds):
            order = transports if round_index % 2 == 0 else transports[::-1]
            for job in JOBS:
                for name in order:
                    process, mountpoint = daemons[name]
                    figures = run_job(mountpoint, process, job, args.runtime, args.size)
                    results.setdefault(job, {}).setdefault(name, []).append(figures)
    finally:
        for daemon, mountpoint in mounted:
            stop_daemon(daemon, mountpoint)
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{'job':28} {'transport':10} {'IOPS':>9} {'req/IO':>7} {'getxattr':>9} {'CPU µs/req':>11}"
    )
    for job, per_transport in results.items():
        for name, rounds in per_transport.items():
            median = sorted(rounds, key=lambda r: r["iops"])[len(rounds) // 2]
            print(
                f"{job:28} {name:10} {median['iops']:9,.0f} {median['requests_per_io']:7.2f}"
                f" {median['getxattr']:9,.0f} {median['cpu_us_per_request']:11.1f}"
            )
        if "pyfuse3" in per_transport:
            base_iops = statistics.median(r["iops"] for r in per_transport["pyfuse3"])
            for name, rounds in per_transport.items():
                if name != "pyfuse3":
                    ratio = statistics.median(r["iops"] for r in rounds) / base_iops
                    print(f"{'':28} {name}/pyfuse3 IOPS (medians): {ratio:.2f}x")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
