#!/usr/bin/env python3
"""Side-by-side fio comparison: native, the reference FUSE daemons, iofs in each mode.

Usage (root, from the checkout; needs fio):
    scripts/compare_peers.py [--peers DIR] [--rounds N] [--modes blocking xfs ...]
                             [--transports dev pyfuse3 uring] [--before IOFS --before-modes ...]
                             [--hp-caching] [--jobs a,b] [--dir DIR] [--out DIR]

The same fio matrix (the quick form of ``../shared/bench/fiomatrix.py``: 128 MiB files,
4 s per job) runs on a fresh directory natively, through each target, one target after
another and ROUNDS times with the targets interleaved, so that drift hits all alike.
Targets: ``native``; with ``--peers`` (a folder built by ``../shared/bench/build-peers.sh``)
libfuse's ``passthrough_hp --nopassthrough`` (``hp-nopt``) and pyfuse3's fixed example
(``pyfuse3-example``) where they are built; and ``iofs-MODE-TRANSPORT`` for each mode
and each of ``--transports`` (default: dev, iofs's default), with this checkout's
``.venv/bin/iofs``; the passthrough mode, on dev only, is ``iofs-passthrough``. (Tables
made before the default became dev named the pyfuse3 rows ``iofs-MODE`` and the dev
ones ``iofs-MODE-dev``.) ``--before`` names another checkout's ``iofs`` (e.g.
``../main/.venv/bin/iofs``), run in ``--before-modes`` on the same transports as
``iofs-MODE-TRANSPORT-before``: a before/after in one run (``iofs-MODE-before`` for an
iofs from before the transports). ``--hp-caching`` adds
``iofs-MODE-TRANSPORT-hpcache`` for each mode: iofs mounted with the caching choices
``passthrough_hp --nopassthrough`` makes by default (`HP_CACHING`: the writeback cache,
entries and attributes cached for 86,400 s), so that iofs's own cost can be told apart
from a difference in caching policy. Without peers only native and iofs run.

Every fio result is appended to ``OUT/results.jsonl`` (with the command and the round);
the table printed at the end gives medians, and each iofs mode's ratio to ``hp-nopt``
(to native without peers) from the same run. Timings are for this machine at this time:
compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iofs.daemon import stop_peer_daemon
from iofs.transport import TRANSPORT_NAMES

ROOT = Path(__file__).resolve().parent.parent
IOFS = ROOT / ".venv" / "bin" / "iofs"
SIZE, RUNTIME = "128M", 4

#: What libfuse's passthrough_hp (3.17, example/passthrough_hp.cc) does unless told
#: --nocache: its timeout is 86,400 s for entries and attributes, and with a timeout and
#: without passthrough it asks for FUSE_CAP_WRITEBACK_CACHE (sfs_init). iofs's defaults
#: are 1 s and no writeback cache, so that changes made beside the mount show.
HP_CACHING = ("--writeback-cache", "--entry-timeout", "86400", "--attr-timeout", "86400")

#: name -> fio arguments; the intent is in the name (see ../shared/bench/fiomatrix.py).
JOBS = {
    "seqread-1m": "--rw=read --bs=1M --ioengine=psync --direct=0",
    "seqwrite-1m": "--rw=write --bs=1M --ioengine=psync --direct=0 --end_fsync=1",
    "randread-4k-qd1-direct": "--rw=randread --bs=4k --ioengine=psync --direct=1",
    "randread-4k-qd16-direct": "--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1",
    "randread-4k-qd16-buffered": "--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=0",
    "randwrite-4k-qd16-direct": "--rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1",
    "randwrite-4k-buffered": "--rw=randwrite --bs=4k --ioengine=psync --direct=0 --end_fsync=1",
    "write-4k-fdatasync": "--rw=write --bs=4k --ioengine=psync --fdatasync=1",
    "randread-4k-4jobs-direct": "--rw=randread --bs=4k --ioengine=psync --direct=1 --numjobs=4 "
    "--group_reporting",
}
META = {
    "filecreate": "--ioengine=filecreate --nrfiles=3000 --filesize=4k --openfiles=1 "
    "--create_on_open=1",
    "filestat": "--ioengine=filestat --nrfiles=3000 --filesize=4k --openfiles=1",
    "filedelete": "--ioengine=filedelete --nrfiles=3000 --filesize=4k --openfiles=1",
}


def targets(
    peers: Path | None,
    modes: list[str],
    transports: tuple[str, ...] = ("dev",),
    hp_caching: bool = False,
) -> dict[str, list[str] | None]:
    found: dict[str, list[str] | None] = {"native": None}
    if peers is not None:
        if (peers / "passthrough_hp").exists():
            found["hp-nopt"] = [str(peers / "passthrough_hp"), "--foreground", "--nopassthrough"]
            if "passthrough" in modes:  # FUSE passthrough: the reference for iofs's mode
                found["hp-passthrough"] = [str(peers / "passthrough_hp"), "--foreground"]
        example = peers / "passthroughfs_fixed.py"
        if example.exists() and (peers / "venv" / "bin" / "python").exists():
            found["pyfuse3-example"] = [
                str(peers / "venv" / "bin" / "python"),
                str(example),
                "--allow-other",
            ]
    for mode in modes:
        # Only the dev transport can pass files through.
        for transport in ("dev",) if mode == "passthrough" else transports:
            label = f"iofs-{mode}" + ("" if mode == "passthrough" else f"-{transport}")
            command = [str(IOFS), "mount", "--foreground", "--mode", mode]
            command = [*command, "--transport", transport]
            found[label] = command
            if hp_caching and mode != "passthrough":  # passthrough refuses the writeback cache
                found[f"{label}-hpcache"] = [*command, *HP_CACHING]
    return found


def before_targets(
    iofs: Path, modes: list[str], transports: tuple[str, ...]
) -> dict[str, list[str] | None]:
    """``iofs-MODE-TRANSPORT-before``: the same targets with another checkout's iofs.

    An iofs from before the transports (no ``--transport``: pyfuse3 only) gives
    ``iofs-MODE-before``, whatever ``--transports`` says.
    """
    found: dict[str, list[str] | None] = {}
    usage = subprocess.run(
        [str(iofs), "mount", "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--transport" not in usage:
        for mode in modes:
            found[f"iofs-{mode}-before"] = [str(iofs), "mount", "--foreground", "--mode", mode]
        return found
    for mode in modes:
        for transport in transports:
            label = f"iofs-{mode}-{transport}"
            command = [str(iofs), "mount", "--foreground", "--mode", mode]
            found[f"{label}-before"] = [*command, "--transport", transport]
    return found


def run_fio(directory: Path, name: str, args: str, meta: bool) -> dict[str, object]:
    command = [
        "fio",
        f"--name={'meta' if meta else name}",
        f"--directory={directory}",
        f"--size={'12M' if meta else SIZE}",
        "--output-format=json",
        "--randrepeat=1",
        "--verify_state_save=0",
        "--allow_file_create=1",
        *args.split(),
    ]
    if not meta:
        command.append(f"--runtime={RUNTIME}")
        if "read" in args and "write" not in args:
            command.append("--time_based=1")
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    result: dict[str, object] = {"job": name, "rc": done.returncode, "command": command}
    result["wall"] = round(time.monotonic() - started, 2)
    try:
        job = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])["jobs"][
            0
        ]
    except ValueError:
        result["error"] = (done.stderr or done.stdout)[-300:]
        return result
    for kind in ("read", "write"):
        if job[kind]["io_bytes"]:
            result["iops"] = round(job[kind]["iops"], 1)
            result["mibs"] = round(job[kind]["bw_bytes"] / 2**20, 1)
    result.setdefault("iops", 0)
    return result


def run_target(
    label: str, command: list[str] | None, jobs: list[str], work: Path
) -> list[dict[str, object]]:
    backing, mountpoint = work / "src", work / "mnt"
    for path in (backing, mountpoint):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    daemon = None
    where = backing
    if command is not None:
        log = open(work / f"{label}.log", "ab")  # noqa: SIM115  (closed below)
        daemon = subprocess.Popen(
            [*command, str(backing), str(mountpoint)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        for _ in range(100):
            if os.path.ismount(mountpoint) or daemon.poll() is not None:
                break
            time.sleep(0.1)
        if not os.path.ismount(mountpoint):
            print(f"{label}: mount failed (see {work / (label + '.log')})", file=sys.stderr)
            daemon.kill()
            daemon.wait()
            return []
        where = mountpoint
    results = []
    try:
        for name in jobs:
            sub = where / name
            sub.mkdir()
            result = run_fio(sub, name, {**JOBS, **META}[name], name in META)
            result["target"] = label
            results.append(result)
            print(
                f"{label:18} {name:28} {result.get('iops', 0):>10} IOPS {result.get('error', '')}",
                flush=True,
            )
            if name not in ("filecreate", "filestat"):  # filestat/filedelete reuse those files
                shutil.rmtree(sub, ignore_errors=True)
    finally:
        if daemon is not None:
            stop_peer_daemon(daemon, mountpoint, timeout=20)
    return results


#: Issue 12's targets: (job, the blocking row's reference, the least ratio wanted). The
#: reference "iofs-xfs" is xfs mode's row over blocking mode's (the same transport).
TARGETS = (
    ("randwrite-4k-qd16-direct", "hp-nopt", 0.6),
    ("randwrite-4k-qd16-direct", "pyfuse3-example", 1.0),
    ("randwrite-4k-buffered", "hp-nopt", 0.8),
    ("seqwrite-1m", "hp-nopt", 1.0),
    ("write-4k-fdatasync", "hp-nopt", 0.9),
    ("randread-4k-qd16-direct", "hp-nopt", 0.75),
    ("randread-4k-qd16-direct", "iofs-xfs", 0.6),
    ("filecreate", "hp-nopt", 0.9),
    ("filedelete", "hp-nopt", 0.8),
)

Medians = dict[tuple[str, str], float]


def medians_of(results: list[dict[str, object]], labels: list[str], jobs: list[str]) -> Medians:
    """(target, job) -> the median over the rounds (MiB/s for the 1m jobs, else IOPS)."""
    medians: Medians = {}
    for label in labels:
        for job in jobs:
            figures = [
                float(r["mibs"] if job.endswith("1m") else r["iops"])  # type: ignore[arg-type]
                for r in results
                if r["target"] == label and r["job"] == job and "iops" in r
            ]
            if figures:
                medians[(label, job)] = statistics.median(figures)
    return medians


def target_table(medians: Medians, labels: list[str]) -> str:
    """Issue 12's targets for each blocking-mode row of the run (empty if none can say)."""
    rows = [label for label in labels if label.startswith("iofs-blocking")]
    lines = []
    for job, reference, wanted in TARGETS:
        cells = []
        for row in rows:
            other = row.replace("iofs-blocking", "iofs-xfs", 1) if reference == "iofs-xfs" else None
            value = medians.get((other or row, job))
            base = medians.get((row if other else reference, job))
            if value is None or not base:
                cells.append("-")
                continue
            ratio = value / base
            cells.append(f"{ratio:.2f}x " + ("met" if ratio >= wanted else "**missed**"))
        if any(cell != "-" for cell in cells):
            what = "xfs / blocking" if reference == "iofs-xfs" else f"blocking / {reference}"
            lines.append(f"| {job}, {what} | >= {wanted}x | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["| target | wanted | " + " | ".join(rows) + " |", "|---|---:|" + "---:|" * len(rows)]
    return "\n".join(head + lines)


def table(results: list[dict[str, object]], labels: list[str], jobs: list[str]) -> str:
    base = "hp-nopt" if "hp-nopt" in labels else "native"
    medians = medians_of(results, labels, jobs)
    lines = [
        "| job | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for job in jobs:
        cells = []
        for label in labels:
            value = medians.get((label, job))
            if value is None:
                cells.append("-")
                continue
            text = f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}"
            own_base = "hp-passthrough" if label == "iofs-passthrough" else base
            reference = medians.get((own_base if own_base in labels else base, job))
            if label.startswith("iofs") and reference:
                text += f" ({value / reference:.2f}x)"
            cells.append(text)
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nMedians; MiB/s for the 1m jobs, IOPS otherwise; iofs's ratio to {base} in the same run"
        + (" (iofs-passthrough's to hp-passthrough)." if "hp-passthrough" in labels else ".")
    )
    targets_met = target_table(medians, labels)
    if targets_met:
        lines.append("\nIssue 12's targets, from the same medians:\n\n" + targets_met)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, help="folder built by build-peers.sh")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["blocking", "xfs", "nonblocking"])
    parser.add_argument("--transports", nargs="+", default=["dev"], choices=list(TRANSPORT_NAMES))
    parser.add_argument("--before", type=Path, help="another checkout's iofs, for a before")
    parser.add_argument("--before-modes", nargs="+", default=["blocking"])
    parser.add_argument(
        "--hp-caching",
        action="store_true",
        help="also run each iofs mode with passthrough_hp's caching (writeback cache, "
        "86400 s timeouts): rows iofs-MODE-TRANSPORT-hpcache",
    )
    parser.add_argument("--jobs", help="comma-separated subset of the jobs")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to work")
    parser.add_argument("--out", type=Path, help="keep results.jsonl here (default: a new dir)")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("fio") is None:
        sys.exit("compare_peers: needs root (drop_caches, allow_other) and fio")
    if not IOFS.exists():
        sys.exit(f"compare_peers: {IOFS} is missing: run scripts/setup.sh")
    jobs = list({**JOBS, **META})
    if args.jobs:
        jobs = [job for job in jobs if job in args.jobs.split(",")]
    chosen = targets(args.peers, args.modes, tuple(args.transports), args.hp_caching)
    if args.before is not None:
        chosen.update(before_targets(args.before, args.before_modes, tuple(args.transports)))
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="compare-", dir=args.dir))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compare-work-", dir=args.dir))
    results: list[dict[str, object]] = []
    try:
        with open(out / "results.jsonl", "a") as sink:
            for round_ in range(1, args.rounds + 1):
                for label, command in chosen.items():
                    for result in run_target(label, command, jobs, work):
                        result["round"] = round_
                        sink.write(json.dumps(result) + "\n")
                        results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{' '.join(sys.argv)}  ({args.rounds} round(s); results in {out}/results.jsonl)\n")
    print(table(results, list(chosen), jobs))


if __name__ == "__main__":
    main()
