"""``iofs bench``: fio jobs natively and through iofs in each mode, side by side.

A bench is a plan of runs, each one fio job file on one *filesystem* through one
*path*:

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
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pyfuse3
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
from .backends import ENGINES, EngineConfig, EngineUnavailable, engine_class
from .control import read_statistics
from .errors import ExitStatus, IofsError
from .findings import findings as demo_findings
from .loopfs import LoopFilesystem, interrupts_deferred
from .modes import MODES, BadSetting, Setting, parse_setting, resolve
from .mount import MountOptions, find_mount, start_daemon, stop_daemon
from .report import (
    NATIVE,
    Results,
    Run,
    chart_svg,
    daemon_figures,
    html_page,
    parse_fio,
    summary_renderables,
    summary_text,
)
from .stats import Snapshot

#: The filesystems a bench can run on.
FILESYSTEMS = ("dir", *loopfs.KINDS)

#: The jobs `iofs bench` runs when none are named.
DEFAULT_JOBS = ("rand-read-4k", "rand-write-4k", "seq-write-1m", "metadata", "mixed")

#: Seconds each time-based built-in job runs unless ``--runtime`` says otherwise.
DEFAULT_RUNTIME = 3.0

#: Built-in jobs `--full` leaves out (quick.fio is the old three-job comparison).
NOT_IN_FULL = frozenset({"quick"})

#: Extents are counted when a run leaves at most this many files.
MAX_EXTENT_FILES = 20

#: Estimated seconds a run spends outside fio's runtime (mount, lay-out, cache drop).
_OVERHEAD = {True: 2.5, False: 1.0}  # by "through iofs"

#: Summaries are rendered this wide into summary.txt.
SUMMARY_WIDTH = 120

CACHE_DROPS = {
    "drop_caches": "sync, then echo 1 > /proc/sys/vm/drop_caches (root): the whole page "
    "cache, before every measured run",
    "fadvise": "fdatasync and posix_fadvise(POSIX_FADV_DONTNEED) on every file in the run's "
    "directories (not root, so other cached pages stay)",
    "none": "not dropped (--no-drop-caches)",
}


# -- job files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One ``[name]`` of a job file: its own options, and [global]'s."""

    name: str
    options: Mapping[str, str]
    defaults: Mapping[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.options.get(key, self.defaults.get(key, default))

    @property
    def time_based(self) -> bool:
        return self.get("time_based", "0") not in ("0", "false")

    @property
    def engine(self) -> str:
        return self.get("ioengine", "psync")


def parse_sections(text: str) -> list[Section]:
    """The job sections of a fio job file (not [global]), with their options.

    A subset of fio's syntax, enough for iofs's own decisions (lay-out, estimates):
    ``;`` and ``#`` comments, ``[name]`` headers, ``key=value`` and bare ``key``.
    fio itself parses the file for real.
    """
    defaults: dict[str, str] = {}
    sections: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if name == "global":
                current = defaults
            else:
                current = {}
                sections.append((name, current))
            continue
        key, _, value = line.partition("=")
        if current is not None:
            current[key.strip()] = value.strip() if _ else "1"
    return [Section(name, options, defaults) for name, options in sections]


@dataclass(frozen=True)
class JobFile:
    """A fio job file by name, with the text that runs (overrides already applied)."""

    name: str
    text: str

    @property
    def intent(self) -> str:
        """The leading ``;`` lines: what the job measures and which path it exercises."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith(";"):
                break
            lines.append(line.lstrip("; ").rstrip())
        return " ".join(lines)

    @property
    def sections(self) -> list[Section]:
        return parse_sections(self.text)


def builtin_jobs() -> dict[str, Path]:
    """The job files that come with iofs, by name (file name without ``.fio``)."""
    directory = Path(str(resources.files("iofs") / "jobs"))
    return {path.stem: path for path in sorted(directory.glob("*.fio"))}


def load_job(spec: str | Path) -> JobFile:
    """A built-in job by name, or a job file by path. Raises `IofsError` if neither."""
    text_spec = str(spec)
    builtin = builtin_jobs()
    if isinstance(spec, str) and "/" not in spec and not spec.endswith(".fio"):
        if spec not in builtin:
            raise IofsError(
                f"unknown job {spec!r} (built-in: {', '.join(builtin)})", ExitStatus.BAD_SETTING
            )
        return JobFile(spec, builtin[spec].read_text())
    path = Path(text_spec)
    if not path.is_file():
        raise IofsError(f"job file {path}: not found", ExitStatus.BAD_PATH)
    return JobFile(path.stem, path.read_text())


def with_overrides(text: str, runtime: float | None = None, size: str | None = None) -> str:
    """The job text with its ``runtime=`` (and ``size=``) lines set to the overrides.

    fio lets a job file's own options win over the command line's, so an override has
    to be written into the job itself. ``runtime`` is replaced in every block (``[global]``
    or a section) except those that say ``time_based=0``: there it caps a job that ends
    when its work is done (creating N files, reading a file once), and stays. A job
    without any ``runtime=`` gets one in [global] (created if missing), with
    ``time_based=1``. ``size`` is only replaced where the job sets it.
    """
    lines = text.splitlines()
    blocks: list[list[int]] = [[]]  # line numbers per block; the first is before any header
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            blocks.append([])
        blocks[-1].append(index)
    had_runtime = False
    for block in blocks:
        options = {
            lines[i].strip().partition("=")[0].strip(): lines[i].strip().partition("=")[2].strip()
            for i in block
        }
        work_bound = options.get("time_based") in ("0", "false")
        for i in block:
            key, sep, _ = lines[i].strip().partition("=")
            key = key.strip()
            if not sep:
                continue
            if key == "runtime":
                had_runtime = True
                if runtime is not None and not work_bound:
                    lines[i] = f"runtime={runtime:g}"
            elif key == "size" and size is not None:
                lines[i] = f"size={size}"
    if runtime is not None and not had_runtime:
        added = [f"runtime={runtime:g}", "time_based=1"]
        at = next((i for i, line in enumerate(lines) if line.strip() == "[global]"), None)
        if at is None:
            first = next((i for i, line in enumerate(lines) if line.strip().startswith("[")), 0)
            lines[first:first] = ["[global]", *added]
        else:
            lines[at + 1 : at + 1] = added
    return "\n".join(lines) + "\n"


def prepare_text(text: str) -> str | None:
    """The job for fio's lay-out pass (``--create_only=1``), or None if it needs none.

    Sections whose engine is ``filecreate`` are left out: laying out their files first
    would turn the creates they measure into opens of existing files.
    """
    sections = parse_sections(text)
    creating = {s.name for s in sections if s.engine == "filecreate"}
    if len(creating) == len(sections):
        return None
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            skipping = stripped[1:-1].strip() in creating
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def estimate_seconds(job: JobFile) -> float:
    """Roughly how long fio runs *job*: stonewalled groups one after another."""
    total, group = 0.0, 0.0
    for index, section in enumerate(job.sections):
        runtime = float(section.get("runtime", "0") or 0)
        seconds = runtime if section.time_based else min(runtime or 2.0, 2.0)
        if index and ("stonewall" in section.options or "wait_for_previous" in section.options):
            total, group = total + group, 0.0
        group = max(group, seconds)
    return total + group


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A fio size (``64m``, ``1g``, ``4096``; powers of 1024) in bytes; ValueError if not."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 64m, 1g)")
    number, unit = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024**power)


# -- the plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    filesystem: str
    path: str  # NATIVE or a mode setting spec
    job: str

    @property
    def id(self) -> str:
        """A directory name for the run, unique within a plan."""
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", self.path)
        return f"{self.filesystem}-{slug}-{self.job}"

    @property
    def through_iofs(self) -> bool:
        return self.path != NATIVE


@dataclass(frozen=True)
class Plan:
    """Everything a bench will do, decided and checked before anything runs."""

    kind: str  # "bench" or "demo": names the results directory
    runs: tuple[PlannedRun, ...]
    #: The job files, exactly as they will run.
    jobs: Mapping[str, JobFile]
    #: (what, why) for each filesystem or mode left out.
    skipped: tuple[tuple[str, str], ...] = ()
    #: Where the results directory is made.
    results: Path = Path("results")
    #: Where scratch directories, mountpoints and loop images are made.
    directory: Path | None = None
    #: Filesystems run in a fresh directory under an existing mount of that type (e.g.
    #: ``{"xfs": Path("/scratch/xfs")}``) instead of on a loop image.
    existing: Mapping[str, Path] = field(default_factory=dict)
    drop_caches: bool = True
    #: Extra settings to record in plan.json (runtime, size, command line).
    settings: Mapping[str, Any] = field(default_factory=dict)


def matrix(
    filesystems: Sequence[str], paths: Sequence[str], jobs: Sequence[str]
) -> tuple[PlannedRun, ...]:
    """Every job on every filesystem through every path: filesystem, then job, then path,
    so that the runs one comparison rests on are close together in time."""
    return tuple(PlannedRun(fs, path, job) for fs in filesystems for job in jobs for path in paths)


def mount_setting(spec: str, engine: str | None = None) -> Setting:
    """The setting *spec* names, with *engine* (if given) overriding its engine.

    Raises `IofsError` for names that do not exist (a usage mistake), not for engines
    that cannot run here (see `check_paths`).
    """
    try:
        setting = parse_setting(spec)
        if engine is not None:
            setting = resolve(setting.mode, engine=engine, caching=setting.caching)
    except BadSetting as exc:
        raise IofsError(str(exc), ExitStatus.BAD_SETTING) from None
    return setting


def check_paths(
    specs: Sequence[str], engine: str | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The paths that can run here (settings normalised), and (what, why) for the others."""
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    if engine is not None and engine not in ENGINES:
        raise IofsError(
            f"unknown engine {engine!r} (known: {', '.join(sorted(ENGINES))})",
            ExitStatus.BAD_SETTING,
        )
    for spec in specs:
        if spec == NATIVE:
            if NATIVE not in paths:
                paths.append(NATIVE)
            continue
        setting = mount_setting(spec, engine)
        try:
            engine_class(setting.engine)
        except EngineUnavailable as exc:
            skipped.append((f"mode {setting.spec}", str(exc)))
            continue
        if setting.spec not in paths:
            paths.append(setting.spec)
    return paths, skipped


def check_existing(existing: Mapping[str, Path]) -> None:
    """Raise `IofsError` unless each directory is on a mounted filesystem of its kind."""
    for kind, directory in existing.items():
        if kind not in loopfs.KINDS:
            raise IofsError(
                f"unknown filesystem {kind!r} (known: {', '.join(loopfs.KINDS)})",
                ExitStatus.BAD_SETTING,
            )
        if not directory.is_dir():
            raise IofsError(f"--{kind} {directory}: not a directory", ExitStatus.BAD_PATH)
        found = filesystem_of(directory).get("type", "unknown")
        if found != kind:
            raise IofsError(
                f"--{kind} {directory}: on a {found} filesystem, not {kind}", ExitStatus.BAD_PATH
            )


def check_filesystems(
    names: Sequence[str], existing: Mapping[str, Path] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The filesystems that can be made here, and (what, why) for the others.

    A filesystem in *existing* (checked with `check_existing`) needs no loop image.
    """
    existing = existing or {}
    check_existing(existing)
    available: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in dict.fromkeys(names):
        if name not in FILESYSTEMS:
            raise IofsError(
                f"unknown target {name!r} (known: {', '.join(FILESYSTEMS)})",
                ExitStatus.BAD_SETTING,
            )
        reason = None if name == "dir" or name in existing else loopfs.unavailable(name)
        if reason is None:
            available.append(name)
        else:
            skipped.append((f"target {name}", reason))
    return available, skipped


def default_modes() -> list[str]:
    """native and every mode (those whose engine cannot run are skipped later)."""
    return [NATIVE, *MODES]


# -- environment -----------------------------------------------------------------------------
def _output(command: Sequence[str]) -> str:
    """The first line *command* prints, or "" if it fails or cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if result.returncode == 0 and lines else ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _commit() -> str:
    """The git commit of the iofs checkout running, marked if it has local changes."""
    here = str(Path(__file__).parent)
    commit = _output(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    if not commit:
        return "not a git checkout"
    changed = subprocess.run(
        ["git", "-C", here, "diff", "--quiet", "HEAD", "--", "."], check=False
    ).returncode
    return commit + (" with local changes" if changed else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> dict[str, str]:
    """Type, device and mount options of the filesystem holding *path* (findmnt)."""
    fields = _output(
        ["findmnt", "--noheadings", "--output", "FSTYPE,SOURCE,OPTIONS", "--target", str(path)]
    ).split()
    info = {"path": str(path)}
    info.update(zip(("type", "source", "options"), fields, strict=False))
    return info


def environment(fio: str, cache_drop: str) -> dict[str, Any]:
    """Where the figures were measured: machine, kernel, versions, how caches were dropped."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["iofs", *sys.argv[1:]]),
        "kernel": f"{platform.release()} ({platform.version()})",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "root": os.geteuid() == 0,
        "cache_drop": CACHE_DROPS[cache_drop],
        "fio": _output([fio, "--version"]),
        "python": sys.version.split()[0],
        "iofs": _version("iofs"),
        "iofs_commit": _commit(),
        "pyfuse3": pyfuse3.__version__,
        "trio": _version("trio"),
        "mkfs.xfs": _output(["mkfs.xfs", "-V"]),
        "mkfs.btrfs": _output(["mkfs.btrfs", "--version"]),
        "engines": {name: cls.probe() or "available" for name, cls in sorted(ENGINES.items())},
        "filesystems": {},
    }


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
    """An iofs daemon in setting *spec* over the workspace's backing directory, serving."""
    setting = mount_setting(spec)
    opts = MountOptions(
        backing=workspace.backing,
        mountpoint=workspace.mountpoint,
        mode=setting.mode,
        engine=setting.engine,
        engine_config=EngineConfig(direct=setting.direct),
        caching=setting.caching,
        log_file=log_file,
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
        out = _output(["filefrag", str(path)])
        match = re.search(r"(\d+) extents? found", out)
        if match:
            counts[str(path.relative_to(directory))] = int(match.group(1))
    return counts


def log_errors(log: Path) -> int:
    """Errors and tracebacks in a daemon log (anything unexpected is logged loudly)."""
    if not log.is_file():
        return 0
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line or line.startswith("Traceback")
    )


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


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
        _write_json(
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
        _write_json(self.out / "environment.json", self.env)

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
        _write_json(out / "run.json", {**record, "status": "failed", "reason": reason})

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
            if section.get("size") and _SIZE.match(section.get("size"))
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
            _write_json(out / "run.json", record)
        record["extents"] = _extents(workspace.backing)
        record["daemon_log_errors"] = log_errors(out / "daemon.log")
        _write_json(out / "run.json", record)
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
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
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
        if process.returncode != 0:
            text = (out / f"{stem}.log").read_text(errors="replace").strip()
            reason = (text.splitlines() or ["no message"])[-1]
            raise IofsError(f"fio {stem} failed (status {process.returncode}): {reason}")


def fio_command(
    fio: str, job: Path, directory: Path, output: Path, extra: Sequence[str] = ()
) -> list[str]:
    """fio running *job* on files in *directory*, its JSON report written to *output*."""
    return [
        fio,
        *extra,
        "--output-format=json",
        f"--output={output.absolute()}",
        f"--directory={directory}",
        str(job.absolute()),
    ]


def stop_fio(process: subprocess.Popen[bytes]) -> None:
    """Stop fio (SIGINT lets it end its jobs and close its files), then reap it."""
    with interrupts_deferred():
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_daemon(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    with interrupts_deferred():
        stop_daemon(daemon, mountpoint)


def _remove_mountpoint(mountpoint: Path) -> None:
    with interrupts_deferred():
        if find_mount(mountpoint) is None:
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


def results_directory(parent: Path, kind: str) -> Path:
    """A new directory ``parent/<time>-<kind>`` (a suffix added if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        candidate = parent / (f"{stamp}-{kind}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise IofsError(f"cannot make a results directory in {parent}")


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


# -- loading and rendering results -----------------------------------------------------------
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_results(directory: Path) -> Results:
    """The `Results` of a results directory, from its saved files alone."""
    if not (directory / "plan.json").is_file():
        raise IofsError(
            f"{directory}: not an iofs results directory (no plan.json)", ExitStatus.BAD_PATH
        )
    try:
        plan = _read_json(directory / "plan.json")
        env_path = directory / "environment.json"
        env = _read_json(env_path) if env_path.is_file() else {}
        runs = tuple(_load_run(directory / "runs" / entry["id"], entry) for entry in plan["runs"])
        return Results(
            kind=plan["kind"],
            runs=runs,
            jobs=plan.get("jobs", {}),
            environment=env,
            skipped=tuple((str(what), str(why)) for what, why in plan.get("skipped", [])),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IofsError(f"{directory}: cannot read the results ({exc!r})") from None


def _load_run(directory: Path, entry: Mapping[str, str]) -> Run:
    filesystem, path, job = entry["filesystem"], entry["path"], entry["job"]
    if not (directory / "run.json").is_file():
        return Run(filesystem, path, job, status="not run", reason="interrupted before it ran")
    record = _read_json(directory / "run.json")
    status = record.get("status", "failed")
    reason = record.get("reason", "")
    if status == "ok" and not (directory / "fio.json").is_file():
        status, reason = "failed", "no fio.json"
    if status != "ok":
        return Run(filesystem, path, job, status=status, reason=reason or "interrupted")
    figures = tuple(parse_fio(_read_json(directory / "fio.json")))
    daemon = None
    before, after = directory / "stats-before.json", directory / "stats-after.json"
    if before.is_file() and after.is_file():
        daemon = daemon_figures(
            Snapshot.from_json(before.read_text()), Snapshot.from_json(after.read_text())
        )
    return Run(
        filesystem,
        path,
        job,
        status=status,
        figures=figures,
        daemon=daemon,
        extents={str(k): int(v) for k, v in record.get("extents", {}).items()},
    )


def render_results(
    directory: Path,
    console: Console | None = None,
    findings: Callable[[Results], list[str]] | None = None,
) -> Results:
    """Render *directory*'s summary and chart from its saved files; print the summary.

    Writes ``summary.txt``, ``chart.svg`` and ``chart.html`` (replacing earlier ones).
    A demo's findings are derived again from the numbers.
    """
    results = load_results(directory)
    if findings is None and results.kind == "demo":
        findings = demo_findings
    sentences = findings(results) if findings else []
    text = summary_text(results, sentences, width=SUMMARY_WIDTH)
    (directory / "summary.txt").write_text(text)
    (directory / "chart.svg").write_text(chart_svg(results))
    (directory / "chart.html").write_text(html_page(results, sentences, text))
    # Tables wider than a pipe's default 80 columns would be cut: print as summary.txt.
    console = console or Console(width=None if sys.stdout.isatty() else SUMMARY_WIDTH)
    for renderable in summary_renderables(results, sentences):
        console.print(renderable)
    console.print(f"[dim]results, raw fio JSON, commands and statistics in {directory}[/]")
    return results


# -- iofs bench --------------------------------------------------------------------------------
def bench_plan(
    *,
    targets: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    jobs: Sequence[str | Path] | None = None,
    engine: str | None = None,
    runtime: float | None = None,
    size: str | None = None,
    full: bool = False,
    results: Path = Path("results"),
    directory: Path | None = None,
    existing: Mapping[str, Path] | None = None,
    drop_caches: bool = True,
) -> Plan:
    """The plan `iofs bench` runs, checked: unknown names raise `IofsError` before
    anything runs; targets and modes that cannot run here are skipped with a reason.

    *existing* maps ``xfs``/``btrfs`` to a directory on a mounted filesystem of that type
    to run on instead of a loop image; without *targets* those filesystems are added to
    the default ones.
    """
    existing = dict(existing or {})
    paths, skipped_paths = check_paths(list(modes or default_modes()), engine)
    if targets is None:
        targets = list(FILESYSTEMS) if full else ["dir", *existing]
    if jobs is None:
        jobs = (
            [name for name in builtin_jobs() if name not in NOT_IN_FULL]
            if full
            else list(DEFAULT_JOBS)
        )
    loaded: dict[str, JobFile] = {}
    for spec in jobs:
        job = load_job(spec)
        is_builtin = isinstance(spec, str) and "/" not in spec and not spec.endswith(".fio")
        effective = runtime if runtime is not None else (DEFAULT_RUNTIME if is_builtin else None)
        loaded[job.name] = JobFile(job.name, with_overrides(job.text, effective, size))
    if directory is not None and not directory.is_dir():
        raise IofsError(f"--dir {directory}: not a directory", ExitStatus.BAD_PATH)
    filesystems, skipped_fs = check_filesystems(targets, existing)
    return Plan(
        kind="bench",
        runs=matrix(filesystems, paths, list(loaded)),
        jobs=loaded,
        skipped=(*skipped_fs, *skipped_paths),
        results=results,
        directory=directory,
        existing=existing,
        drop_caches=drop_caches,
        settings={"runtime": runtime, "size": size, "engine": engine, "full": full},
    )


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
