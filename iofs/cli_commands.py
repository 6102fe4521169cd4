"""What each ``iofs`` command does, one function a command (`iofs.cli` parses the
command line and dispatches here through its `COMMANDS` table).

Every function takes the parsed arguments and returns the exit status. The modules a
command needs are imported in its function, so that a client command (``iofs stats``,
``top``, ``mode``, ``faults``, ``log``, ``umount``) loads nothing of the daemon (no pyfuse3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .backends import ENGINES, Capability, EngineConfig
from .errors import ExitStatus, IofsError
from .modes import CACHINGS, MODES, SHARED_MMAP_LIMIT, resolve

if TYPE_CHECKING:
    import rich.console  # imported where it prints: a daemon and most commands never do

    from .control_protocol import ModeValue
    from .stats import Snapshot

#: Filesystems ``bench``, ``demo`` and ``switch`` can be given mounted already (--xfs DIR).
EXISTING = ("xfs", "btrfs")


def existing_mounts(args: argparse.Namespace) -> dict[str, Path]:
    return {kind: getattr(args, kind) for kind in EXISTING if getattr(args, kind) is not None}


def mount_command(args: argparse.Namespace) -> int:
    """``iofs mount``: mount BACKING at MOUNTPOINT (`iofs.mount`)."""
    from .mount import MountOptions, mount
    from .transport import default_transport

    transport = args.transport or default_transport()
    if args.mode in MODES and args.cache in (None, *CACHINGS):
        caching = args.cache or MODES[args.mode].caching
        # Only dev negotiates FUSE_DIRECT_IO_ALLOW_MMAP (SHARED_MMAP_LIMIT).
        if CACHINGS[caching].direct_io and transport == "pyfuse3":
            print(f"iofs: note: {SHARED_MMAP_LIMIT}", file=sys.stderr)
    return mount(
        MountOptions(
            backing=args.backing,
            mountpoint=args.mountpoint,
            mode=args.mode,
            engine=args.engine,
            caching=args.cache,
            engine_config=EngineConfig(
                direct=args.direct, queue_depth=args.queue_depth, workers=args.workers
            ),
            fuse_options=frozenset(o for group in args.fuse_options for o in group),
            foreground=args.foreground,
            debug=args.debug,
            attr_timeout=args.attr_timeout,
            entry_timeout=args.entry_timeout,
            log_file=args.log,
            stats_log=args.stats_log.absolute() if args.stats_log else None,
            stats_interval=args.stats_interval,
            statistics=args.statistics,
            writeback_cache=args.writeback_cache,
            allow_fallback=args.allow_fallback,
            faults=args.faults,
            fd_budget=args.fd_budget,
            file_handles=args.file_handles,
            max_background=args.max_background,
            transport=transport,
        )
    )


def umount_command(args: argparse.Namespace) -> int:
    """``iofs umount``: unmount, and stop the daemon."""
    from .live_mounts import unmount

    print(f"iofs: {unmount(args.mountpoint, lazy=args.lazy)}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """``iofs bench``: fio jobs natively and through iofs (`iofs.bench`)."""
    from .bench import run_and_render
    from .bench_plan import bench_plan

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    jobs: list[str | Path] | None = None
    if args.jobs is not None or args.job is not None:
        jobs = [*(args.jobs or []), *(args.job or [])]
    plan = bench_plan(
        targets=args.targets,
        modes=args.modes,
        jobs=jobs,
        engine=args.engine,
        runtime=args.runtime,
        size=args.size,
        full=args.full,
        results=args.results,
        directory=args.dir,
        existing=existing_mounts(args),
        drop_caches=args.drop_caches,
    )
    return run_and_render(plan)


def demo_command(args: argparse.Namespace) -> int:
    """``iofs demo``: the guided comparison and a live switch (`iofs.demo`)."""
    from .demo import DEMO_RUNTIME, demo_plan, run_demo, switch_demo_plan

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    runtime = args.runtime or DEMO_RUNTIME
    plan = demo_plan(
        runtime=runtime,
        results=args.results,
        directory=args.dir,
        existing=existing_mounts(args),
    )
    return run_demo(plan, switch_demo_plan(runtime=runtime, directory=args.dir))


def switch_command(args: argparse.Namespace) -> int:
    """``iofs switch``: one fio job while the mode switches on a schedule (`iofs.switch`)."""
    from .switch import DEFAULT_JOB, run_switch, switch_plan
    from .switch_report import render_switch, verification_failed

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    schedule = switch_plan(
        args.schedule,
        job=args.job or DEFAULT_JOB,
        target=args.target,
        size=args.size,
        results=args.results,
        directory=args.dir,
        existing=existing_mounts(args),
        drop_caches=args.drop_caches,
        settle=args.settle,
    )
    out = run_switch(schedule)
    render_switch(out)
    return ExitStatus.FAILED if verification_failed(out) else ExitStatus.OK


def soak_command(args: argparse.Namespace) -> int:
    """``iofs soak``: self-checking workloads while the mode switches (`iofs.soak`)."""
    from .soak import SoakOptions, run_soak
    from .soak_report import render_report

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    report = run_soak(
        SoakOptions(
            duration=args.duration,
            switch_interval=args.switch_interval,
            directory=args.dir,
            results=args.results,
            seed=args.seed,
        )
    )
    print(render_report(report), end="")
    if report.interrupted:
        raise KeyboardInterrupt
    return ExitStatus.OK if report.passed else ExitStatus.FAILED


def report_command(args: argparse.Namespace) -> int:
    """``iofs report``: render a results directory again (`iofs.switch_report`; an engine
    benchmark's, made by ``iofs engines --bench``, as ``iofs engines --render`` does)."""
    directory: Path = args.directory
    if (directory / "results.json").is_file() and not (directory / "plan.json").is_file():
        from .engine_bench_results import render_run

        render_run(directory)
        return 0
    from .switch_report import render_directory

    render_directory(directory)
    return 0


def engines_command(args: argparse.Namespace) -> int:
    """``iofs engines``: list the I/O engines; ``--bench`` measures them, ``--render``
    prints a measurement again (`iofs.engine_bench`)."""
    if args.render is not None:
        from .engine_bench_results import render_run

        render_run(args.render)
        return 0
    if args.bench:
        return engine_bench(args)
    given = [
        flag
        for dest, (flag, default) in args.bench_options.items()
        if getattr(args, dest) != default
    ]
    if given:
        raise IofsError(f"{', '.join(given)}: only with --bench", ExitStatus.USAGE)
    for name, cls in sorted(ENGINES.items()):
        reason = cls.probe()
        status = "available" if reason is None else f"unavailable: {reason}"
        flags = "|".join(flag.name or "" for flag in Capability if flag in cls.capabilities)
        print(f"{name:9} {status}\n          {cls.summary}\n          capabilities: {flags}")
    return 0


def modes_command(args: argparse.Namespace) -> int:
    """``iofs modes``: every mode with what it models, how, and what to expect."""
    print(_modes_text())
    return 0


def mode_command(args: argparse.Namespace) -> int:
    """``iofs mode``: show a mount's mode and history, or switch it."""
    from .control import read_mode

    if args.setting is not None:
        return _switch_mode(args.mountpoint, args.setting)
    current = read_mode(args.mountpoint)
    print(current["description"])
    if not current.get("shared_mmap", True):
        print(f"  note: {SHARED_MMAP_LIMIT}")
    if current.get("passthrough") or current.get("passthrough_files"):
        print(f"  note: {_passthrough_now(current)}")
    for entry in current["history"]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"]))
        print(f"  {at}  {entry['mode']}")
    return 0


def faults_command(args: argparse.Namespace) -> int:
    """``iofs faults``: show or set fault injection on a live mount."""
    return _faults(args.mountpoint, args.spec)


def stats_command(args: argparse.Namespace) -> int:
    """``iofs stats``: a statistics snapshot of a live mount."""
    from .control import read_statistics
    from .render import stats_table

    snapshot = read_statistics(args.mountpoint)
    if args.json:
        print(snapshot.to_json())
    else:
        console = _console()
        _print(console, stats_table(snapshot, width=_table_width(console)))
    return 0


def top_command(args: argparse.Namespace) -> int:
    """``iofs top``: a live dashboard (in place, ``--batch`` or ``--json``)."""
    if args.json:
        return _top_json(args.mountpoint, args.interval, args.count)
    if args.batch or not sys.stdout.isatty():
        return _top_batch(args.mountpoint, args.interval, args.count)
    return _top(args.mountpoint, args.interval, args.count)


def log_command(args: argparse.Namespace) -> int:
    """``iofs log``: the daemon's log of a mount."""
    return _log(args.mountpoint, args.follow)


def engine_bench(args: argparse.Namespace) -> int:
    """``iofs engines --bench``: measure every engine outside FUSE (`iofs.engine_bench`)."""
    from .engine_bench import Settings
    from .engine_bench_results import run_engine_bench
    from .engine_workloads import MiB

    settings = Settings(
        seconds=args.seconds or (0.3 if args.quick else 1.2),
        rounds=args.rounds or (1 if args.quick else 3),
        pick=args.pick,
        file_size=(args.size_mib or (16 if args.quick else 1024)) * MiB,
        queue_depth=args.queue_depth,
        workers=args.workers,
        heartbeat_ms=args.heartbeat_ms,
        seed=args.seed,
        quick=args.quick,
        drop_caches_allowed=args.drop_caches,
    )
    return run_engine_bench(
        settings,
        engines=args.engines,
        workloads=args.workloads,
        directory=args.dir,
        results_parent=args.results,
        keep=args.keep,
    )


def _console() -> rich.console.Console:
    """Where stats and top print: in a pipe as wide as the content (nothing is cut or
    wrapped), unless COLUMNS says how wide; on a terminal, the terminal's width."""
    import rich.console

    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return rich.console.Console()
    return rich.console.Console(width=_UNLIMITED)


#: The console width of a pipe without COLUMNS: wider than any table iofs prints.
_UNLIMITED = 1000


def _print(console: rich.console.Console, renderable: rich.console.RenderableType) -> None:
    """Print; off a terminal without the spaces rich pads each line with."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)


def _table_width(console: rich.console.Console) -> int | None:
    """The width tables must fit (dropping columns), or None: every column."""
    return None if console.width >= _UNLIMITED else console.width


def _switch_mode(path: Path, spec: str) -> int:
    """`iofs mode PATH SETTING`: switch, or say that the mount is in that mode already."""
    from .control import read_mode, set_mode
    from .modes import BadSetting, parse_setting

    before = str(read_mode(path)["spec"])
    try:
        unchanged = parse_setting(spec) == parse_setting(before)
    except BadSetting:
        unchanged = False  # set_mode says what is wrong with it
    # With --allow-fallback the daemon may stand in the engine it already uses.
    setting = None if unchanged else set_mode(path, spec)
    if setting is None or setting.spec == before:
        print(f"iofs: {path}: already in {parse_setting(before).describe()}")
    else:
        print(f"iofs: {path}: switched to {setting.describe()}")
        after = read_mode(path)
        if not after.get("shared_mmap", True):
            print(f"iofs: note: {SHARED_MMAP_LIMIT}")
        if setting.passthrough != parse_setting(before).passthrough:
            print(
                f"iofs: note: passthrough {'on' if setting.passthrough else 'off'} for files "
                f"opened from now on; {_passthrough_now(after)}"
            )
    return 0


def _passthrough_now(mode: ModeValue) -> str:
    """What is passed through to the kernel now, from `iofs.mode`'s counts."""
    files, passed = mode.get("open_files", 0), mode.get("passthrough_files", 0)
    return (
        f"{passed} of the {files} files open now are passed through to the kernel (their "
        "reads and writes bypass the daemon); a file keeps its path, for every open of "
        "it, until its last close"
    )


def _faults(mountpoint: Path, spec: str | None) -> int:
    """`iofs faults`: set the spec if given, then say what is injected and what it did."""
    from .control import read_faults, set_faults

    if spec is not None:
        set_faults(mountpoint, spec)
    current = read_faults(mountpoint)
    seed = "" if current["seed"] is None else f" (seed {current['seed']})"
    if spec is not None:
        if current["spec"] == "off":
            print(f"iofs: {mountpoint}: fault injection off")
        else:
            print(f"iofs: {mountpoint}: {current['description']}{seed}")
        return 0
    if current["spec"] == "off":
        print(current["description"])
    else:
        print(f"{current['spec']}{seed}: {current['description']}")
    for op, counters in current["operations"].items():
        print(
            f"  {op:6} {counters['matched']:>12,} matched {counters['errors']:>12,} failed "
            f"{counters['delays']:>12,} delayed"
        )
    return 0


def _top(mountpoint: Path, interval: float, count: int | None) -> int:
    """Refresh the dashboard in place every *interval* seconds until Ctrl-C (or *count*)."""
    import rich.console
    import rich.live

    from .control import live_mountpoint, read_statistics
    from .render import dashboard

    console = rich.console.Console()
    older = None
    mountpoint = live_mountpoint(mountpoint)
    newer = read_statistics(mountpoint, checked=True)
    refreshes = 0
    live = rich.live.Live(
        dashboard(newer, width=console.width), console=console, auto_refresh=False, screen=False
    )
    with live:
        try:
            while count is None or refreshes < count:
                time.sleep(interval)
                older, newer = newer, read_statistics(mountpoint, checked=True)
                live.update(dashboard(newer, older, width=console.width), refresh=True)
                refreshes += 1
        except KeyboardInterrupt:
            pass
    print()  # the dashboard's last line ends without a newline
    return 0


def _snapshots(mountpoint: Path, interval: float, count: int | None) -> Iterator[Snapshot]:
    """The mount's first snapshot at once, then one every *interval* (*count* more at
    most), as `top -b` and `iostat 1 3` report; ends quietly on Ctrl-C."""
    from .control import live_mountpoint, read_statistics

    # Found once: each poll is then a single read of the statistics, counted apart
    # from the workload's requests by the daemon.
    mountpoint = live_mountpoint(mountpoint)
    yield read_statistics(mountpoint, checked=True)
    refreshes = 0
    next_at = time.monotonic()
    try:
        while count is None or refreshes < count:
            next_at += interval  # no drift: a slow read does not push every later one
            time.sleep(max(0.0, next_at - time.monotonic()))
            yield read_statistics(mountpoint, checked=True)
            refreshes += 1
    except KeyboardInterrupt:
        pass


def _top_batch(mountpoint: Path, interval: float, count: int | None) -> int:
    """``iofs top --batch``: one frame per interval, each after a blank line."""
    from .render import dashboard

    console = _console()
    older = None
    for index, newer in enumerate(_snapshots(mountpoint, interval, count)):
        if index:
            print()
        _print(console, dashboard(newer, older, width=_table_width(console)))
        older = newer
    return 0


def _top_json(mountpoint: Path, interval: float, count: int | None) -> int:
    """``iofs top --json``: one JSON line per interval (see `render.interval_json`)."""
    from .intervals import diff
    from .render import interval_json

    older = None
    for newer in _snapshots(mountpoint, interval, count):
        print(json.dumps(interval_json(diff(newer, older))), flush=True)
        older = newer
    return 0


def _log(path: Path, follow: bool) -> int:
    """``iofs log``: print the daemon's log; with *follow*, what is added until the mount
    goes away (or Ctrl-C)."""
    from .control import daemon_log
    from .live_mounts import find_mount

    mountpoint, log_path = daemon_log(path)
    try:
        with open(log_path, "rb") as log_file:
            while True:
                chunk = log_file.read(1 << 16)
                if chunk:
                    sys.stdout.buffer.write(chunk)
                    continue
                sys.stdout.buffer.flush()
                if not follow or find_mount(mountpoint) is None:
                    return 0
                time.sleep(0.2)  # as tail -f: poll for more
    except FileNotFoundError:
        if follow:
            return 0  # the mount went away, and its log with it
        raise IofsError(f"{log_path}: No such file or directory", ExitStatus.BAD_PATH) from None
    except KeyboardInterrupt:
        return 0


def _modes_text() -> str:
    """`iofs modes`: every mode with what it models, how, and what to expect."""

    def paragraph(label: str, text: str) -> str:
        return textwrap.fill(
            text, width=88, initial_indent=f"  {label:8} ", subsequent_indent=" " * 11
        )

    blocks = []
    for mode in MODES.values():
        setting = resolve(mode.name)
        blocks.append(
            "\n".join(
                [
                    setting.describe(),
                    paragraph("models", mode.models),
                    paragraph("how", mode.mapping),
                    paragraph("expect", mode.expect),
                ]
            )
        )
    caching = "\n".join(paragraph(c.name, c.description) for c in CACHINGS.values())
    blocks.append("Kernel caching (the cache= part of a setting, or mount --cache):\n" + caching)
    blocks.append(
        "Switch a live mount with 'iofs mode MOUNTPOINT NAME[,engine=E][,direct=on|off]"
        "[,cache=kernel|none]'."
    )
    return "\n\n".join(blocks)
