#!/usr/bin/env python3
"""What one create, stat and unlink cost the daemon: FUSE requests and backing system calls.

Usage (root, strace installed): scripts/metadata_costs.py [--peers DIR] [--count N] [--mode M]
[--iofs PATH]

For iofs (``.venv/bin/iofs`` of this checkout, or ``--iofs``) and, with ``--peers`` (built
by ``../shared/bench/build-peers.sh``), for libfuse's ``passthrough_hp --nopassthrough``,
it mounts a fresh directory and then, N times each: creates a file as fio's filecreate
job does (stat of the missing name, open O_CREAT|O_WRONLY, close), stats it after the
kernel has dropped its dentries and inodes (so that the kernel must look the name up),
and unlinks it. During each phase ``strace -c -f`` is attached to the daemon. FUSE
requests are counted from ``iofs stats`` for iofs and from ``--debug-fuse`` for
passthrough_hp. Prints a markdown table of requests and system calls per operation; the
FUSE transport's own calls (read, readv and writev on /dev/fuse, epoll) are listed apart.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iofs.daemon import stop_peer_daemon

ROOT = Path(__file__).resolve().parent.parent
IOFS = ROOT / ".venv" / "bin" / "iofs"
#: System calls that move FUSE requests rather than serve them.
TRANSPORT = {"read", "readv", "writev", "epoll_wait", "epoll_ctl", "epoll_pwait", "poll", "futex"}
PHASES = ("create", "stat", "unlink")


def _wait_mounted(mountpoint: Path, daemon: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if os.path.ismount(mountpoint):
            return
        if daemon.poll() is not None:
            sys.exit(f"metadata_costs: the daemon exited with {daemon.returncode}")
        time.sleep(0.05)
    sys.exit(f"metadata_costs: {mountpoint} did not get mounted")


def _strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # strace has attached to every thread
    return tracer


def _syscalls(summary: Path) -> dict[str, int]:
    counts = {}
    for line in summary.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def _iofs_requests(mountpoint: Path) -> collections.Counter[str]:
    data = json.loads(os.getxattr(mountpoint, "iofs.statistics"))
    return collections.Counter({op: v["count"] for op, v in data["operations"].items()})


def _hp_requests(log: Path, start: int) -> collections.Counter[str]:
    text = log.read_bytes()[start:].decode(errors="replace")
    return collections.Counter(m.lower() for m in re.findall(r"opcode: (\w+)", text))


def _phase(name: str, mountpoint: Path, count: int) -> None:
    paths = [mountpoint / f"f{index}" for index in range(count)]
    if name == "create":
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.stat(path)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    elif name == "stat":
        for path in paths:
            os.stat(path)
    else:
        for path in paths:
            os.unlink(path)


def measure(label: str, command: list[str], count: int, work: Path) -> dict[str, object]:
    backing, mountpoint = work / f"{label}-src", work / f"{label}-mnt"
    backing.mkdir()
    mountpoint.mkdir()
    log = work / f"{label}.log"
    with open(log, "wb") as sink:
        daemon = subprocess.Popen(
            [*command, str(backing), str(mountpoint)],
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        _wait_mounted(mountpoint, daemon)
        pid = daemon.pid  # both run in the foreground: the child is the daemon
        result: dict[str, object] = {}
        for name in PHASES:
            if name == "stat":
                subprocess.run(["sync"], check=True)
                Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes
            before_requests = _iofs_requests(mountpoint) if label.startswith("iofs") else None
            log_start = log.stat().st_size
            summary = work / f"{label}-{name}.strace"
            tracer = _strace(pid, summary)
            _phase(name, mountpoint, count)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
            if before_requests is not None:
                after = _iofs_requests(mountpoint)
                after.subtract(before_requests)
                after["getxattr"] -= 1  # the statistics read itself, counted when it started
                requests = after
            else:
                time.sleep(0.2)
                requests = _hp_requests(log, log_start)
            result[name] = {
                "requests": {op: n / count for op, n in requests.items() if n > 0},
                "syscalls": {call: n / count for call, n in _syscalls(summary).items()},
            }
        return result
    finally:
        stop_peer_daemon(daemon, mountpoint, timeout=20)


def _cell(costs: dict[str, float]) -> str:
    if not costs:
        return "-"
    return ", ".join(f"{name} {value:g}" for name, value in sorted(costs.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, help="where build-peers.sh built passthrough_hp")
    parser.add_argument("--count", type=int, default=200, help="operations per phase")
    parser.add_argument("--mode", default="blocking", help="iofs mode (default blocking)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to work")
    parser.add_argument("--iofs", type=Path, default=IOFS, help="the iofs to measure")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("strace") is None:
        sys.exit("metadata_costs: needs root and strace")
    targets = {f"iofs-{args.mode}": [str(args.iofs), "mount", "--foreground", "--mode", args.mode]}
    if args.peers is not None:
        targets["passthrough_hp"] = [
            str(args.peers / "passthrough_hp"),
            "--foreground",
            "--nopassthrough",
            "--debug-fuse",
        ]
    work = Path(tempfile.mkdtemp(prefix="metadata-costs-", dir=args.dir))
    try:
        results = {
            label: measure(label, command, args.count, work) for label, command in targets.items()
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Per operation, mean of {args.count} ({' '.join(sys.argv)}):\n")
    print("| op | target | FUSE requests | backing system calls | transport calls |")
    print("|---|---|---|---|---|")
    for name in PHASES:
        for label, result in results.items():
            phase = result[name]
            assert isinstance(phase, dict)
            calls = phase["syscalls"]
            serving = {c: n for c, n in calls.items() if c not in TRANSPORT}
            transport = {c: n for c, n in calls.items() if c in TRANSPORT}
            print(
                f"| {name} | {label} | {_cell(phase['requests'])} | {_cell(serving)} "
                f"| {_cell(transport)} |"
            )


if __name__ == "__main__":
    main()
