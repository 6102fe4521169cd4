"""What the per-request statistics cost: fio through iofs with them on and off.

Runs 4 KiB O_DIRECT random reads (every read reaches the daemon) through two mounts of
one backing directory, one mounted with ``--no-statistics``, alternating the two for
``--rounds`` rounds so that machine noise hits both alike, and prints the median IOPS of
each and their ratio. The raw fio JSON of every run is kept in the results directory.

    .venv/bin/python scripts/bench_statistics.py [--rounds 5] [--runtime 5] [--mode blocking]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iofs.daemon import start_daemon, stop_daemon
from iofs.mount import MountOptions


def fio(directory: Path, runtime: float, iodepth: int, output: Path) -> float:
    """IOPS of one fio run of 4 KiB O_DIRECT random reads in *directory*."""
    command = [
        "fio",
        "--name=stats-cost",
        f"--directory={directory}",
        "--filename=data",
        "--rw=randread",
        "--bs=4k",
        "--size=64m",
        "--direct=1",
        f"--ioengine={'psync' if iodepth == 1 else 'libaio'}",
        f"--iodepth={iodepth}",
        f"--runtime={runtime}",
        "--time_based",
        "--output-format=json",
        f"--output={output}",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return float(json.loads(output.read_text())["jobs"][0]["read"]["iops"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runtime", type=float, default=5.0)
    parser.add_argument("--mode", default="blocking")
    parser.add_argument("--iodepth", type=int, default=1, help="1: psync, more: libaio")
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()

    run_dir = args.results / f"{time.strftime('%Y%m%d-%H%M%S')}-statistics-cost"
    run_dir.mkdir(parents=True)
    base = Path(tempfile.mkdtemp(prefix="iofs-stats-cost-", dir="/var/tmp"))
    backing = base / "backing"
    backing.mkdir()
    daemons = []
    iops: dict[str, list[float]] = {"on": [], "off": []}
    try:
        mountpoints = {}
        for label, enabled in (("on", True), ("off", False)):
            mountpoint = base / f"mnt-{label}"
            mountpoint.mkdir()
            opts = MountOptions(
                backing,
                mountpoint,
                mode=args.mode,
                statistics=enabled,
                log_file=run_dir / f"daemon-{label}.log",
            )
            daemons.append((start_daemon(opts), mountpoint))
            mountpoints[label] = mountpoint
        fio(mountpoints["on"], 1, args.iodepth, run_dir / "warm-up.json")  # lays out the file
        for round_ in range(args.rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for label in order:
                output = run_dir / f"round{round_}-{label}.json"
                iops[label].append(fio(mountpoints[label], args.runtime, args.iodepth, output))
            print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in iops.items()))
    finally:
        for daemon, mountpoint in daemons:
            stop_daemon(daemon, mountpoint)
        shutil.rmtree(base, ignore_errors=True)
    on, off = statistics.median(iops["on"]), statistics.median(iops["off"])
    # Each round's on/off pair ran back to back: its ratio cancels the machine's drift.
    paired = statistics.median(a / b for a, b in zip(iops["on"], iops["off"], strict=True))
    summary = (
        f"4 KiB O_DIRECT random reads through iofs (mode {args.mode}, iodepth {args.iodepth}), "
        f"{args.rounds} rounds x {args.runtime:g} s:\n"
        f"  statistics on  {on:10,.0f} IOPS (median)\n"
        f"  statistics off {off:10,.0f} IOPS (median)\n"
        f"  cost of statistics: {100 * (1 - paired):.1f}% of IOPS "
        "(median of the rounds' on/off ratios)"
    )
    print(summary)
    (run_dir / "summary.txt").write_text(summary + "\n")
    (run_dir / "results.json").write_text(json.dumps({"iops": iops, "argv": sys.argv}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
