"""``iofs soak``: a mixed load on a live mount for a set time, every result checked.

One iofs daemon (a child process, in a session of its own so that a terminal's Ctrl-C
reaches only the soak) serves a fresh scratch directory while, at the same time:

- **fio** runs in rounds until the time is up: mixed random reads and writes (4-64 KiB)
  with crc32c verification as it goes (``verify_backlog``), buffered (psync) and
  O_DIRECT (libaio), two jobs each, ``verify_fatal=1`` (`SOAK_JOB`);
- **metadata churn** (`iofs.workloads.MetadataChurn`) creates, renames, links,
  unlinks, makes and removes directories, sets attributes, truncates and reads back,
  checking every read and, every `CHURN_CHECK_EVERY` operations, the whole tree against
  its model;
- a **journal writer** (`iofs.workloads.Journal`) fsyncs batches of records and
  remembers what was acknowledged;
- a **mapped writer** (`iofs.workloads.MappedWriter`) writes through a MAP_SHARED
  mapping, msyncs and checks the file through read() and the mapping against its model,
  keeping the mapping across switches;
- a **mode switcher** moves the mount to the next mode every ``--switch-interval``,
  through every mode whose engine runs here (the others are skipped, with the reason).
  A switch into a setting that cannot map files shared (`uncached` on the pyfuse3
  transport) is first tried with the mapping live and must be refused; the mapped
  writer then lets go of its mapping and the switch is made. In that setting mmap must
  fail with ENODEV exactly when the mount says so, and never otherwise;
- a **watcher** samples the daemon's RSS, and checks that the daemon is alive, its log
  has no error and its statistics count no unexpected error.

The run stops at the first failure (or Ctrl-C / SIGTERM), then checks the tree and the
journal through the mount, reads the statistics, unmounts, checks both again in the
backing directory, and removes the scratch directory.

**RSS criterion.** Warm-up is the first `WARMUP_FRACTION` of the load, and at least one
full cycle through the modes: the first switch comes as the load starts, so by then every
mode's engine has been created and has served a full interval of the running load.
The baseline is the highest RSS sampled up to the end of warm-up; the run fails if the
highest RSS sampled after warm-up exceeds it by more than `RSS_GROWTH_LIMIT` (10%).
Peak against peak: a leak raises the later peak, a dip at one sample does not fake one.

Everything is kept in ``results/<time>-soak/``: ``soak.json`` (the report, with every
RSS sample and mode switch), ``report.txt``, ``environment.json``, ``daemon.log``,
``stats-start.json`` / ``stats-end.json`` and, per fio round, ``fio/round-NNN.fio``
(the job as run), ``.command``, ``.json`` (fio's raw JSON) and ``.log``.

The report, its criteria and its rendering are in `iofs.soak_report`; this module runs.
Why this module is long: the runner is one object (`_Soak`) whose six concurrent
activities (fio rounds, churn, journal, mapped writer, mode switcher, watcher) share one
mount, one stop signal and one list of failures, and hand the mapping over around the
switches that must be refused; apart, each would need all of that passed in.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import psutil
from rich.console import Console

from .backends import EngineUnavailable, engine_class
from .control import SwitchRefused, read_mode, read_statistics, set_mode
from .daemon import start_daemon, stop_daemon
from .environment import environment
from .errors import ExitStatus, IofsError
from .fiojobs import with_overrides
from .harness import fio_command, log_errors, stop_fio
from .live_mounts import find_mount, is_disconnected
from .modes import MODES
from .mount import MountOptions
from .report import parse_fio
from .results import results_directory
from .soak_report import (
    Failure,
    FioRound,
    Kind,
    SoakReport,
    evaluate,
    format_seconds,
    in_mib,
    render_report,
    rss_figures,
    warmup_seconds,
)
from .transport import passthrough_unavailable
from .workloads import CheckFailed, Journal, MappedWriter, MetadataChurn

#: Default length of the load, in seconds.
DEFAULT_DURATION = 600.0
#: Default seconds between mode switches.
DEFAULT_SWITCH_INTERVAL = 3.0
#: A fio round lasts a sixth of the load, within these bounds (seconds).
FIO_ROUND_BOUNDS = (5.0, 30.0)
#: No fio round starts with less time left than this (seconds).
FIO_MIN_ROUND = 2.0
#: Seconds a fio round may take beyond its runtime (laying out files) before it hangs.
FIO_GRACE = 60.0
#: The metadata churn checks the whole tree every this many operations.
CHURN_CHECK_EVERY = 500
#: Seconds the mapped writer rests between steps (pacing, not synchronisation).
MAPPED_PAUSE = 0.005
#: Seconds between checks of the daemon's log and statistics during the load.
WATCH_INTERVAL = 5.0
#: Seconds a worker may take to stop once asked, before it counts as hung.
STOP_TIMEOUT = 30.0

#: fio's errno for a failed verification (EILSEQ).
_EILSEQ = 84

SOAK_JOB = """\
; Soak: mixed 4-64 KiB random reads and writes, each write verified with crc32c as the
; job goes (verify_backlog), buffered (psync, fdatasync every 64 writes) and O_DIRECT
; (libaio, queue depth 8), two jobs each; a job stops at its first verification failure.
[global]
rw=randrw
bsrange=4k-64k
size=16m
verify=crc32c
verify_backlog=64
do_verify=1
verify_fatal=1
verify_state_save=0
time_based=1
runtime=30

[buffered]
ioengine=psync
direct=0
fdatasync=64
numjobs=2

[direct]
ioengine=libaio
direct=1
iodepth=8
numjobs=2
"""


@dataclass(frozen=True)
class SoakOptions:
    duration: float = DEFAULT_DURATION
    switch_interval: float = DEFAULT_SWITCH_INTERVAL
    #: Where the scratch directory (backing directory and mountpoint) is made.
    directory: Path | None = None
    results: Path = Path("results")
    #: Seeds the metadata churn and the journal; None: chosen at random (and reported).
    seed: int | None = None
    #: What runs ``iofs`` for the daemon (tests substitute one that corrupts data).
    program: tuple[str, ...] = (sys.executable, "-m", "iofs")


# -- running -------------------------------------------------------------------------------
def fio_round_seconds(duration: float) -> float:
    low, high = FIO_ROUND_BOUNDS
    return min(high, max(low, duration / 6))


def runnable_modes() -> tuple[list[str], list[tuple[str, str]]]:
    """The modes whose engine runs here, and (mode, why not) for the others."""
    modes, skipped = [], []
    for name, mode in MODES.items():
        try:
            engine_class(mode.engine)
        except EngineUnavailable as exc:
            skipped.append((name, str(exc)))
        else:
            if mode.passthrough and (reason := passthrough_unavailable()) is not None:
                skipped.append((name, reason))
            else:
                modes.append(name)
    return modes, skipped


def run_soak(options: SoakOptions, console: Console | None = None) -> SoakReport:
    """Run a soak; return its report (also written to the results directory).

    Raises `IofsError` when it cannot start (no fio, no FUSE, no runnable mode, bad
    arguments). SIGINT and SIGTERM stop it cleanly: the report says it was interrupted.
    """
    fio = shutil.which("fio")
    if fio is None:
        raise IofsError(
            "fio not found: install it (apt-get install fio) or run scripts/setup.sh",
            ExitStatus.UNAVAILABLE,
        )
    if not os.path.exists("/dev/fuse"):
        raise IofsError(
            "/dev/fuse is missing: load the fuse module (modprobe fuse)", ExitStatus.UNAVAILABLE
        )
    if options.directory is not None and not options.directory.is_dir():
        raise IofsError(f"--dir {options.directory}: not a directory", ExitStatus.BAD_PATH)
    modes, skipped = runnable_modes()
    if not modes:
        raise IofsError("no mode can run here: " + "; ".join(r for _, r in skipped))
    warmup = warmup_seconds(options.duration, len(modes), options.switch_interval)
    if warmup > options.duration / 2:
        shortest = 2 * len(modes) * options.switch_interval
        raise IofsError(
            f"--duration {options.duration:g}s is too short to go through {len(modes)} modes "
            f"once, every {options.switch_interval:g} s, and measure after that: at least "
            f"{shortest:g}s (or a shorter --switch-interval)",
            ExitStatus.USAGE,
        )
    out = results_directory(options.results, "soak")
    soak = _Soak(options, fio, out, modes, skipped, console or Console(stderr=True))
    return soak.run()


class _Soak:
    """One soak run; see the module docstring. Workers are named threads, all joined
    before the daemon is stopped: the load is blocking system calls on the mount."""

    def __init__(
        self,
        options: SoakOptions,
        fio: str,
        out: Path,
        modes: list[str],
        skipped: list[tuple[str, str]],
        console: Console,
    ) -> None:
        self.options = options
        self.fio = fio
        self.out = out
        self.modes = modes
        self.skipped = skipped
        self.console = console
        self.seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4))
        self.env = environment(fio, "none")
        self.env.pop("cache_drop", None)
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        #: Set by the first failure, Ctrl-C or SIGTERM: every worker stops.
        self.abort = threading.Event()
        #: Set once the load workers have stopped: the watcher stops too.
        self.load_done = threading.Event()
        self.interrupted = False
        self._lock = threading.Lock()
        self.failures: list[Failure] = []
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.duration
        self.elapsed = 0.0
        self.switches: list[tuple[float, str]] = []
        self.rounds: list[FioRound] = []
        self.rss_samples: list[tuple[float, int]] = []
        self.current_mode = modes[0]
        self.churn: MetadataChurn | None = None
        self.churn_checks = 0
        self.journal: Journal | None = None
        self.journal_mount = 0
        self.journal_backing = 0
        self.mapped: MappedWriter | None = None
        self.mapped_backing = 0
        self.refused_switches = 0
        #: Held by the mapped writer for a step and by the switcher for a switch: the
        #: writer's view of the setting (may it map?) cannot change within a step.
        self.mapping_lock = threading.Lock()
        self.switch_waiting = threading.Event()  # the writer lets the switcher in
        self.unexpected_errors: int | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_status: int | None = None

    # -- bookkeeping ------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def fail(self, kind: Kind, message: str) -> None:
        """Record a failure; the first one stops the soak."""
        with self._lock:
            self.failures.append(Failure(str(kind), message, round(self.now(), 3)))
        self.abort.set()

    def _until_deadline(self) -> bool:
        return not self.abort.is_set() and time.monotonic() < self.deadline

    # -- the whole run ------------------------------------------------------------------
    def run(self) -> SoakReport:
        with self._signals_stop_cleanly():
            try:
                self._run()
            finally:
                report = self._report()
                (self.out / "soak.json").write_text(report.to_json())
                (self.out / "report.txt").write_text(render_report(report))
                self.env["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self.env["interrupted"] = self.interrupted
                (self.out / "environment.json").write_text(json.dumps(self.env, indent=2) + "\n")
        return report

    @contextlib.contextmanager
    def _signals_stop_cleanly(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the load; the teardown always runs to its end."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, _frame: FrameType | None) -> None:
            if not self.interrupted:
                self.console.print(
                    f"[yellow]{signal.Signals(signum).name}: stopping the soak cleanly[/]"
                )
            self.interrupted = True
            self.abort.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> None:
        scratch = Path(tempfile.mkdtemp(prefix="iofs-soak-", dir=self.options.directory))
        try:
            backing, mountpoint = scratch / "backing", scratch / "mnt"
            backing.mkdir()
            mountpoint.mkdir()
            opts = MountOptions(
                backing=backing,
                mountpoint=mountpoint,
                mode=self.modes[0],
                log_file=self.out / "daemon.log",
            )
            # In a session of its own, the daemon does not get a terminal's Ctrl-C: the
            # soak does, and stops the load before it unmounts. (setsid execs in place,
            # so the child's pid stays the daemon's.)
            setsid = ("setsid",) if shutil.which("setsid") else ()
            self.daemon = start_daemon(opts, (*setsid, *self.options.program))
            try:
                (self.out / "stats-start.json").write_text(read_statistics(mountpoint).to_json())
                self._load(mountpoint)
                self._final_checks(mountpoint)
            finally:
                stop_daemon(self.daemon, mountpoint)
                self.daemon_status = self.daemon.poll()
            self._backing_checks(backing)
        finally:
            if find_mount(scratch / "mnt") is None:  # never delete through a live mount
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                self.fail(Kind.DAEMON, f"{scratch / 'mnt'} is still mounted: {scratch} kept")

    def _load(self, mountpoint: Path) -> None:
        self.churn = MetadataChurn(mountpoint / "churn", self.seed)
        self.journal = Journal(mountpoint / "journal", self.seed)
        self.mapped = MappedWriter(
            mountpoint / "mapped", self.seed, mappable=lambda: _maps_shared(mountpoint)
        )
        workers = {
            "soak-fio": lambda: self._fio_rounds(mountpoint),
            "soak-churn": lambda: self._churn(mountpoint),
            "soak-journal": self._journal,
            "soak-mapped": self._mapped,
            "soak-switcher": lambda: self._switch_modes(mountpoint),
        }
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.options.duration
        load = [self._start(name, body) for name, body in workers.items()]
        watcher = self._start("soak-watcher", lambda: self._watch(mountpoint))
        every = max(10.0, self.options.duration / 20)
        next_progress = every
        self.console.print(
            f"soak: {format_seconds(self.options.duration)} on {mountpoint} (mode "
            f"{self.modes[0]}, then {', '.join(self.modes[1:]) or 'no other'}, a switch every "
            f"{self.options.switch_interval:g} s); results in {self.out}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        while any(t.is_alive() for t in load) and not self.abort.is_set():
            if self.now() >= next_progress:
                self._progress()
                next_progress += every
            self.abort.wait(0.2)
        for thread in load:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                self.fail(Kind.INTERNAL, f"{thread.name} did not stop within {STOP_TIMEOUT:g} s")
        self.elapsed = self.now()
        self.load_done.set()
        watcher.join(STOP_TIMEOUT)

    def _start(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                body()
            except Exception as exc:  # a bug in the soak itself: reported, not hidden
                self.fail(Kind.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _progress(self) -> None:
        ops = self.churn.operations if self.churn else 0
        records = self.journal.records if self.journal else 0
        rss = self.rss_samples[-1][1] if self.rss_samples else 0
        self.console.print(
            f"soak {format_seconds(self.now())} of {format_seconds(self.options.duration)} · "
            f"mode {self.current_mode} · fio round {len(self.rounds) + 1} · "
            f"{ops:,} metadata ops · {records:,} fsynced records · "
            f"{len(self.switches)} switches · daemon RSS {in_mib(rss)}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    # -- workers --------------------------------------------------------------------------
    def _fio_rounds(self, mountpoint: Path) -> None:
        round_seconds = fio_round_seconds(self.options.duration)
        (self.out / "fio").mkdir()
        number = 0
        while self._until_deadline():
            remaining = self.deadline - time.monotonic()
            if remaining < FIO_MIN_ROUND:
                break
            number += 1
            runtime = round(min(round_seconds, remaining), 1)
            self.rounds.append(self._fio_round(mountpoint, number, runtime))

    def _fio_round(self, mountpoint: Path, number: int, runtime: float) -> FioRound:
        stem = self.out / "fio" / f"round-{number:03d}"
        job = stem.with_suffix(".fio")
        job.write_text(with_overrides(SOAK_JOB, runtime))
        directory = mountpoint / "fio" / stem.name
        directory.mkdir(parents=True)
        output = stem.with_suffix(".json")
        command = fio_command(self.fio, job, directory, output)
        stem.with_suffix(".command").write_text(shlex.join(command) + "\n")
        log = stem.with_suffix(".log")
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C reaches the soak, which stops fio
            )
        stopped = False
        limit = time.monotonic() + runtime + FIO_GRACE
        try:
            while process.poll() is None:
                if self.abort.is_set():
                    stopped = True
                    break
                if time.monotonic() > limit:
                    stopped = True
                    self.fail(
                        Kind.FIO,
                        f"round {number} did not finish within its runtime + {FIO_GRACE:g} s",
                    )
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
        finally:
            if process.poll() is None:
                stop_fio(process)
        result = self._fio_result(number, runtime, process.returncode, stopped, output, log)
        try:
            shutil.rmtree(directory)
        except OSError as exc:
            self.fail(Kind.FIO, f"round {number}: cannot remove its files: {exc}")
        return result

    def _fio_result(
        self, number: int, runtime: float, status: int, stopped: bool, output: Path, log: Path
    ) -> FioRound:
        text = log.read_text(errors="replace") if log.exists() else ""
        try:
            document = json.loads(output.read_text())
        except (OSError, ValueError):
            if not stopped:
                last = (text.strip().splitlines() or ["no output"])[-1]
                self.fail(Kind.FIO, f"round {number}: fio exited with {status}: {last}")
            return FioRound(number, runtime, status, stopped)
        figures = parse_fio(document)
        verify_errors = 0
        errors = []
        for job in document.get("jobs", []):
            error = int(job.get("error", 0))
            if error == _EILSEQ:
                verify_errors += 1
            elif error:
                errors.append(f"{job.get('jobname')}: {os.strerror(error)}")
        if verify_errors:
            detail = next(
                (line.strip() for line in text.splitlines() if "verify" in line.lower()),
                "see the log",
            )
            self.fail(
                Kind.FIO_VERIFY,
                f"round {number}: {verify_errors} jobs failed verification ({detail}); log {log}",
            )
        for message in errors:
            self.fail(Kind.FIO, f"round {number}: {message}")
        if status != 0 and not stopped and not verify_errors and not errors:
            last = (text.strip().splitlines() or ["no output"])[-1]
            self.fail(Kind.FIO, f"round {number}: fio exited with {status}: {last}")

        def total(direction: str, attribute: str) -> int:
            return sum(int(getattr(f, attribute)) for f in figures if f.direction == direction)

        return FioRound(
            number,
            runtime,
            status,
            stopped,
            reads=total("read", "ios"),
            read_bytes=total("read", "io_bytes"),
            writes=total("write", "ios"),
            write_bytes=total("write", "io_bytes"),
            syncs=total("sync", "ios"),
            verify_errors=verify_errors,
            errors=tuple(errors),
        )

    def _churn(self, mountpoint: Path) -> None:
        churn = self.churn
        assert churn is not None
        churn.root.mkdir()
        while self._until_deadline():
            try:
                churn.step()
                if churn.operations % CHURN_CHECK_EVERY == 0:
                    churn.check()
                    self.churn_checks += 1
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.METADATA, f"after {churn.operations:,} operations: {exc}")
                return

    def _journal(self) -> None:
        journal = self.journal
        assert journal is not None
        try:
            journal.open()
            try:
                while self._until_deadline():
                    journal.step()
            finally:
                journal.close()
        except (OSError, CheckFailed) as exc:
            self.fail(Kind.JOURNAL, f"after {journal.records:,} records: {exc}")

    def _mapped(self) -> None:
        mapped = self.mapped
        assert mapped is not None
        try:
            mapped.open()
            try:
                while self._until_deadline():
                    if self.switch_waiting.is_set():
                        self.abort.wait(0.001)  # the switcher goes first
                        continue
                    with self.mapping_lock:
                        mapped.step()
                    # Paced: an unpaced writer takes the GIL from the other workers.
                    self.abort.wait(MAPPED_PAUSE)
            finally:
                with self.mapping_lock:
                    mapped.close()
        except (OSError, CheckFailed) as exc:
            self.fail(Kind.MAPPED, f"after {mapped.steps:,} steps: {exc}")

    def _switch(self, mountpoint: Path, mode: str) -> str | None:
        """Switch to *mode*; a refusal must be for the mapped writer's live mapping, and
        then the writer lets go of it and the switch is made. Returns the new spec."""
        self.switch_waiting.set()
        try:
            with self.mapping_lock:
                mapped = self.mapped is not None and self.mapped.mapped
                could_map = _maps_shared(mountpoint)
                try:
                    setting = set_mode(mountpoint, mode)
                except SwitchRefused as exc:
                    if not mapped:
                        self.fail(
                            Kind.MODE_SWITCH, f"to {mode}: refused with nothing mapped: {exc}"
                        )
                        return None
                    self.refused_switches += 1
                    assert self.mapped is not None
                    try:
                        self.mapped.release()
                    except (OSError, CheckFailed) as failure:
                        self.fail(Kind.MAPPED, f"releasing the mapping to switch: {failure}")
                        return None
                    setting = set_mode(mountpoint, mode)
                else:
                    if mapped and could_map and not _maps_shared(mountpoint):
                        self.fail(
                            Kind.MAPPED,
                            f"switched to {mode} while a file was mapped shared, whose "
                            "setting cannot map files shared: the switch should be refused",
                        )
                        return None
                return setting.spec
        finally:
            self.switch_waiting.clear()

    def _switch_modes(self, mountpoint: Path) -> None:
        """Switch *k* happens at k intervals, to the mode after the current one. The
        first is at 0 s, as the load starts: every mode, the one mounted in included,
        then serves one full interval of the running load within the first cycle."""
        if len(self.modes) < 2:
            return
        for switch in itertools.count():
            at = self.t0 + switch * self.options.switch_interval
            if at >= self.deadline:
                return
            if self.abort.wait(max(0.0, at - time.monotonic())):
                return
            mode = self.modes[(switch + 1) % len(self.modes)]
            try:
                spec = self._switch(mountpoint, mode)
                if spec is None:
                    return
                current = read_mode(mountpoint).get("spec")
            except IofsError as exc:
                self.fail(Kind.MODE_SWITCH, f"to {mode}: {exc}")
                return
            if current != spec:
                self.fail(Kind.MODE_SWITCH, f"to {mode}: the mount reports {current!r}")
                return
            self.current_mode = mode
            self.switches.append((round(self.now(), 3), mode))

    def _watch(self, mountpoint: Path) -> None:
        """Sample the daemon's RSS; check it is alive, its log and its statistics."""
        daemon = self.daemon
        assert daemon is not None
        process = psutil.Process(daemon.pid)
        interval = min(1.0, max(0.2, self.options.duration / 100))
        next_check = time.monotonic() + WATCH_INTERVAL
        while True:
            if daemon.poll() is not None:
                self.fail(Kind.DAEMON, f"the daemon exited with status {daemon.returncode}")
                return
            if is_disconnected(mountpoint):
                self.fail(Kind.DAEMON, f"{mountpoint} is disconnected (ENOTCONN)")
                return
            try:
                self.rss_samples.append((round(self.now(), 3), process.memory_info().rss))
            except psutil.Error as exc:
                self.fail(Kind.DAEMON, f"cannot read the daemon's memory: {exc}")
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + WATCH_INTERVAL
                self._check_daemon(mountpoint)
            if self.load_done.wait(interval):
                return

    def _check_daemon(self, mountpoint: Path) -> None:
        """Fail on a daemon log error or an unexpected error in the statistics."""
        if log_errors(self.out / "daemon.log") and not any(
            f.kind == Kind.DAEMON_LOG for f in self.failures
        ):
            self.fail(Kind.DAEMON_LOG, f"the daemon logged an error: see {self.out / 'daemon.log'}")
        try:
            unexpected = read_statistics(mountpoint).extra.get("unexpected_errors", 0)
        except IofsError as exc:
            self.fail(Kind.DAEMON, f"cannot read statistics: {exc}")
            return
        if unexpected and not any(f.kind == Kind.UNEXPECTED_ERRORS for f in self.failures):
            self.fail(Kind.UNEXPECTED_ERRORS, f"the statistics count {unexpected}")

    # -- after the load ---------------------------------------------------------------------
    def _final_checks(self, mountpoint: Path) -> None:
        """The tree and the journal through the mount, and the final statistics."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        if self.churn is not None and self.churn.root.is_dir():
            try:
                self.churn.check()
                self.churn_checks += 1
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.METADATA, f"final check through the mount: {exc}")
        if self.journal is not None and self.journal.acknowledged:
            try:
                self.journal_mount = self.journal.verify(self.journal.path)
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.JOURNAL, f"final check through the mount: {exc}")
        if self.mapped is not None and self.mapped.steps:
            try:
                self.mapped.verify(self.mapped.path)
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.MAPPED, f"final check through the mount: {exc}")
        try:
            snapshot = read_statistics(mountpoint)
        except IofsError as exc:
            self.fail(Kind.DAEMON, f"cannot read the final statistics: {exc}")
            return
        (self.out / "stats-end.json").write_text(snapshot.to_json())
        self.unexpected_errors = snapshot.extra.get("unexpected_errors", 0)
        if self.unexpected_errors and not any(
            f.kind == Kind.UNEXPECTED_ERRORS for f in self.failures
        ):
            self.fail(Kind.UNEXPECTED_ERRORS, f"the statistics count {self.unexpected_errors}")

    def _backing_checks(self, backing: Path) -> None:
        """After unmounting: the backing directory must hold what the mount acknowledged."""
        if self.churn is not None and (backing / "churn").is_dir():
            try:
                self.churn.check(backing / "churn")
                self.churn_checks += 1
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.METADATA, f"backing directory after unmount: {exc}")
        if self.journal is not None and self.journal.acknowledged:
            try:
                self.journal_backing = self.journal.verify(backing / "journal")
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.JOURNAL, f"backing file after unmount: {exc}")
        if self.mapped is not None and self.mapped.steps:
            try:
                self.mapped_backing = self.mapped.verify(backing / "mapped")
            except (OSError, CheckFailed) as exc:
                self.fail(Kind.MAPPED, f"backing file after unmount: {exc}")

    def _mapped_figures(self) -> dict[str, int]:
        mapped = self.mapped
        if mapped is None:
            return {}
        return {
            "writes": mapped.writes,
            "pwrites": mapped.pwrites,
            "msyncs": mapped.msyncs,
            "checks": mapped.checks,
            "maps": mapped.maps,
            "refused_maps": mapped.refused_maps,
            "refused_switches": self.refused_switches,
            "verified_backing": self.mapped_backing,
        }

    def _report(self) -> SoakReport:
        daemon_log = self.out / "daemon.log"
        log_count = log_errors(daemon_log)
        if log_count and not any(f.kind == Kind.DAEMON_LOG for f in self.failures):
            self.fail(Kind.DAEMON_LOG, f"{log_count} ERROR or Traceback lines in {daemon_log}")
        warmup = warmup_seconds(
            self.options.duration, len(self.modes), self.options.switch_interval
        )
        report = SoakReport(
            results=str(self.out),
            started=self.started_at,
            duration_s=self.options.duration,
            switch_interval_s=self.options.switch_interval,
            seed=self.seed,
            elapsed_s=round(self.elapsed, 3),
            interrupted=self.interrupted,
            modes=tuple(self.modes),
            skipped_modes=tuple(self.skipped),
            initial_mode=self.modes[0],
            switches=tuple(self.switches),
            fio_rounds=tuple(self.rounds),
            metadata_ops=dict(sorted(self.churn.counts.items())) if self.churn else {},
            metadata_tree_checks=self.churn_checks,
            journal_records=self.journal.records if self.journal else 0,
            journal_syncs=self.journal.syncs if self.journal else 0,
            journal_verified_mount=self.journal_mount,
            journal_verified_backing=self.journal_backing,
            mapped=self._mapped_figures(),
            rss=rss_figures(self.rss_samples, warmup),
            rss_samples=tuple(self.rss_samples),
            daemon_pid=self.daemon.pid if self.daemon else 0,
            daemon_status=self.daemon_status,
            daemon_log_errors=log_count,
            unexpected_errors=self.unexpected_errors,
            failures=tuple(self.failures),
        )
        return replace(report, criteria=evaluate(report))


def _maps_shared(mountpoint: Path) -> bool:
    """Whether the mount says files opened now may be mapped shared."""
    return bool(read_mode(mountpoint).get("shared_mmap", True))
