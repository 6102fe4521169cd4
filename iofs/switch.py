"""``iofs switch``: one time-based fio job on a fresh mount while the mode switches live.

The run, in order (target, mount and loop-image machinery are `iofs.bench`'s):

1. a fresh backing directory on the target (``dir``, or an XFS/Btrfs loop image or
   existing mount); fio lays the job's files out there natively, every block with a
   crc32c header (``verify=crc32c``; the job texts are `iofs.switch_jobs`');
2. iofs mounted in the first phase's setting, caches dropped;
3. fio runs the job for the whole schedule, writing per-interval logs (IOPS, bandwidth,
   latency, latency histograms; ``log_avg_msec=200``) stamped with CLOCK_MONOTONIC;
   sections that write put crc32c headers in what they write. Meanwhile a thread reads
   the daemon's statistics every interval (`Sampler`), and at each phase boundary the
   runner switches the mode (``iofs.mode``), noting when it asked and when the switch
   returned; the daemon records when the new engine served and the old one drained;
4. fio reads every block of the job's files back through the mount, O_DIRECT, checking
   each crc32c header: nothing written may be lost or corrupted by a switch;
5. unmount, clean up; `iofs.switch_report` renders the results directory.

Everything is kept in ``results/<time>-switch/`` (see `FILES`); ``iofs report DIR``
renders it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from . import loopfs
from .backends import EngineUnavailable, engine_class
from .bench import Workspace, drop_caches, start_mount, target_workspace
from .bench_plan import check_filesystems
from .control import read_statistics, set_mode
from .daemon import stop_daemon
from .environment import environment
from .errors import ExitStatus, IofsError
from .fiojobs import JobFile, load_job, parse_size, with_overrides
from .harness import check_fio, fio_command, log_errors, start_child, stop_fio
from .loopfs import interrupts_deferred
from .results import results_directory, write_json
from .schedule import BadSchedule, Phase, boundaries, parse_schedule
from .stats import Snapshot
from .switch_jobs import (
    INTERVAL,
    layout_text,
    prepare_pass,
    reads_or_writes_data,
    run_text,
    verify_result,
    verify_text,
)
from .timeline import (
    Request,
    settle_time,
)
from .transport import passthrough_unavailable

#: The job `iofs switch` runs when none is named.
DEFAULT_JOB = "rand-read-4k-direct-qd16"

#: What a results directory holds (besides the job files in ``jobs/``).
FILES = {
    "plan.json": "the schedule, job, target and intervals",
    "environment.json": "machine, kernel, versions, filesystems",
    "fio.command": "the exact fio command line (also layout.command, verify.command)",
    "fio.json": "fio's JSON report of the measured run (also layout.json, verify.json)",
    "fio-logs/": "fio's per-interval logs (iops, bw, lat, clat, slat, clat_hist)",
    "stats.jsonl": "one statistics sample per line: monotonic before/after, snapshot",
    "stats-final.json": "the statistics once fio ended and every old engine drained",
    "switches.json": "each switch as requested by the runner and carried out by the daemon",
    "verify-result.json": "the crc32c verification: blocks read back, errors",
    "timeline.csv": "every per-interval series on one axis (rendered, like the chart)",
    "run.json": "status, start and end (CLOCK_MONOTONIC), daemon pid, daemon log errors",
}


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwitchPlan:
    phases: tuple[Phase, ...]
    job: JobFile  # as run: runtime, logs and verify headers applied
    target: str
    results: Path = Path("results")
    directory: Path | None = None
    existing: Mapping[str, Path] = field(default_factory=dict)
    drop_caches: bool = True
    settle: float = 1.0
    #: (what, why) for each phase left out because its engine cannot run here.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def seconds(self) -> float:
        return boundaries(self.phases)[-1]


def switch_plan(
    schedule: Sequence[str],
    *,
    job: str | Path = DEFAULT_JOB,
    target: str = "dir",
    size: str | None = None,
    results: Path = Path("results"),
    directory: Path | None = None,
    existing: Mapping[str, Path] | None = None,
    drop_caches: bool = True,
    settle: float | None = None,
    skip_unavailable: bool = False,
) -> SwitchPlan:
    """The plan `iofs switch` runs, checked before anything runs (`IofsError` if not).

    A phase whose engine cannot run here is an error, or with *skip_unavailable* left out
    (its neighbours then meet); fewer than two phases left is an error.
    """
    try:
        phases = parse_schedule(schedule)
    except BadSchedule as exc:
        raise IofsError(f"--schedule: {exc}", ExitStatus.BAD_SETTING) from None
    kept, skipped = [], []
    for phase in phases:
        try:
            engine_class(phase.setting.engine)
            if phase.setting.passthrough and (reason := passthrough_unavailable()) is not None:
                raise EngineUnavailable(reason)
        except EngineUnavailable as exc:
            if not skip_unavailable:
                raise IofsError(
                    f"--schedule: {phase.setting.spec}: {exc}", ExitStatus.UNAVAILABLE
                ) from None
            skipped.append((f"mode {phase.setting.spec}", str(exc)))
        else:
            kept.append(phase)
    if len(kept) < 2 and skip_unavailable:
        raise IofsError(
            "fewer than two phases of the schedule can run here", ExitStatus.UNAVAILABLE
        )
    existing = dict(existing or {})
    available, skipped_fs = check_filesystems([target], existing)
    if not available:
        raise IofsError(f"--target {target}: {skipped_fs[0][1]}", ExitStatus.UNAVAILABLE)
    if directory is not None and not directory.is_dir():
        raise IofsError(f"--dir {directory}: not a directory", ExitStatus.BAD_PATH)
    loaded = load_job(job)
    total = boundaries(kept)[-1]
    shortest = min(phase.seconds for phase in kept)
    return SwitchPlan(
        phases=tuple(kept),
        job=JobFile(loaded.name, run_text(with_overrides(loaded.text, total, size))),
        target=target,
        results=results,
        directory=directory,
        existing=existing,
        drop_caches=drop_caches,
        settle=settle if settle is not None else settle_time(shortest),
        skipped=tuple(skipped),
    )


# -- sampling ------------------------------------------------------------------------------------
class Sampler:
    """Reads a snapshot every *interval* seconds of *clock*, on the grid start + k *
    interval (slots it fell behind on are skipped, not bunched), in a thread.

    *read* returns the snapshot; *sink* gets (before, after, snapshot) with the clock
    readings around the read; *wait(seconds)* sleeps and returns True once stopped.
    """

    def __init__(
        self,
        read: Callable[[], Snapshot],
        sink: Callable[[float, float, Snapshot], None],
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self._read, self._sink, self.interval, self._clock = read, sink, interval, clock
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def sample(self) -> None:
        before = self._clock()
        snapshot = self._read()
        self._sink(before, self._clock(), snapshot)

    def run(self, start: float) -> None:
        """Sample from *start* until `stop`; an error ends sampling and is kept."""
        slot = 0
        try:
            while True:
                self.sample()
                slot += 1
                now = self._clock()
                while start + slot * self.interval <= now:
                    slot += 1
                if self._wait(start + slot * self.interval - now):
                    return
        except (IofsError, OSError, ValueError) as exc:
            self.error = exc

    def start(self, start: float) -> None:
        self._thread = threading.Thread(target=self.run, args=(start,), name="iofs-sampler")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


# -- running ---------------------------------------------------------------------------------------
def _run_fio(
    fio: str,
    out: Path,
    stem: str,
    job: Path,
    directory: Path,
    cwd: Path,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    command = fio_command(fio, job, directory, out / f"{stem}.json", extra)
    (out / f"{stem}.command").write_text(shlex.join(command) + "\n")
    with open(out / f"{stem}.log", "wb") as log:
        return start_child(
            lambda: subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd
            ),
            stop_fio,
        )


def _finish(process: subprocess.Popen[bytes], out: Path, stem: str, timeout: float) -> None:
    """Wait for fio; `IofsError` if it fails or overruns (it is stopped then)."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_fio(process)
        raise IofsError(f"fio {stem} did not finish within {timeout:.0f} s") from None
    finally:
        if process.poll() is None:
            stop_fio(process)
    check_fio(process, out, stem)


def _image_size(job: JobFile) -> int:
    """A loop image four times the job's largest file size, at least bench's default."""
    sizes = [0]
    for section in job.sections:
        with contextlib.suppress(ValueError):
            sizes.append(parse_size(section.get("size") or "0"))
    return max(loopfs.DEFAULT_SIZE * 2, 4 * max(sizes))


class _Run:
    """One switch run into its results directory (see the module docstring)."""

    def __init__(self, plan: SwitchPlan, fio: str, out: Path, console: Console) -> None:
        self.plan, self.fio, self.out, self.console = plan, fio, out, console
        cache_drop = "none"
        if plan.drop_caches:
            cache_drop = "drop_caches" if os.geteuid() == 0 else "fadvise"
        self.cache_drop = cache_drop
        self.env = environment(fio, cache_drop)
        self.record: dict[str, Any] = {"cache_drop": cache_drop, "target": plan.target}
        self.samples = open(out / "stats.jsonl", "w")  # noqa: SIM115  (closed in run)

    def write_files(self) -> dict[str, Path]:
        jobs = self.out / "jobs"
        jobs.mkdir()
        name = self.plan.job.name
        paths = {"run": jobs / f"{name}.fio"}
        paths["run"].write_text(self.plan.job.text)
        for kind, text in (
            ("prepare", prepare_pass(self.plan.job.text)),
            ("layout", layout_text(self.plan.job.text)),
            ("verify", verify_text(self.plan.job.text)),
        ):
            if text is not None:
                paths[kind] = jobs / f"{name}.{kind}.fio"
                paths[kind].write_text(text)
        write_json(
            self.out / "plan.json",
            {
                "kind": "switch",
                "schedule": [
                    {"setting": p.setting.spec, "seconds": p.seconds} for p in self.plan.phases
                ],
                "job": name,
                "intent": self.plan.job.intent,
                "target": self.plan.target,
                "interval": INTERVAL,
                "settle": self.plan.settle,
                "skipped": [list(item) for item in self.plan.skipped],
            },
        )
        write_json(self.out / "environment.json", self.env)
        return paths

    def sink(self, before: float, after: float, snapshot: Snapshot) -> None:
        document = json.loads(snapshot.to_json(indent=None))
        self.samples.write(json.dumps({"before": before, "after": after, "snapshot": document}))
        self.samples.write("\n")

    def run(self) -> None:
        paths = self.write_files()
        plan = self.plan
        try:
            with target_workspace(
                plan.target,
                directory=plan.directory,
                existing=plan.existing,
                image_size=_image_size(plan.job),
                described=self.env["filesystems"],
            ) as workspace:
                write_json(self.out / "environment.json", self.env)
                self._in(workspace, paths)
            self.record["status"] = "ok"
        except IofsError as exc:
            self.record["status"], self.record["reason"] = "failed", str(exc)
            raise
        except KeyboardInterrupt:
            self.record["status"], self.record["reason"] = "interrupted", "Ctrl-C"
            raise
        finally:
            self.samples.close()
            self.record["daemon_log_errors"] = log_errors(self.out / "daemon.log")
            write_json(self.out / "run.json", self.record)
            self.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            write_json(self.out / "environment.json", self.env)

    def _in(self, workspace: Workspace, paths: Mapping[str, Path]) -> None:
        plan, out = self.plan, self.out
        logs = out / "fio-logs"
        logs.mkdir()
        for stem, extra in (("prepare", 60.0), ("layout", 600.0)):
            if stem in paths:
                extra_options = ["--create_only=1"] if stem == "prepare" else []
                process = _run_fio(
                    self.fio, out, stem, paths[stem], workspace.backing, out, extra_options
                )
                try:  # not only in _finish: a SIGINT can come as it is called
                    _finish(process, out, stem, extra)
                finally:
                    if process.poll() is None:
                        stop_fio(process)
        with contextlib.ExitStack() as stack:
            daemon = start_mount(plan.phases[0].setting.spec, workspace, out / "daemon.log")
            self.record["daemon_pid"] = daemon.pid
            stack.callback(_stop, daemon, workspace.mountpoint)
            drop_caches(self.cache_drop, [workspace.backing])
            mountpoint = workspace.mountpoint
            sampler = Sampler(lambda: read_statistics(mountpoint), self.sink)
            requests = self._measure(paths["run"], workspace, sampler)
            final = _settled_statistics(mountpoint)
            (out / "stats-final.json").write_text(final.to_json())
            write_json(
                out / "switches.json",
                {
                    "requests": [vars(r) for r in requests],
                    "daemon": [vars(r) for r in final.switches[-len(requests) :]]
                    if requests
                    else [],
                },
            )
            self._verify(paths.get("verify"), workspace, len(requests))
            if daemon.poll() is not None:
                raise IofsError(f"the iofs daemon exited with status {daemon.returncode}")

    def _measure(self, job: Path, workspace: Workspace, sampler: Sampler) -> list[Request]:
        plan, out = self.plan, self.out
        times = boundaries(plan.phases)
        self.record["load_average_at_start"] = list(os.getloadavg())
        self.record["launched"] = time.monotonic()
        process = _run_fio(self.fio, out, "fio", job, workspace.mountpoint, out / "fio-logs")
        requests: list[Request] = []
        try:
            # The schedule starts with fio's first data request, not with its launch
            # (starting fio through a loaded machine can take a second).
            start = None
            if reads_or_writes_data(job):
                start = _first_request(workspace.mountpoint, process)
            start = start or time.monotonic()
            self.record["start"] = start
            sampler.start(start)
            for phase, at in zip(plan.phases[1:], times[1:-1], strict=True):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(start + at - time.monotonic(), 0))
                if process.poll() is not None:
                    break  # fio ended early: _finish says why
                asked = time.monotonic()
                setting = set_mode(workspace.mountpoint, phase.setting.spec)
                requests.append(Request(setting.spec, asked, time.monotonic()))
                self.console.print(
                    f"{at:5.1f} s  switched to {setting.spec}", highlight=False, markup=False
                )
            _finish(process, out, "fio", plan.seconds + 60)
        finally:
            self.record["end"] = time.monotonic()
            sampler.stop()
            if process.poll() is None:
                stop_fio(process)
        if sampler.error is not None:
            raise IofsError(f"sampling the statistics failed: {sampler.error}")
        return requests

    def _verify(self, job: Path | None, workspace: Workspace, switches: int) -> None:
        result: dict[str, Any]
        if job is None:
            result = {"status": "not run", "reason": "the job reads and writes no file data"}
        else:
            self.console.print("verifying every block through the mount (crc32c)", markup=False)
            process = _run_fio(self.fio, self.out, "verify", job, workspace.mountpoint, self.out)
            try:
                process.wait(timeout=600)
            except subprocess.TimeoutExpired:
                stop_fio(process)
            result = verify_result(
                job.read_text(),
                (self.out / "verify.log").read_text(errors="replace"),
                _load_json(self.out / "verify.json"),
                process.returncode,
            )
            result["switches"] = switches
        write_json(self.out / "verify-result.json", result)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _first_request(
    mountpoint: Path, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> float | None:
    """When the daemon first saw a data request (polled every 20 ms), or None if fio
    ended or *timeout* passed first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        snapshot = read_statistics(mountpoint)
        if any(
            op.count or op.in_flight for op in snapshot.operations.values() if op.kind == "data"
        ):
            return time.monotonic()
        time.sleep(0.02)
    return None


def _settled_statistics(mountpoint: Path, timeout: float = 10.0) -> Snapshot:
    """The statistics once no old engine is draining (or after *timeout* seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = read_statistics(mountpoint)
        if not snapshot.extra.get("draining_engines") or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.05)


def _stop(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    with interrupts_deferred():
        stop_daemon(daemon, mountpoint)


def run_switch(plan: SwitchPlan, out: Path | None = None, console: Console | None = None) -> Path:
    """Carry out *plan* into *out* (default: a new ``<results>/<time>-switch``)."""
    fio = shutil.which("fio")
    if fio is None:
        raise IofsError(
            "fio not found: install it (apt-get install fio) or run scripts/setup.sh",
            ExitStatus.UNAVAILABLE,
        )
    console = console or Console(stderr=True)
    if out is None:
        out = results_directory(plan.results, "switch")
    else:
        out.mkdir(parents=True)
    for what, why in plan.skipped:
        console.print(f"[yellow]skipping {what}: {why}[/]")
    schedule = " ".join(phase.spec for phase in plan.phases)
    console.print(
        f"iofs switch: {plan.job.name} on {plan.target}, {schedule} ({plan.seconds:g} s)",
        highlight=False,
        markup=False,
    )
    _Run(plan, fio, out, console).run()
    return out
