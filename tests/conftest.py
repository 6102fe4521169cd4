"""Real FUSE mounts for the tests, always unmounted and reaped, even when a test fails."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iofs.backends import ENGINES, EngineConfig
from iofs.control_protocol import STATISTICS_XATTR
from iofs.daemon import start_daemon, stop_daemon
from iofs.errors import IofsError
from iofs.live_mounts import find_mount
from iofs.modes import DEFAULT_MODE, MODES
from iofs.mount import MountOptions
from iofs.transport import TRANSPORT_ENV, TRANSPORT_NAMES, create_transport, default_transport

ROOT = os.geteuid() == 0


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (package fuse3)"
    if not ROOT and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


FUSE_UNAVAILABLE = _fuse_unavailable()
needs_fuse = pytest.mark.skipif(FUSE_UNAVAILABLE is not None, reason=str(FUSE_UNAVAILABLE))
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (ownership, devices, loop images)")


def scratch_dir(prefix: str) -> Path:
    """A temporary directory that other users may traverse (for tests as nobody)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def race_beside_script(
    script: str, arguments: list[str], threads: list[threading.Thread], stop: threading.Event
) -> str:
    """Run the Python *script* with *arguments* while *threads* run beside it; return
    what it printed. The threads are told to *stop* and joined, and the script killed if
    it still runs, however this ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE, text=True
    )
    try:
        for thread in threads:
            thread.start()
        out, _ = process.communicate(timeout=60)
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"the racing script failed: {out!r}"
    return out


def read_if_present(path: Path) -> str:
    """The text of *path*, or "" if there is none: read once, never after an exists()
    that another process (a daemon removing its files) can make stale."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class Mount:
    backing: Path
    mountpoint: Path
    log: Path
    daemon: subprocess.Popen[bytes]
    expect_errors: bool = False

    def statistics(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(os.getxattr(self.mountpoint, STATISTICS_XATTR))
        return data

    def engine_statistics(self) -> dict[str, int]:
        """The current engine's counters."""
        engines = self.statistics()["engines"]
        assert isinstance(engines, list)
        engine: dict[str, int] = engines[0]
        return engine

    def counters(self) -> dict[str, int]:
        """The filesystem's own counters (inodes, open files, unexpected errors...)."""
        extra = self.statistics()["extra"]
        assert isinstance(extra, dict)
        return extra

    def log_text(self) -> str:
        return read_if_present(self.log)


# -- which engines the mount suites run with --------------------------------------------
#: Test modules whose mount tests run once per engine setup (the data path matters there).
ENGINE_SUITES = frozenset({"test_posix", "test_fio", "test_applications", "test_differential"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        action="append",
        default=[],
        metavar="SETUP",
        help="run the mount suites with this engine setup (NAME or NAME+direct); "
        "repeatable; default: every registered engine",
    )

    parser.addoption(
        "--transport",
        choices=TRANSPORT_NAMES,
        default=None,
        help="run every mount over this transport (sets $IOFS_TRANSPORT for the daemons); "
        "default: $IOFS_TRANSPORT, else dev (iofs's default); the tests of one transport "
        "(test_transport*.py, test_nonroot.py) mount over theirs whatever is chosen",
    )


def pytest_configure(config: pytest.Config) -> None:
    transport = config.getoption("--transport", None)
    if transport is not None:
        os.environ[TRANSPORT_ENV] = transport


def engine_setups(config: pytest.Config) -> list[str]:
    chosen: list[str] = config.getoption("--engine")
    return chosen or sorted(ENGINES)


def parse_setup(setup: str) -> tuple[str, EngineConfig]:
    """``NAME`` or ``NAME+direct`` -> the engine name and its configuration."""
    name, _, variant = setup.partition("+")
    return name, EngineConfig(direct=True) if variant == "direct" else EngineConfig()


def skip_unless_runs(setup: str) -> None:
    name, _ = parse_setup(setup)
    reason = ENGINES[name].probe() if name in ENGINES else f"no engine named {name!r}"
    if reason is not None:
        pytest.skip(f"engine {name} cannot run here: {reason}")


#: The one engine setup of the default run for an engine suite's tests marked
#: ``engine_independent`` (no engine part in them: metadata, FIFOs, listings...), if
#: chosen (else the first one chosen); the other setups run them under ``-m slow``.
BASELINE_SETUP = "blocking"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "mount_engine" in metafunc.fixturenames and module in ENGINE_SUITES:
        setups = engine_setups(metafunc.config)
        one = BASELINE_SETUP if BASELINE_SETUP in setups else setups[0]
        independent = metafunc.definition.get_closest_marker("engine_independent") is not None
        params = [
            pytest.param(s, id=s, marks=pytest.mark.slow if independent and s != one else ())
            for s in setups
        ]
        metafunc.parametrize("mount_engine", params, indirect=True, scope="function")


@pytest.fixture
def mount_engine(request: pytest.FixtureRequest) -> str:
    """The engine setup mounts use by default: parametrised in the engine suites."""
    setup: str = getattr(request, "param", "blocking")
    skip_unless_runs(setup)
    return setup


def start_mount(
    backing: Path,
    mountpoint: Path,
    log: Path,
    options: tuple[str, ...] = (),
    engine: str | None = "blocking",
    command: list[str] | None = None,
    mode: str | None = None,
    stats_log: Path | None = None,
    stats_interval: float = 1.0,
    writeback_cache: bool = False,
    fd_budget: int | None = None,
    file_handles: bool = True,
    max_background: int | None = None,
    transport: str | None = None,
    entry_timeout: float = 1.0,
) -> Mount:
    """Start a foreground daemon and wait until the kernel shows the mount.

    *engine* is an engine setup: ``NAME`` or ``NAME+direct``; with *mode* (a mode name),
    pass ``engine=None`` to mount the mode exactly as it is defined. *transport* None
    is the default one (``--transport``, else $IOFS_TRANSPORT, else dev).
    """
    name, config = parse_setup(engine) if engine is not None else (None, EngineConfig())
    opts = MountOptions(
        backing,
        mountpoint,
        mode=mode or DEFAULT_MODE,
        engine=name,
        engine_config=config,
        fuse_options=frozenset(options),
        log_file=log,
        stats_log=stats_log,
        stats_interval=stats_interval,
        writeback_cache=writeback_cache,
        fd_budget=fd_budget,
        file_handles=file_handles,
        max_background=max_background,
        transport=transport or default_transport(),
        entry_timeout=entry_timeout,
    )
    program = command or [sys.executable, "-m", "iofs"]
    try:
        daemon = start_daemon(opts, program)
    except IofsError as exc:
        raise RuntimeError(f"{exc}; daemon log: {read_if_present(log)}") from None
    return Mount(backing, mountpoint, log, daemon)


def daemon_under_limit(soft: int, hard: int | None = None, *drop: str) -> list[str]:
    """The command that runs ``iofs`` with an open-file limit of *soft* (and *hard*; None
    keeps the hard limit): what a login with ``ulimit -n`` gives it. Without
    CAP_SYS_RESOURCE, which root would use to raise the hard limit again; *drop* names
    more capabilities to go without (``dac_read_search``: no file handles)."""
    prefix = ["prlimit", f"--nofile={soft}:{'' if hard is None else hard}", "--"]
    if ROOT:
        caps = ",".join(f"-{cap}" for cap in ("sys_resource", *drop))
        prefix += ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    return [*prefix, sys.executable, "-m", "iofs"]


def finish_mount(mount: Mount) -> None:
    """Unmount and reap; then fail if the daemon logged an unexpected error."""
    stop_daemon(mount.daemon, mount.mountpoint)
    assert find_mount(mount.mountpoint) is None, f"{mount.mountpoint} still mounted"
    log = mount.log_text()
    if not mount.expect_errors:
        assert "Traceback" not in log and " ERROR " not in log, f"daemon log:\n{log}"


MountFactory = Callable[..., Mount]


# -- tests collected a second time, over a transport -------------------------------------
def collected_again(test: Callable[..., None], *marks: pytest.MarkDecorator) -> Callable[..., None]:
    """*test*, a test function of another module, to be collected again in the calling
    module (whose `mount_transport` differs), with *marks* on this copy only: a mark put
    on *test* itself would hold in its own module too."""

    @functools.wraps(test)
    def again(*args: object, **kwargs: object) -> None:
        test(*args, **kwargs)

    for mark in marks:
        again = mark(again)
    return again


def repeat_over(transport: str) -> pytest.MarkDecorator:
    """For a test that repeats a mount suite over *transport*: skipped in a run that
    mounts every test over *transport* already (the original ran that way)."""
    return pytest.mark.skipif(
        default_transport() == transport,
        reason=f"this run mounts every test over {transport}: the original ran so",
    )


@pytest.fixture
def mount_transport() -> str | None:
    """The transport of `mount_factory`'s mounts: None is the run's default (a module
    that tests a transport overrides this fixture)."""
    return None


@pytest.fixture
def mount_factory(mount_engine: str, mount_transport: str | None) -> Iterator[MountFactory]:
    """Mount iofs over fresh temporary directories; everything is undone afterwards."""
    if FUSE_UNAVAILABLE is not None:
        pytest.skip(FUSE_UNAVAILABLE)
    base = scratch_dir("iofs-test-")
    mounts: list[Mount] = []

    def make(
        options: tuple[str, ...] = (), engine: str | None = mount_engine, **kwargs: object
    ) -> Mount:
        index = len(mounts)
        backing, mountpoint = base / f"backing{index}", base / f"mnt{index}"
        backing.mkdir()
        mountpoint.mkdir()
        backing.chmod(0o755)
        kwargs.setdefault("transport", mount_transport)
        m = start_mount(backing, mountpoint, base / f"daemon{index}.log", options, engine, **kwargs)  # type: ignore[arg-type]
        mounts.append(m)
        return m

    try:
        yield make
    finally:
        failures = []
        for m in reversed(mounts):
            try:
                finish_mount(m)
            except AssertionError as exc:
                failures.append(str(exc))
        shutil.rmtree(base, ignore_errors=True)
        if failures:
            pytest.fail("\n".join(failures))


#: Every mode name, for tests that must hold in each (``@pytest.mark.parametrize``).
ALL_MODES = sorted(MODES)


def mode_runs(mode: str, transport: str | None = None) -> str | None:
    """Why *mode* cannot be mounted here over *transport* (None: the run's default): its
    engine's probe, or for the passthrough mode the transport's refusal; or None."""
    engine = MODES[mode].engine
    reason = ENGINES[engine].probe()
    if reason is None and MODES[mode].passthrough:
        reason = create_transport(transport or default_transport()).passthrough_refusal(False)
    return reason


@pytest.fixture(params=ALL_MODES)
def mode_mount(
    request: pytest.FixtureRequest, mount_factory: MountFactory, mount_transport: str | None
) -> Mount:
    """One iofs mount in each mode as defined (``mount_factory(engine=None, mode=M)``)."""
    mode: str = request.param
    reason = mode_runs(mode, mount_transport)
    if reason is not None:
        pytest.skip(f"mode {mode} cannot run here: {reason}")
    return mount_factory(engine=None, mode=mode)


@pytest.fixture
def mnt(mount_factory: MountFactory) -> Mount:
    """One iofs mount over an empty backing directory."""
    return mount_factory()


@pytest.fixture
def plain() -> Iterator[Path]:
    """A plain directory on the same filesystem as the backing directories."""
    path = scratch_dir("iofs-plain-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
