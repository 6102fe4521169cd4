"""``iofs bench``: fio jobs natively and through iofs in each mode, side by side.

A bench is a plan of runs (`iofs.bench_plan`), each one fio job file on one
*filesystem* through one *path*:

- filesystems: ``dir`` (a fresh directory on the filesystem of ``--dir``, by default
  the system's temporary directory) and ``xfs`` / ``btrfs`` (fresh loop-device images,
  made for the bench and always destroyed after it; root only, skipped otherwise; or,
  with ``--xfs DIR`` / ``--btrfs DIR``, a fresh directory on an existing filesystem of
  that type mounted at DIR, such as a real disk);
- paths: ``native`` (fio in the backing directory itself) and iofs mode settings such
  as ``blocking`` or ``xfs,engine=aio`` (fio in the mountpoint of an iofs mount of the
  backing directory). A mode whose engine cannot run here is skipped, with the reason.

Every run starts from an empty backing directory. fio first lays out the job's files
there (``--create_only=1``, natively: through a passthrough mount they would be the same
files, only slower to write; sections that measure file creation are left out), then
iofs is mounted (a fresh daemon per run), caches are dropped (root: ``echo 1 >
/proc/sys/vm/drop_caches``; otherwise ``posix_fadvise(DONTNEED)`` on each file), the
daemon's statistics are read, fio runs, and the statistics are read again.

Everything is kept in ``results/<time>-<kind>/``: ``plan.json``, ``environment.json``,
``jobs/`` (each job file exactly as run), and per run ``runs/<id>/``: ``fio.command`` and
``prepare.command`` (the exact fio command lines), ``fio.json`` (fio's raw JSON),
``fio.log``, ``stats-before.json`` / ``stats-after.json`` (iofs statistics snapshots),
``daemon.log`` and ``run.json`` (status, timings, cache drop, extent counts). The
summary (``summary.txt``) and the chart (``chart.svg``, ``chart.html``) are rendered
from those files alone: ``iofs report DIR`` renders them again.

Ctrl-C stops cleanly: fio is stopped, the mount unmounted, the loop images unmounted
and their loop devices detached, and what finished is summarised.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import loopfs
from .backends import EngineConfig
from .bench_plan import Plan, PlannedRun, mount_setting, split_transport
from .control import read_statistics
from .daemon import start_daemon, stop_daemon
from .environment import environment, filesystem_of, first_line
from .errors import ExitStatus, IofsError
from .fiojobs import (
    FIO_SIZE,
    estimate_seconds,
    parse_size,
    prepare_text,
)
from .harness import check_fio, fio_command, log_errors, start_child, stop_fio
from .live_mounts import find_mount
from .loopfs import LoopFilesystem, interrupts_deferred
from .mount import MountOptions
from .report import (
    Results,
)
from .results import render_results, results_directory, write_json
from .transport import default_transport

#: Extents are counted when a run leaves at most this many files.
MAX_EXTENT_FILES = 20

#: Estimated seconds a run spends outside fio's runtime (mount, lay-out, cache drop).
_OVERHEAD = {True: 2.5, False: 1.0}  # by "through iofs"


# -- caches ------------------------------------------------------------------------------
def drop_caches(method: str, directories: Sequence[Path]) -> None:
    """Drop cached pages before a measured run (*method*: a key of `CACHE_DROPS`)."""
    if method == "drop_caches":
        os.sync()  # dirty pages cannot be dropped
        Path("/proc/sys/vm/drop_caches").write_text("1\n")  # page cache only
    elif method == "fadvise":
        for directory in directories:
            for root, _dirs, files in os.walk(directory):
                for name in files:
                    _fadvise_dontneed(Path(root, name))


def _fadvise_dontneed(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- running -----------------------------------------------------------------------------------
@dataclass
class Workspace:
    """Where one filesystem's runs happen."""

    filesystem: str
    backing: Path
    mountpoint: Path


@contextlib.contextmanager
def target_workspace(
    filesystem: str,
    *,
    directory: Path | None,
    existing: Mapping[str, Path],
    image_size: int,
    described: dict[str, Any],
) -> Iterator[Workspace]:
    """A fresh backing directory on *filesystem* and a mountpoint, removed afterwards.

    ``dir`` and the filesystems in *existing* get a new directory (under *directory*, or
    under the existing mount); ``xfs`` and ``btrfs`` a loop image of *image_size* bytes,
    destroyed afterwards. What the backing directory is on goes into *described*.
    """
    with contextlib.ExitStack() as stack:
        if filesystem == "dir" or filesystem in existing:
            parent = existing.get(filesystem, directory)
            root = Path(tempfile.mkdtemp(prefix=f"iofs-bench-{filesystem}-", dir=parent))
            stack.callback(shutil.rmtree, root, ignore_errors=True)
            backing = root
            described[filesystem] = filesystem_of(root)
        else:
            image = LoopFilesystem(filesystem, size=image_size, directory=directory)
            root = stack.enter_context(image)
            backing = root / "backing"
            backing.mkdir()
            described[filesystem] = {
                "path": str(backing),
                "type": filesystem,
                "image": str(image.image),
                "image_size": image.size,
                "source": image.device or "?",
                "options": image.mount_options(),
            }
        mountpoint = Path(tempfile.mkdtemp(prefix="iofs-bench-mnt-", dir=directory))
        stack.callback(_remove_mountpoint, mountpoint)
        yield Workspace(filesystem, backing, mountpoint)


def start_mount(spec: str, workspace: Workspace, log_file: Path) -> subprocess.Popen[bytes]:
    """An iofs daemon in setting *spec* (with its transport, if it names one) over the
    workspace's backing directory, serving."""
    setting = mount_setting(spec)
    transport = split_transport(spec)[1]
    opts = MountOptions(
        backing=workspace.backing,
        mountpoint=workspace.mountpoint,
        mode=setting.mode,
        engine=setting.engine,
        engine_config=EngineConfig(direct=setting.direct),
        caching=setting.caching,
        log_file=log_file,
        transport=transport or default_transport(),
    )
    return start_daemon(opts)


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _extents(directory: Path) -> dict[str, int]:
    """filefrag's extent count of each file fio left, if there are only a few."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()]
    if not files or len(files) > MAX_EXTENT_FILES or shutil.which("filefrag") is None:
        return {}
    counts = {}
    for path in files:
        out = first_line(["filefrag", str(path)])
        match = re.search(r"(\d+) extents? found", out)
        if match:
            counts[str(path.relative_to(directory))] = int(match.group(1))
    return counts


class _Runner:
    """Carries out a `Plan` into a results directory (see the module docstring)."""

    def __init__(self, plan: Plan, fio: str, out: Path, console: Console) -> None:
        self.plan = plan
        self.fio = fio
        self.out = out
        self.console = console
        if not plan.drop_caches:
            self.cache_drop = "none"
        else:
            self.cache_drop = "drop_caches" if os.geteuid() == 0 else "fadvise"
        self.env = environment(fio, self.cache_drop)
        self.estimates = {
            run.id: estimate_seconds(plan.jobs[run.job]) + _OVERHEAD[run.through_iofs]
            for run in plan.runs
        }
        self.done_seconds = 0.0
        self.progress: Progress | None = None
        self.task: Any = None

    # -- files ----------------------------------------------------------------------
    def write_plan(self) -> None:
        jobs_dir = self.out / "jobs"
        jobs_dir.mkdir()
        for job in self.plan.jobs.values():
            (jobs_dir / f"{job.name}.fio").write_text(job.text)
            prepare = prepare_text(job.text)
            if prepare is not None:
                (jobs_dir / f"{job.name}.prepare.fio").write_text(prepare)
        write_json(
            self.out / "plan.json",
            {
                "kind": self.plan.kind,
                "runs": [
                    {"id": r.id, "filesystem": r.filesystem, "path": r.path, "job": r.job}
                    for r in self.plan.runs
                ],
                "jobs": {name: job.intent for name, job in self.plan.jobs.items()},
                "skipped": [list(item) for item in self.plan.skipped],
                "settings": dict(self.plan.settings),
            },
        )
        self.write_environment()

    def write_environment(self) -> None:
        write_json(self.out / "environment.json", self.env)

    # -- the whole plan -----------------------------------------------------------------
    def execute(self) -> None:
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[index]}/{task.fields[count]}"),
            TimeElapsedColumn(),
            TextColumn("remaining"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            self.progress = progress
            self.task = progress.add_task(
                "starting",
                total=sum(self.estimates.values()),
                index=0,
                count=len(self.plan.runs),
            )
            index = 0
            for filesystem in dict.fromkeys(r.filesystem for r in self.plan.runs):
                runs = [r for r in self.plan.runs if r.filesystem == filesystem]
                with contextlib.ExitStack() as stack:
                    try:
                        workspace = stack.enter_context(self._workspace(filesystem))
                    except IofsError as exc:  # e.g. mkfs failed: the other targets go on
                        workspace = None
                        self.console.print(f"[yellow]target {filesystem}: {exc}[/]")
                    for run in runs:
                        index += 1
                        progress.update(
                            self.task,
                            description=f"{run.filesystem} · {run.path} · {run.job}",
                            index=index,
                        )
                        started = time.monotonic()
                        if workspace is None:
                            self._record_failure(run, f"target {filesystem} could not be made")
                        else:
                            self._run(run, workspace)
                        self.done_seconds += self.estimates[run.id]
                        progress.update(self.task, completed=self.done_seconds)
                        if not self.console.is_terminal:  # a log has no live progress bar
                            self.console.print(
                                f"[{index}/{len(self.plan.runs)}] {run.filesystem} · {run.path}"
                                f" · {run.job}: {time.monotonic() - started:.1f} s",
                                highlight=False,
                                markup=False,
                            )
            progress.update(self.task, description="done")

    def _record_failure(self, run: PlannedRun, reason: str) -> None:
        out = self.out / "runs" / run.id
        out.mkdir(parents=True)
        record = {"filesystem": run.filesystem, "path": run.path, "job": run.job}
        write_json(out / "run.json", {**record, "status": "failed", "reason": reason})

    @contextlib.contextmanager
    def _workspace(self, filesystem: str) -> Iterator[Workspace]:
        """The filesystem's backing directory and a mountpoint, both removed afterwards."""
        making_image = filesystem in loopfs.KINDS and filesystem not in self.plan.existing
        if self.progress is not None and making_image:
            self.progress.update(self.task, description=f"making a {filesystem} image")
        with target_workspace(
            filesystem,
            directory=self.plan.directory,
            existing=self.plan.existing,
            image_size=self._image_size(),
            described=self.env["filesystems"],
        ) as workspace:
            self.write_environment()
            yield workspace

    def _image_size(self) -> int:
        sizes = [
            parse_size(section.get("size"))
            for job in self.plan.jobs.values()
            for section in job.sections
            if section.get("size") and FIO_SIZE.match(section.get("size"))
        ]
        return max(loopfs.DEFAULT_SIZE * 2, 4 * max(sizes, default=0))

    # -- one run ------------------------------------------------------------------------
    def _run(self, run: PlannedRun, workspace: Workspace) -> None:
        """One run into ``runs/<id>/``; a failure is recorded there and the bench goes on.

        run.json is written in any case (an interrupted run is recorded without a status).
        """
        out = self.out / "runs" / run.id
        out.mkdir(parents=True)
        jobs = self.out / "jobs"
        record: dict[str, Any] = {
            "filesystem": run.filesystem,
            "path": run.path,
            "job": run.job,
            "started": time.time(),
            "cache_drop": self.cache_drop,
            "backing": str(workspace.backing),
        }
        _empty(workspace.backing)
        try:
            with contextlib.ExitStack() as stack:
                # Lay the files out in the backing directory itself, before mounting:
                # through a passthrough mount they are the same files, and writing
                # them through FUSE would only take longer.
                prepare = jobs / f"{run.job}.prepare.fio"
                if prepare.exists():
                    self._fio(run, out, "prepare", prepare, workspace.backing, ["--create_only=1"])
                directory = workspace.backing
                daemon = None
                if run.through_iofs:
                    daemon = self._mount(run, workspace, out, record)
                    stack.callback(_stop_daemon, daemon, workspace.mountpoint)
                    directory = workspace.mountpoint
                record["directory"] = str(directory)
                drop_caches(self.cache_drop, [workspace.backing, directory])
                if daemon is not None:
                    before = read_statistics(workspace.mountpoint)
                    (out / "stats-before.json").write_text(before.to_json())
                self._fio(run, out, "fio", jobs / f"{run.job}.fio", directory, [])
                if daemon is not None:
                    after = read_statistics(workspace.mountpoint)
                    (out / "stats-after.json").write_text(after.to_json())
                    if daemon.poll() is not None:
                        raise IofsError(f"the iofs daemon exited with status {daemon.returncode}")
            record["status"] = "ok"
        except IofsError as exc:
            record["status"], record["reason"] = "failed", str(exc)
        finally:
            record["finished"] = time.time()
            write_json(out / "run.json", record)
        record["extents"] = _extents(workspace.backing)
        record["daemon_log_errors"] = log_errors(out / "daemon.log")
        write_json(out / "run.json", record)
        if record["status"] != "ok":
            self.console.print(
                f"[yellow]{run.filesystem} · {run.path} · {run.job}: {record['reason']}[/]"
            )
        elif record["daemon_log_errors"]:
            self.console.print(
                f"[yellow]{run.filesystem} · {run.path} · {run.job}: the daemon logged "
                f"{record['daemon_log_errors']} errors (see {out / 'daemon.log'})[/]"
            )

    def _mount(
        self, run: PlannedRun, workspace: Workspace, out: Path, record: dict[str, Any]
    ) -> subprocess.Popen[bytes]:
        """Start an iofs daemon in *run*'s mode over the backing directory."""
        record["setting"] = mount_setting(run.path).describe()
        daemon = start_mount(run.path, workspace, out / "daemon.log")
        record["daemon_pid"] = daemon.pid
        return daemon

    def _fio(
        self,
        run: PlannedRun,
        out: Path,
        stem: str,
        job: Path,
        directory: Path,
        extra: list[str],
    ) -> None:
        """Run fio; `IofsError` if it fails. The progress bar moves while it runs."""
        command = fio_command(self.fio, job, directory, out / f"{stem}.json", extra)
        (out / f"{stem}.command").write_text(shlex.join(command) + "\n")
        estimate = self.estimates[run.id]
        limit = 3 * estimate + 60  # a hung mount must not hang the bench
        started = time.monotonic()
        with open(out / f"{stem}.log", "wb") as log:
            process = start_child(
                lambda: subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log),
                stop_fio,
            )
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > limit:
                    stop_fio(process)
                    raise IofsError(f"fio did not finish within {limit:.0f} s")
                if self.progress is not None and stem == "fio":
                    shown = min(elapsed + _OVERHEAD[run.through_iofs], estimate)
                    self.progress.update(self.task, completed=self.done_seconds + shown)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
        finally:
            if process.poll() is None:
                stop_fio(process)
        check_fio(process, out, stem)


def _stop_daemon(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    with interrupts_deferred():
        stop_daemon(daemon, mountpoint)


def _remove_mountpoint(mountpoint: Path) -> None:
    with interrupts_deferred():
        if find_mount(mountpoint) is None:
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a bench, after everything was cleaned up; what ran is in `results`."""

    def __init__(self, results: Path) -> None:
        super().__init__(str(results))
        self.results = results


def run_plan(plan: Plan, console: Console | None = None) -> Path:
    """Carry out *plan*; return its new results directory.

    On Ctrl-C, once fio is stopped and everything unmounted and detached, raises
    `Interrupted` (a KeyboardInterrupt) naming the directory with the runs that finished.
    """
    fio = shutil.which("fio")
    if fio is None:
        raise IofsError(
            "fio not found: install it (apt-get install fio) or run scripts/setup.sh",
            ExitStatus.UNAVAILABLE,
        )
    if not plan.runs:
        raise IofsError("nothing to run: every target or mode was skipped")
    console = console or Console(stderr=True)
    out = results_directory(plan.results, plan.kind)
    runner = _Runner(plan, fio, out, console)
    runner.write_plan()
    for what, why in plan.skipped:
        console.print(f"[yellow]skipping {what}: {why}[/]")
    try:
        runner.execute()
    except KeyboardInterrupt:
        runner.env["interrupted"] = True
        console.print(f"[yellow]interrupted: partial results in {out}[/]")
        raise Interrupted(out) from None
    finally:
        runner.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        runner.env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        runner.write_environment()
    return out


def run_and_render(plan: Plan, findings: Callable[[Results], list[str]] | None = None) -> int:
    """Run *plan* and print its summary; also what finished when interrupted."""
    try:
        out = run_plan(plan)
    except Interrupted as interrupted:
        with interrupts_deferred():
            render_results(interrupted.results, findings=findings)
        raise
    render_results(out, findings=findings)
    return 0
