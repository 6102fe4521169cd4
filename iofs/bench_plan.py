"""The plan of an ``iofs bench`` (and of the demo and switch runs built the same way):
which runs, each one fio job on one filesystem through one path, checked before
anything runs. `bench_plan` builds the plan of ``iofs bench`` from its options;
`iofs.bench` carries a plan out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loopfs
from .backends import ENGINES, EngineUnavailable, engine_class
from .environment import filesystem_of
from .errors import ExitStatus, IofsError
from .fiojobs import (
    JobFile,
    builtin_jobs,
    load_job,
    with_overrides,
)
from .modes import MODES, BadSetting, Setting, parse_setting, resolve
from .report import (
    NATIVE,
)
from .transport import TRANSPORT_NAMES, passthrough_unavailable

#: The filesystems a bench can run on.
FILESYSTEMS = ("dir", *loopfs.KINDS)

#: The jobs `iofs bench` runs when none are named.
DEFAULT_JOBS = ("rand-read-4k", "rand-write-4k", "seq-write-1m", "metadata", "mixed")

#: Seconds each time-based built-in job runs unless ``--runtime`` says otherwise.
DEFAULT_RUNTIME = 3.0

#: Built-in jobs `--full` leaves out (quick.fio is the old three-job comparison).
NOT_IN_FULL = frozenset({"quick"})


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


def split_transport(spec: str) -> tuple[str, str | None]:
    """A path spec's mode setting and the transport its ``,transport=NAME`` option names
    (None: the default transport). The option belongs to the bench's mount, not to the
    mode setting: a live switch cannot change the transport.

    Raises `IofsError` for a transport that does not exist.
    """
    setting, sep, rest = spec.partition(",transport=")
    if not sep:
        return spec, None
    name, _, more = rest.partition(",")
    if name not in TRANSPORT_NAMES:
        raise IofsError(
            f"{spec}: no transport {name!r} ({', '.join(TRANSPORT_NAMES)})",
            ExitStatus.BAD_SETTING,
        )
    return (f"{setting},{more}" if more else setting), name


def transport_unavailable(name: str) -> str | None:
    """Why transport *name* cannot mount here, in one line; None if it can. Changes
    nothing (the mount itself turns the uring module parameter on, as root)."""
    if name == "uring":
        from .transport.uring import unavailable_reason

        return unavailable_reason()
    return None


def mount_setting(spec: str, engine: str | None = None) -> Setting:
    """The setting *spec* names (any ``,transport=NAME`` left out: see
    `split_transport`), with *engine* (if given) overriding its engine.

    Raises `IofsError` for names that do not exist (a usage mistake), not for engines
    that cannot run here (see `check_paths`).
    """
    try:
        setting = parse_setting(split_transport(spec)[0])
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
        transport = split_transport(spec)[1]
        normalised = setting.spec + (f",transport={transport}" if transport else "")
        try:
            engine_class(setting.engine)
        except EngineUnavailable as exc:
            skipped.append((f"mode {normalised}", str(exc)))
            continue
        reason = transport_unavailable(transport) if transport else None
        if reason is None and setting.passthrough:
            reason = passthrough_unavailable(transport)
        if reason is not None:
            skipped.append((f"mode {normalised}", reason))
            continue
        if normalised not in paths:
            paths.append(normalised)
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
