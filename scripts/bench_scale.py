#!/usr/bin/env python3
"""Scale benchmark: walk a tree of many files natively, through iofs and through libfuse's
passthrough_hp, under several open-file limits; time, daemon RSS and descriptors.

Usage (as root, from the repository's root)::

    .venv/bin/python scripts/bench_scale.py [--files 200000] [--base /var/tmp]
        [--results DIR] [--passthrough-hp /var/tmp/peers/passthrough_hp]
        [--targets native iofs iofs-by-name passthrough_hp] [--limits default soft1024 hard1024]

The tree (``--files`` empty files in 100 directories of 10 subdirectories each) is built
under ``--base`` and removed afterwards. Each target runs on a fresh mount after the
caches are dropped, four steps in order: ``find -type f | wc -l``, ``du -s``, an lstat of
every file (one process, in the order of the listing) and a parallel walk (4 ``find``
processes over the top directories). The daemon is started under each limit:

- ``default``: this machine's limit, as the shell has it;
- ``soft1024``: a default Debian login (soft 1024, hard as it is); daemons may raise it;
- ``hard1024``: soft and hard 1024, and no CAP_SYS_RESOURCE to raise the hard one.

``iofs-by-name`` is iofs with ``--no-file-handles`` (as a user without CAP_DAC_READ_SEARCH
runs it). A sampler reads the daemon's descriptors and RSS every 0.1 s for the peaks.
The results directory keeps every command, its output, ``results.json`` and
``table.txt``. Timings are one run each on a shared machine: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from iofs.control import read_statistics
from iofs.daemon import start_daemon, stop_daemon, stop_peer_daemon
from iofs.live_mounts import find_mount
from iofs.mount import MountOptions

TOP_DIRS = 100
SUB_DIRS = 10
LIMITS: dict[str, tuple[int, int | None] | None] = {
    "default": None,
    "soft1024": (1024, None),
    "hard1024": (1024, 1024),
}
TARGETS = ("native", "iofs", "iofs-by-name", "passthrough_hp")

STAT_EVERY_FILE = """
import os, sys
root, listing = sys.argv[1], sys.argv[2]
count = errors = 0
with open(listing) as names:
    for name in names:
        count += 1
        try:
            os.lstat(os.path.join(root, name.rstrip("\\n")))
        except OSError:
            errors += 1
print(count, errors)
"""


@dataclass
class Step:
    name: str
    command: str
    seconds: float
    status: int
    output: str
    errors: str


@dataclass
class Run:
    target: str
    limit: str
    steps: list[Step] = field(default_factory=list)
    daemon_limit: str = "-"
    peak_fds: int = 0
    rss_start: int = 0
    rss_end: int = 0
    peak_rss: int = 0
    known_inodes: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    failure: str = ""


def build_tree(root: Path, files: int) -> list[str]:
    """*files* empty files under *root*; returns their relative paths in creation order."""
    per_dir = -(-files // (TOP_DIRS * SUB_DIRS))
    names: list[str] = []
    for top in range(TOP_DIRS):
        for sub in range(SUB_DIRS):
            directory = f"d{top:03d}/s{sub:02d}"
            (root / directory).mkdir(parents=True)
            for index in range(per_dir):
                if len(names) == files:
                    return names
                name = f"{directory}/f{index:05d}"
                os.close(os.open(root / name, os.O_CREAT | os.O_WRONLY, 0o644))
                names.append(name)
    return names


def limit_prefix(limit: tuple[int, int | None] | None) -> list[str]:
    if limit is None:
        return []
    soft, hard = limit
    hard_text = "" if hard is None else str(hard)
    prefix = ["prlimit", f"--nofile={soft}:{hard_text}", "--"]
    if hard is not None and os.geteuid() == 0:
        prefix += ["setpriv", "--bounding-set=-sys_resource", "--"]  # root could raise it
    return prefix


class Sampler:
    """The peaks of a process's descriptors and RSS, read every 0.1 s on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_fds = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler")

    def sample(self) -> tuple[int, int]:
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        rss = rss_of(self.pid)
        self.peak_fds = max(self.peak_fds, fds)
        self.peak_rss = max(self.peak_rss, rss)
        return fds, rss

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.sample()
            except OSError:
                return  # the daemon has gone

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def fd_limit_of(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}:{hard}"
    return "-"


def drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_steps(root: Path, listing: Path) -> list[Step]:
    commands = [
        ("find", f"find {root} -type f | wc -l"),
        ("du", f"du -s {root}"),
        ("stat", f"{sys.executable} -c '{STAT_EVERY_FILE}' {root} {listing}"),
        ("parallel walk", f"cd {root} && ls | xargs -P 4 -I{{}} find {{}} -type f | wc -l"),
    ]
    steps = []
    for name, command in commands:
        start = time.monotonic()
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        seconds = time.monotonic() - start
        errors = done.stderr.strip().splitlines()
        summary = f"{len(errors)} lines on stderr, e.g. {errors[0]}" if errors else ""
        steps.append(Step(name, command, seconds, done.returncode, done.stdout.strip(), summary))
    return steps


def start_peer(program: list[str], backing: Path, mountpoint: Path) -> subprocess.Popen[bytes]:
    daemon = subprocess.Popen(
        [*program, "--foreground", str(backing), str(mountpoint)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while find_mount(mountpoint) is None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            stop_peer_daemon(daemon, mountpoint)
            raise RuntimeError(f"{program[-1]} did not mount {mountpoint}")
        time.sleep(0.01)
    return daemon


def run_target(
    target: str,
    limit_name: str,
    backing: Path,
    mountpoint: Path,
    listing: Path,
    results: Path,
    peer: Path | None,
) -> Run:
    run = Run(target, limit_name)
    drop_caches()
    if target == "native":
        run.steps = run_steps(backing, listing)
        return run
    prefix = limit_prefix(LIMITS[limit_name])
    log = results / f"{target}-{limit_name}.log"
    daemon: subprocess.Popen[bytes]
    if target == "passthrough_hp":
        assert peer is not None
        daemon = start_peer([*prefix, str(peer)], backing, mountpoint)
    else:
        opts = MountOptions(
            backing, mountpoint, log_file=log, file_handles=target != "iofs-by-name"
        )
        daemon = start_daemon(opts, [*prefix, sys.executable, "-m", "iofs"])
    try:
        with Sampler(daemon.pid) as sampler:
            run.daemon_limit = fd_limit_of(daemon.pid)
            run.rss_start = sampler.sample()[1]
            run.steps = run_steps(mountpoint, listing)
            run.rss_end = sampler.sample()[1]
        run.peak_fds, run.peak_rss = sampler.peak_fds, sampler.peak_rss
        if target == "passthrough_hp":
            run.known_inodes = sampler.peak_fds  # one descriptor per inode it knows
        else:
            snapshot = read_statistics(mountpoint)
            run.counters = dict(snapshot.extra)
            run.known_inodes = run.counters.get("inodes_max", 0)
    except (OSError, RuntimeError) as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if target == "passthrough_hp":
            stop_peer_daemon(daemon, mountpoint)
        else:
            stop_daemon(daemon, mountpoint)
    return run


def verdict(step: Step, files: int) -> str:
    if step.name in ("find", "parallel walk"):
        ok = step.output == str(files)
    elif step.name == "stat":
        ok = step.output == f"{files} 0"
    else:
        ok = step.status == 0
    ok = ok and not step.errors
    return f"{step.seconds:.1f}" if ok else f"FAIL {step.seconds:.1f}"


def table(runs: Sequence[Run], files: int) -> str:
    head = [
        "target",
        "limit",
        "daemon limit",
        "find s",
        "du s",
        "stat s",
        "parallel s",
        "peak fds",
        "peak RSS MiB",
        "peak inodes",
        "RSS/inode",
    ]
    rows = [head]
    for run in runs:
        cells = [run.target, run.limit, run.daemon_limit]
        cells += [verdict(step, files) for step in run.steps] or ["-"] * 4
        if run.target == "native":
            cells += ["-"] * 4
        else:
            grown = run.peak_rss - run.rss_start
            per_inode = f"{grown / run.known_inodes:.0f} B" if run.known_inodes else "-"
            cells += [
                f"{run.peak_fds:,}",
                f"{run.peak_rss / 2**20:.1f}",
                f"{run.known_inodes:,}",
                per_inode,
            ]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    failures = [
        f"{run.target} {run.limit} {step.name}: status {step.status}, output {step.output!r}"
        f"{', ' + step.errors if step.errors else ''}"
        for run in runs
        for step in run.steps
        if verdict(step, files).startswith("FAIL")
    ]
    failures += [f"{run.target} {run.limit}: {run.failure}" for run in runs if run.failure]
    return "\n".join(lines + (["", *failures] if failures else []))


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--base", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--results", type=Path)
    parser.add_argument(
        "--passthrough-hp", type=Path, default=Path("/var/tmp/peers/passthrough_hp")
    )
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--limits", nargs="+", choices=list(LIMITS), default=list(LIMITS))
    args = parser.parse_args(argv)
    # Stopped from outside (also when started in the background, where SIGINT is
    # ignored): unmount and remove the tree on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: Path = args.results or args.base / f"iofs-scale-{stamp}"
    results.mkdir(parents=True, exist_ok=True)
    peer: Path | None = args.passthrough_hp
    targets: list[str] = args.targets
    if "passthrough_hp" in targets and (peer is None or not os.access(peer, os.X_OK)):
        print(f"bench_scale: no passthrough_hp at {peer}: native and iofs only", file=sys.stderr)
        targets = [t for t in targets if t != "passthrough_hp"]
        peer = None
    work = args.base / f"iofs-scale-tree-{stamp}"
    backing, mountpoint = work / "tree", work / "mnt"
    backing.mkdir(parents=True)
    mountpoint.mkdir()
    runs: list[Run] = []
    try:
        start = time.monotonic()
        names = build_tree(backing, args.files)
        listing = results / "files.txt"
        listing.write_text("".join(f"{name}\n" for name in names))
        print(f"built {len(names):,} files in {time.monotonic() - start:.1f}s", flush=True)
        for limit in args.limits:
            for target in targets:
                if target == "native" and limit != args.limits[0]:
                    continue  # no daemon: the limit does not matter
                run = run_target(target, limit, backing, mountpoint, listing, results, peer)
                runs.append(run)
                print("\n".join(table([run], len(names)).splitlines()[2:]), flush=True)
                (results / "results.json").write_text(
                    json.dumps([asdict(r) for r in runs], indent=2) + "\n"
                )
    finally:
        if find_mount(mountpoint) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = table(runs, args.files)
    (results / "table.txt").write_text(text + "\n")
    print(text)
    print(f"results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
