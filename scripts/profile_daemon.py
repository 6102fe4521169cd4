#!/usr/bin/env python3
"""Where the daemon's CPU goes per request: py-spy on an iofs daemon under fio.

Usage (root, needs fio and py-spy, e.g. ``.venv/bin/pip install py-spy``):
    scripts/profile_daemon.py [--iofs PATH] [--mode blocking] [--transport dev]
                              [--iodepth 16] [--rw randread] [--seconds 8] [--rate 500]
                              [--out DIR]

One daemon (``PATH mount --foreground``: this checkout's ``.venv/bin/iofs`` unless
``--iofs`` names another checkout's, for a before/after) serves a 64 MiB file kept in
memory, so that the disk is out of the picture: the backing directory is made under
``--dir``, /dev/shm by default (tmpfs, which takes O_DIRECT since Linux 6.6; the
``drop_caches`` that other people's benchmarks issue on a shared machine cannot evict
it). fio reads the file at random in 4 KiB O_DIRECT requests (libaio at ``--iodepth``;
psync at 1) for the whole run; ``--rw randwrite`` writes it at random in 4 KiB
buffered write(2)s instead (psync: fio's ``randwrite-4k-buffered``, one synchronous
FUSE WRITE each):

1. for ``--seconds`` the daemon runs alone: its CPU time (user + system, /proc) over
   the FUSE requests it counted is the **CPU per request**;
2. then py-spy samples it (``--native --idle``, ``--rate`` Hz) for ``--seconds`` more
   (not with ``--no-profile``, for before/after pairs of the CPU per request alone).

The samples are grouped by who spends them (the kernel's /dev/fuse, iofs, trio,
pyfuse3/libfuse...) and the top entries by self time are listed; samples idle in
epoll_wait are left out. The raw samples stay in ``OUT/profile-MODE-TRANSPORT.txt``
(py-spy's collapsed stacks: flamegraph.pl or speedscope read them), the figures in
``OUT/profile-MODE-TRANSPORT.json``; OUT is a new directory in /var/tmp unless ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Who spends a sample, by the first matching frame from the leaf up: (group, needle).
#: A needle is matched against "function (file)".
GROUPS = (
    ("/dev/fuse read and reply (kernel)", ("readv (libc", "read (libc", "writev (libc")),
    ("/dev/fuse read and reply (kernel)", ("fuse_session_receive_buf", "fuse_send_msg")),
    ("iofs: backing system calls", ("pread64", "preadv", "pwrite", "syscall (libc", "fstat")),
    ("iofs: loop-lag heartbeat", ("looplag.py",)),
    ("trio: epoll registration and events", ("epoll_ctl", "_io_epoll.py")),
    ("iofs: own Python (handler, statistics, engine)", ("iofs/",)),
    ("trio: scheduler, tasks, locks", ("trio/",)),
)
OTHER = "pyfuse3/libfuse/CPython other"


def _frame(frame: str) -> str:
    """``function (path/file.py:123)`` without the line and the path's head."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/iofs/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/iofs/":
                where = "iofs/" + where
            break
    return f"{name} ({where})"


def _idle(stack: list[str]) -> bool:
    leaf = stack[-1]
    return "epoll_wait" in leaf or "__GI_epoll_wait" in leaf


def summarize(raw: Path, top: int) -> dict[str, object]:
    """Groups and top entries (self and inclusive shares of the busy samples)."""
    selfs: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        stack = [_frame(f) for f in stack_text.split(";")[1:]]  # [0] is the thread
        if not stack:
            continue
        if _idle(stack):
            idle += count
            continue
        busy += count
        selfs[stack[-1]] += count
        for name in set(stack):
            inclusive[name] += count
        groups[_group(stack)] += count
    share = 100.0 / busy if busy else 0.0
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "groups": {name: round(n * share, 1) for name, n in groups.most_common()},
        "top": [
            (round(n * share, 1), round(inclusive[name] * share, 1), name)
            for name, n in selfs.most_common(top)
        ],
    }


def _group(stack: list[str]) -> str:
    for frame in reversed(stack):
        for group, needles in GROUPS:
            if any(needle in frame for needle in needles):
                return group
    return OTHER


def _requests(mountpoint: Path) -> int:
    document = json.loads(os.getxattr(mountpoint, "iofs.statistics"))
    return sum(int(op["count"]) for op in document["operations"].values())


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    backing, mountpoint = work / "backing", Path(tempfile.mkdtemp(prefix="iofs-profile-mnt-"))
    backing.mkdir()
    data = backing / "data"
    with open(data, "wb") as out:
        for _ in range(64):
            out.write(os.urandom(1 << 20))
    data.read_bytes()  # into the backing page cache
    command = [str(args.iofs), "mount", "--foreground", "--mode", args.mode]
    command += ["--transport", args.transport, str(backing), str(mountpoint)]
    log = open(work / "daemon.log", "wb")  # noqa: SIM115  (closed below)
    daemon = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    fio = None
    try:
        for _ in range(200):
            if os.path.ismount(mountpoint) or daemon.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.ismount(mountpoint):
            raise SystemExit(
                f"profile_daemon: the mount failed: {(work / 'daemon.log').read_text()}"
            )
        engine = "libaio" if args.iodepth > 1 and args.rw == "randread" else "psync"
        direct = int(args.rw == "randread")
        fio = subprocess.Popen(
            ["fio", "--name=profile", f"--filename={mountpoint / 'data'}", f"--ioengine={engine}",
             f"--iodepth={args.iodepth}", f"--direct={direct}", f"--rw={args.rw}", "--bs=4k",
             "--size=64m",
             f"--runtime={2 * args.seconds + 3}", "--time_based=1", "--output-format=json",
             f"--output={work / 'fio.json'}"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # fio opens the file and reaches its queue depth
        (user, system), requests = _cpu_seconds(daemon.pid), _requests(mountpoint)
        time.sleep(args.seconds)
        user_after, system_after = _cpu_seconds(daemon.pid)
        user, system = user_after - user, system_after - system
        requests = _requests(mountpoint) - requests - 1
        raw = args.out / f"profile-{args.mode}-{args.transport}.txt"
        if args.no_profile:
            raw.write_text("")
        else:
            subprocess.run(
                [args.py_spy, "record", "--pid", str(daemon.pid), "--duration", str(args.seconds),
                 "--rate", str(args.rate), "--native", "--idle", "--format", "raw", "-o", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
        fio.terminate()  # enough: its own figures are not used
        fio.wait()
    finally:
        if fio is not None and fio.poll() is None:
            fio.kill()
            fio.wait()
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        mountpoint.rmdir()
    summary = summarize(raw, args.top)
    return {
        "iofs": str(args.iofs),
        "mode": args.mode,
        "transport": args.transport,
        "iodepth": args.iodepth,
        "rw": args.rw,
        "requests_per_s": round(requests / args.seconds),
        "cpu_us_per_request": round((user + system) / requests * 1e6, 1) if requests else None,
        "user_us_per_request": round(user / requests * 1e6, 1) if requests else None,
        "raw": str(raw),
        **summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iofs", type=Path, default=ROOT / ".venv" / "bin" / "iofs")
    parser.add_argument("--mode", default="blocking")
    parser.add_argument("--transport", default="dev", help="(default: dev, iofs's default)")
    parser.add_argument("--iodepth", type=int, default=16)
    parser.add_argument(
        "--rw",
        choices=("randread", "randwrite"),
        default="randread",
        help="randwrite: 4 KiB buffered writes (psync), as fio's randwrite-4k-buffered",
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--no-profile", action="store_true", help="CPU per request only")
    parser.add_argument(
        "--out", type=Path, help="where the results go (default: a new directory in /var/tmp)"
    )
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="backing's parent")
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("fio") is None or not Path(args.py_spy).exists():
        sys.exit("profile_daemon: needs root, fio and py-spy")
    if args.out is None:  # not the current directory: a checkout's would collect them
        args.out = Path(tempfile.mkdtemp(prefix="iofs-profile-results-", dir="/var/tmp"))
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="iofs-profile-", dir=args.dir))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (args.out / f"profile-{args.mode}-{args.transport}.json").write_text(
        json.dumps(result, indent=1)
    )
    print(
        f"{args.mode} on {args.transport}, {args.rw} at iodepth {args.iodepth} ({args.iofs}): "
        f"{result['requests_per_s']} requests/s, {result['cpu_us_per_request']} µs CPU per "
        f"request ({result['user_us_per_request']} µs user), {result['busy_samples']} busy samples"
    )
    for group, share in result["groups"].items():  # type: ignore[attr-defined]
        print(f"  {share:5.1f}%  {group}")
    print("  self%  incl%  function")
    for self_share, inclusive, name in result["top"]:  # type: ignore[attr-defined]
        print(f"  {self_share:5.1f}  {inclusive:5.1f}  {name}")
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
