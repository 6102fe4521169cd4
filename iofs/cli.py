"""Command line: parses ``iofs COMMAND ...`` and dispatches through `COMMANDS` to the
function in `iofs.cli_commands` that runs the command.

Mounts: ``mount``, ``umount``. A live mount (any path inside it): ``mode`` (show or
switch), ``faults`` (fault injection), ``stats`` (a snapshot), ``top`` (a dashboard),
``log`` (the daemon's log). What can run here: ``engines`` (``--bench`` measures them),
``modes``. Measurements: ``bench`` (fio, natively and through iofs), ``demo``, ``switch``
(switching under load), ``soak`` (long self-checking run), ``report`` (render a run's
results again).

Every failure is one line on stderr and an exit status that says what kind it is
(`ExitStatus`: 1 failed, 2 bad usage, 3 bad path, 4 mount conflict, 5 bad setting,
6 unavailable here, 7 not permitted, 130 interrupted). ``--debug`` adds tracebacks.

Why this module is long: it is the whole command-line grammar in one place, every
option of every command with its help text (argparse); what the commands do is in
`iofs.cli_commands`. Nothing here loads pyfuse3: client commands stay light.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, cli_commands
from .backends import ENGINES, EngineConfig
from .cli_commands import EXISTING
from .durations import parse_duration
from .errors import ExitStatus, IofsError
from .modes import CACHINGS, DEFAULT_MODE, MODES


class _TransportNames:
    """The choices of ``--transport``, looked up when an argument is checked or help is
    shown: `iofs.transport` loads pyfuse3, which every other command does without."""

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    @staticmethod
    def _names() -> Sequence[str]:
        from .transport import TRANSPORT_NAMES

        return TRANSPORT_NAMES


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default where its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, True, argparse.SUPPRESS)
            or isinstance(action.default, list)
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(ExitStatus.USAGE, f"iofs: error: {message} (see '{self.prog} --help')\n")


def _fuse_option_list(text: str) -> list[str]:
    options = [o.strip() for o in text.split(",") if o.strip()]
    if not options:
        raise argparse.ArgumentTypeError("empty -o option")
    return options


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _more_than_zero(text: str) -> float:
    value = _positive_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _fd_budget(text: str) -> int:
    from .inodes import MIN_FD_BUDGET

    value = _positive_int(text)
    if value < MIN_FD_BUDGET:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_FD_BUDGET}: {text}")
    return value


def _seconds(text: str) -> float:
    """A time (``20ms``, ``2s``, ``10m``, ``1h``, or plain seconds), more than 0."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds_or_zero(text: str) -> float:
    """A time as `_seconds` takes it, or 0."""
    try:
        return parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: How every option that takes a time describes its syntax.
TIME = "TIME"


def _fio_size(text: str) -> str:
    from .fiojobs import parse_size

    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


#: The help of the PATH that control commands take.
_IN_MOUNT = "the mountpoint, or any path inside the mount (as for df)"


def _add_existing(parser: argparse.ArgumentParser) -> None:
    for kind in EXISTING:
        parser.add_argument(
            f"--{kind}",
            type=Path,
            default=None,
            metavar="DIR",
            help=f"run the {kind} target in a fresh directory under DIR, a mounted {kind} "
            "filesystem (e.g. a real disk), instead of on a loop image",
        )


_DEBUG_HELP = "debug logging, and a traceback with any error"


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after the command too (``iofs mount --debug ...``)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)


def _add_engine_bench(engines: argparse.ArgumentParser) -> None:
    """``iofs engines --bench`` and its options (those of the former
    scripts/bench_engines.py)."""
    from .engine_workloads import WORKLOADS

    engines.add_argument(
        "--bench", action="store_true", help="measure the engines (see the description)"
    )
    bench = engines.add_argument_group("with --bench")
    bench.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the scratch data file is made, on the disk to measure",
    )
    bench.add_argument("--results", type=Path, default=Path("results"), help="where runs are kept")
    bench.add_argument(
        "--size-mib",
        type=_positive_int,
        default=None,
        metavar="N",
        help="data file size in MiB (default 1024, so that a fast engine's cold run stays "
        "mostly cold: 256 ended fully cached; 16 with --quick)",
    )
    bench.add_argument(
        "--seconds",
        type=_seconds,
        default=None,
        metavar="S",
        help="duration of each run (default 1.2; 0.3 with --quick)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        metavar="N",
        help="rounds of every workload and engine (default 3; 1 with --quick)",
    )
    bench.add_argument(
        "--pick",
        choices=("median", "best"),
        default="median",
        help="which round to show, by ops/s (default: median; all are kept)",
    )
    bench.add_argument(
        "--engines",
        metavar="NAME,...",
        help="only these engines (default: every registered one that can run here)",
    )
    bench.add_argument(
        "--workloads",
        metavar="KEY,...",
        help=f"only these workloads (default: all: {', '.join(w.key for w in WORKLOADS)})",
    )
    bench.add_argument(
        "--queue-depth",
        type=_positive_int,
        default=EngineConfig.queue_depth,
        metavar="N",
        help="the engines' queue depth (kernel-async engines)",
    )
    bench.add_argument(
        "--workers",
        type=_positive_int,
        default=EngineConfig.workers,
        metavar="N",
        help="the engines' worker threads (threads, and nowait's fallback)",
    )
    bench.add_argument(
        "--heartbeat-ms",
        type=_more_than_zero,
        default=1.0,
        metavar="MS",
        help="the heartbeat's sleep (default 1)",
    )
    bench.add_argument("--seed", type=int, default=1, help="seed of the random offsets (default 1)")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 16 MiB file, 0.3 s per run, 1 round (unless set explicitly)",
    )
    bench.add_argument(
        "--drop-caches",
        action="store_true",
        help="if fadvise(DONTNEED) leaves the file cached, drop the whole page cache "
        "(root; affects everyone on the machine)",
    )
    bench.add_argument("--keep", action="store_true", help="keep the scratch data file")
    engines.add_argument(
        "--render",
        type=Path,
        metavar="RUN_DIR",
        help="print the tables of an earlier --bench run from its results.json; measure "
        "nothing (iofs report RUN_DIR does the same)",
    )
    # What the command checks: an option of the group given without --bench is a mistake.
    engines.set_defaults(
        bench_options={
            action.dest: (action.option_strings[-1], action.default)
            for action in bench._group_actions
        }
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iofs",
        description="A FUSE filesystem that makes I/O paths visible. Times are given as "
        "20ms, 2s, 10m, 1h or plain seconds; exit statuses are listed in the README.",
    )
    parser.add_argument("--version", action="version", version=f"iofs {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount BACKING at MOUNTPOINT",
        description="Mount the directory BACKING at MOUNTPOINT through iofs. Returns once "
        "the mount serves requests; the daemon stays in the background (its log: 'iofs log "
        "MOUNTPOINT'). Also run by mount(8) as mount.fuse.iofs: 'mount -t fuse.iofs BACKING "
        "MOUNTPOINT -o mode=xfs'.",
    )
    mount.add_argument("backing", type=Path, metavar="BACKING", help="the directory to serve")
    mount.add_argument(
        "mountpoint", type=Path, metavar="MOUNTPOINT", help="the directory to mount on"
    )
    mount.add_argument(
        "-o",
        dest="fuse_options",
        type=_fuse_option_list,
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="FUSE mount options, e.g. allow_other, ro",
    )
    mount.add_argument(
        "--mode",
        default=DEFAULT_MODE,
        metavar="NAME",
        help=f"I/O strategy ({', '.join(MODES)}; default {DEFAULT_MODE}; see 'iofs modes')",
    )
    mount.add_argument(
        "--engine",
        default=None,
        metavar="NAME",
        help=f"override the mode's data engine ({', '.join(sorted(ENGINES))})",
    )
    mount.add_argument(
        "--direct",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override whether aligned requests go through O_DIRECT backing fds",
    )
    mount.add_argument(
        "--cache",
        choices=sorted(CACHINGS),
        default=None,
        help="override the mode's kernel caching (none: every request reaches the daemon)",
    )
    mount.add_argument(
        "--queue-depth",
        type=_positive_int,
        default=EngineConfig.queue_depth,
        metavar="N",
        help=f"most data operations in flight in the engine (default {EngineConfig.queue_depth})",
    )
    mount.add_argument(
        "--max-background",
        type=_positive_int,
        default=None,
        metavar="N",
        help="the FUSE connection's max_background: how many asynchronous requests the "
        "kernel sends at once (default: the queue depth; without root at most the fuse "
        "module's max_user_bgreq, and 12 on pyfuse3)",
    )
    mount.add_argument(
        "--workers",
        type=_positive_int,
        default=EngineConfig.workers,
        metavar="N",
        help=f"worker threads for the threads and nowait engines (default {EngineConfig.workers})",
    )
    mount.add_argument("-f", "--foreground", action="store_true", help="stay attached")
    mount.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="log to FILE, kept after unmounting (default: a file in /run/iofs, or "
        "$XDG_RUNTIME_DIR/iofs when not root, removed with the mount; stderr with -f)",
    )
    mount.add_argument(
        "--attr-timeout",
        type=_seconds_or_zero,
        default=1.0,
        metavar=TIME,
        help="how long the kernel may cache attributes (default 1s)",
    )
    mount.add_argument(
        "--entry-timeout",
        type=_seconds_or_zero,
        default=1.0,
        metavar=TIME,
        help="how long the kernel may cache name lookups, found or not (default 1s)",
    )
    mount.add_argument(
        "--stats-log",
        type=Path,
        metavar="FILE",
        help="append a statistics snapshot (a JSON line) to FILE every --stats-interval",
    )
    mount.add_argument(
        "--stats-interval",
        type=_seconds,
        default=1.0,
        metavar=TIME,
        help="how often --stats-log gets a line (default 1s)",
    )
    mount.add_argument(
        "--writeback-cache",
        action="store_true",
        help="let the kernel cache writes and send them in large batches "
        "(fixed for the mount's life)",
    )
    mount.add_argument(
        "--allow-fallback",
        action="store_true",
        help="if the mode's engine cannot run here, use the closest one that can "
        "(io_uring and aio stand in for each other) instead of refusing",
    )
    mount.add_argument(
        "--fd-budget",
        type=_fd_budget,
        metavar="N",
        help="most descriptors held for inodes the kernel knows (default: half the "
        "open-file limit, at most 65,536); others are opened again when needed",
    )
    mount.add_argument(
        "--no-file-handles",
        dest="file_handles",
        action="store_false",
        help="find inodes whose descriptor was let go by parent and name, even where "
        "file handles would work (they need root and a filesystem that exports them)",
    )
    mount.add_argument(
        "--no-statistics",
        dest="statistics",
        action="store_false",
        help="skip the per-request counters (to measure what they cost)",
    )
    mount.add_argument(
        "--faults",
        default="off",
        metavar="SPEC",
        help="inject faults into data operations from the start, e.g. eio=0.01 or "
        "every=100,ops=write,errno=ENOSPC or delay=20ms:0.1 (see 'iofs faults --help')",
    )
    mount.add_argument(
        "--transport",
        choices=_TransportNames(),
        default=None,
        metavar="NAME",
        help="how FUSE requests reach iofs: dev (iofs reads /dev/fuse itself and "
        "negotiates HANDLE_KILLPRIV_V2, DIRECT_IO_ALLOW_MMAP, max_background, 1 MiB "
        "requests; Linux 5.4+) or pyfuse3 (libfuse 3) or uring (dev's protocol over "
        "FUSE-over-io_uring queues, Linux 6.14+; turns fuse.enable_uring on as root); "
        "default $IOFS_TRANSPORT or dev",
    )
    _add_debug(mount)

    umount = commands.add_parser(
        "umount",
        help="unmount (also a mount whose daemon died)",
        description="Unmount an iofs mount and wait for its daemon to exit; also cleans up "
        "a mount whose daemon died. A busy mount is refused unless --lazy.",
    )
    umount.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    umount.add_argument(
        "-z",
        "--lazy",
        action="store_true",
        help="detach even if busy: the daemon exits after the last open file is closed",
    )
    _add_debug(umount)

    bench = commands.add_parser(
        "bench",
        help="fio jobs natively and through iofs in each mode, on a directory and on "
        "XFS/Btrfs images, in one report",
        description="Run fio jobs on each target filesystem natively and through iofs in "
        "each mode, and compare. Default: native and every mode that can run here, over a "
        "fresh directory, on a few core jobs (a few minutes). --full: every built-in job "
        "on the directory and on fresh XFS and Btrfs loop images (root).",
    )
    bench.add_argument(
        "--targets",
        nargs="+",
        metavar="FS",
        default=None,
        help="filesystems: dir (a fresh directory under --dir), xfs, btrfs (fresh loop "
        "images, root only, or the mounts given by --xfs/--btrfs; default: dir and those)",
    )
    bench.add_argument(
        "--modes",
        nargs="+",
        metavar="SETTING",
        default=None,
        help="native and/or iofs mode settings, e.g. native blocking xfs,engine=aio "
        "blocking,transport=uring (default: native "
        f"{' '.join(MODES)}; ',transport=NAME' mounts over that transport, the others "
        "go over $IOFS_TRANSPORT or dev)",
    )
    bench.add_argument(
        "--jobs",
        nargs="+",
        metavar="JOB",
        default=None,
        help="built-in job names or fio job files (default: rand-read-4k rand-write-4k "
        "seq-write-1m metadata mixed)",
    )
    bench.add_argument(
        "--job",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="a fio job file of your own (repeatable; runs with its own runtime unless --runtime)",
    )
    bench.add_argument(
        "--full",
        action="store_true",
        help="every built-in job on dir, xfs and btrfs, native and every mode",
    )
    bench.add_argument(
        "--engine",
        default=None,
        metavar="NAME",
        help=f"use this data engine in every mode ({', '.join(sorted(ENGINES))})",
    )
    bench.add_argument(
        "--runtime",
        type=_seconds,
        default=None,
        metavar=TIME,
        help="how long each time-based job runs (default 3s for built-in jobs)",
    )
    bench.add_argument(
        "--size", type=_fio_size, default=None, metavar="SIZE", help="file size per job, e.g. 16m"
    )
    bench.add_argument("--results", type=Path, default=Path("results"), help="where runs are kept")
    bench.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the dir target, mountpoints and images are made (default: the system "
        "temporary directory)",
    )
    _add_existing(bench)
    bench.add_argument(
        "--no-drop-caches",
        dest="drop_caches",
        action="store_false",
        help="do not drop caches before each run",
    )
    _add_debug(bench)

    demo = commands.add_parser(
        "demo",
        help="a 2-3 minute tour: each mode's signature and native XFS vs Btrfs, in plain words",
        description="A 2-3 minute tour: a few fio jobs natively and through iofs in each "
        "mode, and native XFS against Btrfs on loop images (root), with what each result "
        "shows in plain words.",
    )
    demo.add_argument(
        "--runtime",
        type=_seconds,
        default=None,
        metavar=TIME,
        help="how long each time-based job runs (default 5s)",
    )
    demo.add_argument("--results", type=Path, default=Path("results"), help="where runs are kept")
    demo.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the backing directory, mountpoints and images are made",
    )
    _add_existing(demo)
    _add_debug(demo)

    switch = commands.add_parser(
        "switch",
        help="one fio job on a fresh mount while the mode switches live: a timeline chart",
        description="Run one time-based fio job on a fresh mount while switching through "
        "a schedule of mode settings, recording fio's per-interval logs, the daemon's "
        "statistics and every switch on one clock; then read everything back through the "
        "mount with crc32c verification. Prints a per-phase table, what each switch cost "
        "and one sentence per finding; keeps a timeline chart (SVG, HTML) and the raw data "
        "in the results directory ('iofs report DIR' renders it again).",
    )
    switch.add_argument(
        "--schedule",
        nargs="+",
        required=True,
        metavar="SETTING:TIME",
        help="mode settings and how long each serves, e.g. blocking:10s xfs:10s "
        "btrfs,engine=aio:10s nonblocking:10s (the first is mounted, the others switched to)",
    )
    switch.add_argument(
        "--job",
        default=None,
        metavar="NAME|FILE",
        help="a built-in job name or a fio job file (default: rand-read-4k-direct-qd16); "
        "its runtime becomes the schedule's",
    )
    switch.add_argument(
        "--target", default="dir", metavar="FS", help="dir (default), xfs or btrfs, as for bench"
    )
    switch.add_argument(
        "--size", type=_fio_size, default=None, metavar="SIZE", help="file size per job, e.g. 64m"
    )
    switch.add_argument(
        "--settle",
        type=_seconds,
        default=None,
        metavar=TIME,
        help="time after each switch left out of the phase table (default: a quarter "
        "of the shortest phase, at most 1s)",
    )
    switch.add_argument("--results", type=Path, default=Path("results"), help="where runs are kept")
    switch.add_argument(
        "--dir", type=Path, default=None, metavar="DIR", help="where scratch files are made"
    )
    _add_existing(switch)
    switch.add_argument(
        "--no-drop-caches",
        dest="drop_caches",
        action="store_false",
        help="do not drop caches before the run",
    )
    _add_debug(switch)

    soak = commands.add_parser(
        "soak",
        help="a mixed load on a fresh mount for a set time, switching modes, everything checked",
        description="Mount iofs over a scratch directory and, for --duration, run fio with "
        "crc32c verification (buffered and O_DIRECT), metadata churn checked against a "
        "model, and a writer whose fsync-acknowledged records are checked at the end, while "
        "the mode switches every --switch-interval through every mode that runs here. Passes "
        "with no verification failure, no daemon error or unexpected error, and the daemon's "
        "peak RSS after warm-up at most 10% above its peak during warm-up. Exit status 0 on "
        "pass, 1 on failure; the report is printed and kept in the results directory.",
    )

    soak.add_argument(
        "--duration",
        type=_seconds,
        default=600.0,
        metavar=TIME,
        help="how long the load runs, e.g. 90s, 10m, 1h (default 10m)",
    )
    soak.add_argument(
        "--switch-interval",
        type=_seconds,
        default=3.0,
        metavar=TIME,
        help="time between mode switches (default 3s)",
    )
    soak.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the scratch backing directory and mountpoint are made (default: the "
        "system temporary directory)",
    )
    soak.add_argument("--results", type=Path, default=Path("results"), help="where runs are kept")
    soak.add_argument(
        "--seed", type=int, default=None, help="seed of the metadata churn (default: random)"
    )
    _add_debug(soak)

    report = commands.add_parser(
        "report",
        help="render a bench, demo or switch results directory's summary and chart again",
        description="Render the summary and chart of a bench, demo or switch run again from "
        "its results directory (nothing is run).",
    )
    report.add_argument(
        "directory", type=Path, metavar="DIR", help="a run's directory under --results"
    )
    _add_debug(report)

    engines = commands.add_parser(
        "engines",
        help="list the I/O engines and whether they run here; --bench measures them",
        description="List the I/O engines, whether each runs on this machine (and if not, "
        "why), and their capabilities. With --bench, measure every engine that can run "
        "here outside FUSE, side by side: hot, cold and O_DIRECT 4 KiB random reads, 1 MiB "
        "sequential reads, 4 KiB writes with fdatasync; throughput, latency and the loop "
        "lag of a heartbeat task. Keeps results.json, environment.json and summary.txt in "
        "a <time>-engines directory under --results.",
    )
    _add_engine_bench(engines)
    _add_debug(engines)
    modes = commands.add_parser(
        "modes",
        help="list the modes: what each models and what to expect",
        description="List the modes: what each models, how it maps to engines and caching, "
        "and what to expect from it.",
    )
    _add_debug(modes)

    mode = commands.add_parser(
        "mode",
        help="show the mode of a mounted iofs, or switch it while in use",
        description="Without SETTING, show the mount's mode and its history of switches. "
        "With SETTING, switch to it while the mount is in use (owner and root only); "
        "switching to the mode it is in already changes nothing.",
    )
    mode.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    mode.add_argument(
        "setting",
        nargs="?",
        metavar="SETTING",
        help="NAME[,engine=E][,direct=on|off][,cache=kernel|none] (see 'iofs modes')",
    )
    _add_debug(mode)

    faults = commands.add_parser(
        "faults",
        help="show or set fault injection (failed or delayed data operations) on a live mount",
        description="Make a fraction or pattern of data operations fail or wait, to test "
        "how programs handle I/O errors. SPEC is 'off' or OPTION[,OPTION...]: eio=F (fail "
        "a fraction F, e.g. 0.05 or 5%), every=N (fail every Nth), errno=NAME (default "
        "EIO), delay=TIME[:F] (e.g. 20ms, for all or a fraction F), ops=read+write+fsync "
        "(default all), range=START-[END] (only reads and writes touching those bytes, "
        "e.g. 0-4K), seed=N (repeat the random choices). Owner and root only.",
    )
    faults.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    faults.add_argument(
        "spec", nargs="?", metavar="SPEC", help="a fault spec, or off (without it: show)"
    )
    _add_debug(faults)

    stats = commands.add_parser(
        "stats",
        help="a statistics snapshot of a mounted iofs",
        description="Print a statistics snapshot of a mount: operations, latencies, "
        "engines, process, mode history. Columns that do not fit the terminal are left "
        "out (in a pipe nothing is, unless COLUMNS is set); --json has everything.",
    )
    stats.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    stats.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    _add_debug(stats)

    top = commands.add_parser(
        "top",
        help="a live dashboard of a mounted iofs",
        description="Show rates, latency percentiles and in-flight depth per operation, "
        "refreshed every --interval. On a terminal the dashboard is redrawn in place; "
        "with --batch or when the output is not a terminal, one frame is printed per "
        "interval (as top -b does), the first with averages since the mount started. "
        "iofs top's own requests (and any other control request) are not counted as the "
        "workload's.",
    )
    top.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    top.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar=TIME,
        help="time between refreshes, e.g. 500ms, 2s (default 1s)",
    )
    top.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N refreshes (default: until Ctrl-C)",
    )
    output = top.add_mutually_exclusive_group()
    output.add_argument(
        "-b", "--batch", action="store_true", help="print one frame per interval, not in place"
    )
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line per interval (rates and percentiles), for scripts",
    )
    _add_debug(top)

    log_command = commands.add_parser(
        "log",
        help="print the daemon's log of a mount",
        description="Print the log of the daemon serving a mount (background mounts log "
        "to the runtime directory, removed when the mount is; --log FILE keeps one).",
    )
    log_command.add_argument("mountpoint", type=Path, metavar="PATH", help=_IN_MOUNT)
    log_command.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing what is added, until the mount goes away or Ctrl-C",
    )
    _add_debug(log_command)
    return parser


def _take_sigint() -> None:
    """Have SIGINT raise KeyboardInterrupt even if iofs was started with it ignored.

    A shell without job control starts ``iofs bench ... &`` with SIGINT ignored, and
    Python then installs no handler: ``kill -INT`` did nothing, the bench ran on to the
    end and exited 0. Every command promises that SIGINT stops it cleanly (status 130),
    as fio and the daemon (which handle it themselves) do.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _take_sigint()
    try:
        return COMMANDS[args.command](args)
    except IofsError as exc:
        print(f"iofs: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("iofs: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`iofs modes | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(
            f"iofs: error: unexpected {type(exc).__name__}: {exc} "
            "(run with --debug for a traceback)",
            file=sys.stderr,
        )
        return ExitStatus.FAILED


#: Every command, and the function in `iofs.cli_commands` that runs it.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "mount": cli_commands.mount_command,
    "umount": cli_commands.umount_command,
    "bench": cli_commands.bench_command,
    "demo": cli_commands.demo_command,
    "switch": cli_commands.switch_command,
    "soak": cli_commands.soak_command,
    "report": cli_commands.report_command,
    "engines": cli_commands.engines_command,
    "modes": cli_commands.modes_command,
    "mode": cli_commands.mode_command,
    "faults": cli_commands.faults_command,
    "stats": cli_commands.stats_command,
    "top": cli_commands.top_command,
    "log": cli_commands.log_command,
}
