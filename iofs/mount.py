"""Mount lifecycle: check the arguments, mount, serve, and unmount cleanly.

`mount` validates everything it can before touching FUSE, so that a bad argument is one
line and exit status 1. In the background (the default) the process forks only after
the kernel has accepted the mount, and the parent returns once the daemon serves.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import json
import logging
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import pyfuse3
import trio

from . import mounttable
from .backends import (
    Engine,
    EngineConfig,
    EngineUnavailable,
    create_engine,
    fallback_engine,
)
from .connection import KERNEL_MAX_BACKGROUND, MAX_BACKGROUND_LIMIT, set_background_limits
from .errors import ExitStatus, IofsError
from .faults import BadFaults, parse_faults
from .fs import Filesystem
from .inodes import default_fd_budget
from .mappings import parse_device
from .modes import DEFAULT_MODE, BadSetting, Setting, resolve
from .mounttable import MountEntry
from .transport import TRANSPORT_NAMES, MountFailed, Transport, create_transport, default_transport

log = logging.getLogger(__name__)

FSTYPE = "fuse.iofs"


@dataclass(frozen=True)
class MountOptions:
    backing: Path
    mountpoint: Path
    #: A mode name; *engine*, ``engine_config.direct`` and *caching* override its parts.
    mode: str = DEFAULT_MODE
    engine: str | None = None
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    caching: str | None = None
    fuse_options: frozenset[str] = field(default_factory=frozenset)
    foreground: bool = False
    debug: bool = False
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    log_file: Path | None = None
    max_tasks: int = 64
    #: Append a statistics snapshot (one JSON line) to this file every *stats_interval* s.
    stats_log: Path | None = None
    stats_interval: float = 1.0
    #: Per-request counters and latency histograms (off only to measure their cost).
    statistics: bool = True
    #: The kernel's writeback cache (FUSE_CAP_WRITEBACK_CACHE): negotiated at mount time,
    #: so it is a mount option, not part of a mode.
    writeback_cache: bool = False
    #: If the mode's engine cannot run here, use the closest one that can
    #: (`fallback_engine`) instead of refusing to mount.
    allow_fallback: bool = False
    #: A fault spec (`iofs.faults`): data operations to fail or delay from the start.
    faults: str = "off"
    #: Most descriptors held for inodes (None: `default_fd_budget` of the limit).
    fd_budget: int | None = None
    #: Keep inodes as file handles where the daemon may (False: parent and name only).
    file_handles: bool = True
    #: The FUSE connection's max_background (None: the engine's queue depth).
    max_background: int | None = None
    #: How requests reach the filesystem (`iofs.transport`): pyfuse3 or dev.
    transport: str = field(default_factory=default_transport)


# -- where a mount's state lives -------------------------------------------------------
def runtime_dir() -> Path:
    """Per-user directory for daemon state files and background logs."""
    if os.geteuid() == 0:
        base = Path("/run/iofs")
    elif "XDG_RUNTIME_DIR" in os.environ:
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "iofs"
    else:
        base = Path(f"/tmp/iofs-{os.geteuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def escaped_mountpoint(mountpoint: Path) -> str:
    """*mountpoint* as a readable file name, the way ``systemd-escape --path`` does it:
    ``/srv/my mnt`` -> ``srv-my\\x20mnt``. Slashes become ``-``; a byte that is not a
    letter, digit, ``_``, ``.`` or ``:`` (and a leading ``.``) becomes ``\\xNN``, so two
    mountpoints never share a name (`unescaped_mountpoint` undoes it)."""
    raw = os.fsencode(mountpoint).strip(b"/")
    if not raw:
        return "-"
    out = []
    for index, byte in enumerate(raw):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in "_:" or (char == "." and index)):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescaped_mountpoint(name: str) -> Path:
    """The mountpoint a state or log file name (without its suffix) was made from."""
    if name == "-":
        return Path("/")
    raw = re.sub(
        rb"\\x([0-9a-f]{2})|-",
        lambda m: bytes([int(m[1], 16)]) if m[1] else b"/",
        name.encode(),
    )
    return Path(os.fsdecode(b"/" + raw))


def state_path(mountpoint: Path) -> Path:
    """Where the daemon serving *mountpoint* keeps its pid and settings (JSON)."""
    return runtime_dir() / (escaped_mountpoint(mountpoint) + ".json")


def default_log_path(mountpoint: Path) -> Path:
    return state_path(mountpoint).with_suffix(".log")


def read_state(mountpoint: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(state_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None
    return state


def find_mount(mountpoint: Path) -> MountEntry | None:
    return mounttable.find(mountpoint)


def mount_owner(entry: MountEntry) -> int | None:
    """The uid of the user who made a FUSE mount (its ``user_id=`` option), or None."""
    for option in entry.options.split(","):
        if option.startswith("user_id="):
            return int(option.removeprefix("user_id="))
    return None


def containing_mount(path: Path) -> Path:
    """The mountpoint of the iofs mount that *path* lies in: any path inside a mount
    names it, as for df. IofsError if *path* does not exist (BAD_PATH) or lies in no
    iofs mount (MOUNT_CONFLICT). A path in a mount whose daemon died is found too."""
    try:
        os.stat(path)
    except OSError as exc:
        # ENOTCONN: a dead mount; EACCES: a FUSE mount without allow_other, closed to
        # all but its owner. Both are found in the table below; the caller says more.
        if exc.errno not in (errno.ENOTCONN, errno.EACCES):
            raise IofsError(f"{path}: {exc.strerror}", ExitStatus.BAD_PATH) from None
    real = Path(os.path.realpath(path))
    best = mounttable.containing(real)
    if best is not None and best.fstype == FSTYPE:
        return Path(best.mountpoint)
    if best is not None and Path(best.mountpoint) == real:
        raise IofsError(
            f"{real} is not an iofs mount (it is {best.fstype})", ExitStatus.MOUNT_CONFLICT
        )
    raise IofsError(f"{path} is not in an iofs mount", ExitStatus.MOUNT_CONFLICT)


def is_disconnected(mountpoint: Path) -> bool:
    """True if *mountpoint* is a FUSE mount whose daemon has gone (ENOTCONN)."""
    try:
        # statfs, not stat: the kernel answers stat from its attribute cache for up to
        # --attr-timeout after the daemon died, but always sends STATFS to the daemon.
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


# -- mounting --------------------------------------------------------------------------
def _check_paths(backing: Path, mountpoint: Path) -> tuple[Path, Path]:
    _clean_up_dead_mount(mountpoint)
    for what, path in (("backing directory", backing), ("mountpoint", mountpoint)):
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                raise IofsError(
                    f"{path} is a stale mount whose daemon died: run 'iofs umount {path}'",
                    ExitStatus.MOUNT_CONFLICT,
                ) from None
            status = ExitStatus.PERMISSION if exc.errno == errno.EACCES else ExitStatus.BAD_PATH
            raise IofsError(f"{what} {path}: {exc.strerror}", status) from None
        if not stat.S_ISDIR(st.st_mode):
            raise IofsError(f"{what} {path}: not a directory", ExitStatus.BAD_PATH)
    backing, mountpoint = backing.resolve(), mountpoint.resolve()
    existing = find_mount(mountpoint)
    if existing is not None and existing.fstype == FSTYPE:
        raise IofsError(
            f"{mountpoint} is already an iofs mount (of {existing.source})",
            ExitStatus.MOUNT_CONFLICT,
        )
    if backing != mountpoint and mountpoint.is_relative_to(backing):
        # The daemon's own lookups would enter its mount and wait for themselves.
        raise IofsError(
            f"mountpoint {mountpoint} lies inside the backing directory {backing}",
            ExitStatus.MOUNT_CONFLICT,
        )
    if backing != mountpoint and backing.is_relative_to(mountpoint):
        # The mount would hide the backing directory from everyone but the daemon.
        raise IofsError(
            f"backing directory {backing} lies inside the mountpoint {mountpoint}",
            ExitStatus.MOUNT_CONFLICT,
        )
    if os.geteuid() != 0 and not os.access(mountpoint, os.W_OK):
        # fusermount3 refuses too, less clearly; say it before anything is started.
        raise IofsError(
            f"mountpoint {mountpoint}: no write access (mount on a directory you own)",
            ExitStatus.PERMISSION,
        )
    return backing, mountpoint


def _clean_up_dead_mount(mountpoint: Path) -> None:
    """If *mountpoint* is an iofs mount whose daemon died, detach it and say so, so that
    one `iofs mount` recovers it. Anything else is left for the checks to refuse."""
    if not is_disconnected(mountpoint):
        return
    entry = find_mount(Path(os.path.realpath(mountpoint)))
    if entry is not None and entry.fstype == FSTYPE:
        print(f"iofs: {unmount(mountpoint)}", file=sys.stderr)


class _FuseOption(str):
    """A mount option that reaches libfuse as the bytes the filesystem path stands for.

    pyfuse3 hands each option to libfuse as ``option.encode('us-ascii')``, so an
    ``fsname=`` holding a path such as ``/srv/données`` (or undecodable bytes, kept as
    surrogates) would fail with UnicodeEncodeError. The kernel takes any bytes as a
    mount source: encode the way the path was decoded.
    """

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return os.fsencode(str(self))


def _fuse_options(opts: MountOptions, backing: Path) -> set[str]:
    escaped = str(backing).replace("\\", "\\\\").replace(",", "\\,")
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks access
    options |= {_FuseOption(f"fsname={escaped}"), "subtype=iofs"}
    options |= {_FuseOption(option) for option in opts.fuse_options}
    return options


class _AbandonedReplies(logging.Filter):
    """pyfuse3 logs an ERROR when the kernel no longer wants a reply (ENOENT): the
    caller was interrupted, or the mount is going away while a release was in flight.
    The work was done and nobody waits for the answer: that is a warning, not an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().endswith(
            "fuse_reply_* failed with No such file or directory"
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _configure_logging(debug: bool, log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(log_file)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(_AbandonedReplies())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def mount(opts: MountOptions) -> None:
    """Mount and serve until unmounted or signalled. Raises IofsError on bad input."""
    try:
        setting = resolve(
            opts.mode,
            engine=opts.engine,
            direct=opts.engine_config.direct,
            caching=opts.caching,
        )
    except BadSetting as exc:
        raise IofsError(f"{exc}", ExitStatus.BAD_SETTING) from None
    try:
        faults = parse_faults(opts.faults)
    except BadFaults as exc:
        raise IofsError(f"--faults: {exc}", ExitStatus.BAD_SETTING) from None
    if opts.transport not in TRANSPORT_NAMES:
        raise IofsError(
            f"--transport: no transport {opts.transport!r} ({', '.join(TRANSPORT_NAMES)})",
            ExitStatus.USAGE,
        )
    backing, mountpoint = _check_paths(opts.backing, opts.mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise IofsError(
            "/dev/fuse is missing: load the fuse module (modprobe fuse)", ExitStatus.UNAVAILABLE
        )
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise IofsError(
            "no access to /dev/fuse: ask an administrator for it (or mount as root)",
            ExitStatus.PERMISSION,
        )
    setting, engine = _runnable(setting, opts.engine_config, opts.allow_fallback)
    log_file = opts.log_file.absolute() if opts.log_file else None  # the daemon does chdir /
    if log_file is None and not opts.foreground:
        log_file = default_log_path(mountpoint)
    _configure_logging(opts.debug, log_file)
    # A crash in C code (ctypes, libfuse) kills the daemon without a Python traceback:
    # have the fatal signal's stack written where the log goes (stderr, see _daemonize).
    faulthandler.enable()

    limit = raise_fd_limit()
    budget = opts.fd_budget or default_fd_budget(limit)
    root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY)
    fs = Filesystem(
        root_fd,
        engine,
        setting=setting,
        attr_timeout=opts.attr_timeout,
        entry_timeout=opts.entry_timeout,
        statistics=opts.statistics,
        writeback_cache=opts.writeback_cache,
        faults=faults,
        allow_fallback=opts.allow_fallback,
        fd_budget=budget,
        file_handles=opts.file_handles,
    )
    how = fs.inodes.no_handles_reason
    log.info(
        "open-file limit %d: up to %d descriptors held for inodes; evicted ones found again %s",
        limit,
        budget,
        "by file handle" if how is None else f"by parent and name ({how})",
    )
    fs.log_file = str(log_file) if log_file else None
    if opts.max_background is not None and opts.max_background > MAX_BACKGROUND_LIMIT:
        raise IofsError(
            f"--max-background: the kernel takes at most {MAX_BACKGROUND_LIMIT}",
            ExitStatus.BAD_SETTING,
        )
    # A queue deeper than the kernel's limit fills every background slot it has.
    wanted_background = opts.max_background or min(
        max(opts.engine_config.queue_depth, KERNEL_MAX_BACKGROUND), MAX_BACKGROUND_LIMIT
    )
    transport = create_transport(opts.transport, max_background=wanted_background)
    fs.transport = transport
    refusal = fs.passthrough_refusal(setting)
    if refusal is not None:
        raise IofsError(f"mode {setting.mode}: {refusal}", ExitStatus.UNAVAILABLE)
    try:
        with _stderr_captured() as captured:
            try:
                transport.mount(fs, mountpoint, _fuse_options(opts, backing))
            except (RuntimeError, MountFailed) as exc:
                # libfuse says why on stderr ("fuse: unknown option(s): ..."): one line.
                lines = captured().strip().splitlines()
                reason = str(exc) if isinstance(exc, MountFailed) or not lines else lines[-1]
                raise IofsError(
                    f"cannot mount {mountpoint}: {reason}", _init_failure_status(reason)
                ) from None
        _raise_background_limits(fs, transport, wanted_background, mountpoint, log_file)
        state = state_path(mountpoint)
        detach = True  # unless the kernel has let go already (see _serve)
        try:
            if opts.foreground:
                ready = _noop
            else:
                # Kernel AIO contexts belong to the process that set them up: a forked
                # daemon using its parent's dies of SIGBUS at its first completion. The
                # engine made above only proved that this one can be made here.
                trio.run(engine.aclose)
                ready = _daemonize(log_file)
                fs.engine = create_engine(setting.engine, engine.config)
            state.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "started": psutil.Process().create_time(),
                        "backing": str(backing),
                        "mountpoint": str(mountpoint),
                        "mode": setting.spec,
                        "transport": transport.name,
                        "log": str(log_file) if log_file else None,
                    }
                )
            )
            # The kernel has applied the caller's umask to every mode it sends.
            os.umask(0)
            log.info(
                "serving %s at %s in mode %s over %s",
                backing,
                mountpoint,
                setting.describe(),
                transport.name,
            )
            detach = trio.run(_serve, fs, transport, mountpoint, ready, opts)
        except Exception:
            log.exception("the daemon failed")
            raise
        finally:
            # After a lazy detach a newer daemon may serve the mountpoint: its file stays.
            if (read_state(mountpoint) or {}).get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    state.unlink()
            # A daemon that fails must not leave a mount behind that answers ENOTCONN.
            transport.close(unmount=detach)
        log.info("unmounted %s", mountpoint)
        if log_file is not None and opts.log_file is None and read_state(mountpoint) is None:
            # The default log goes with the mount (`--log FILE` keeps one); a daemon that
            # failed never gets here and leaves it for `iofs log`. After a lazy detach
            # a newer daemon's state file says it logs there now: leave it to that one.
            with contextlib.suppress(OSError):
                log_file.unlink()
    finally:
        fs.close()
        os.close(root_fd)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, and as root (CAP_SYS_RESOURCE) the
    hard one to ``fs.nr_open``, as far as allowed; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as nr_open_file:
            nr_open = int(nr_open_file.read())
    except (OSError, ValueError):
        nr_open = hard
    if hard != resource.RLIM_INFINITY and hard < nr_open:
        with contextlib.suppress(OSError, ValueError):  # EPERM without CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (nr_open, nr_open))
            return nr_open
    if hard == resource.RLIM_INFINITY:
        hard = nr_open
    if soft < hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _raise_background_limits(
    fs: Filesystem, transport: Transport, wanted: int, mountpoint: Path, log_file: Path | None
) -> None:
    """Let fio's queue depth reach the engine: raise the connection's max_background.

    A transport that answers INIT itself asks for *wanted* there. libfuse 3.14 leaves
    the limits to the kernel in INIT (it sends 0), so they are set through fusectl as
    soon as the mount exists; without root the kernel's stay, with one warning.
    """
    limits = transport.background_limits(wanted) or set_background_limits(
        _mount_device(mountpoint), wanted
    )
    fs.background_limits = limits
    if limits.warning is not None:
        log.warning("%s", limits.warning)
        if log_file is not None:  # else the log is stderr already
            print(f"iofs: {limits.warning}", file=sys.stderr)
    else:
        log.info(
            "FUSE max_background %d, congestion_threshold %d",
            limits.max_background,
            limits.congestion_threshold,
        )


def _init_failure_status(reason: str) -> ExitStatus:
    """The exit status for what libfuse or fusermount3 said when the mount failed."""
    lowered = reason.lower()
    if "unknown option" in lowered or "invalid argument" in lowered:
        return ExitStatus.USAGE  # a -o option the kernel or libfuse does not take
    if any(word in lowered for word in ("permission denied", "not permitted", "no write access")):
        return ExitStatus.PERMISSION
    return ExitStatus.FAILED


def _runnable(
    setting: Setting, config: EngineConfig, allow_fallback: bool
) -> tuple[Setting, Engine]:
    """*setting* and its engine made with *config*, or with --allow-fallback the closest
    engine that runs; else IofsError. An engine may run here in general and still not
    with *config* (an AIO context beyond fs.aio-max-nr): that counts as not running."""
    tried: list[str] = []
    while True:
        try:
            engine = create_engine(setting.engine, replace(config, direct=setting.direct))
        except EngineUnavailable as exc:
            tried.append(setting.engine)
            failure = str(exc).removeprefix(f"engine {setting.engine!r} cannot run here: ")
            fallback = fallback_engine(setting.engine, failure, tried) if allow_fallback else None
            if fallback is None:
                hint = (
                    ""
                    if allow_fallback
                    else " (--allow-fallback uses the closest engine that runs)"
                )
                raise IofsError(
                    f"mode {setting.mode}: {exc}{hint}", ExitStatus.UNAVAILABLE
                ) from None
            name, reason = fallback
            print(
                f"iofs: engine {setting.engine} cannot run here ({reason}): "
                f"mode {setting.mode} uses {name} instead (--allow-fallback)",
                file=sys.stderr,
            )
            setting = replace(setting, engine=name)
            continue
        return setting, engine


def _noop() -> None:
    pass


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], str]]:
    """Collect what C code writes to file descriptor 2 inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)


async def _serve(
    fs: Filesystem,
    transport: Transport,
    mountpoint: Path,
    ready: Callable[[], None],
    opts: MountOptions,
) -> bool:
    """Serve requests until unmounted; return True if we must still unmount (lazily)."""
    detach = False
    # Which mount is ours: after `iofs umount --lazy` the mountpoint may hold another.
    device = _mount_device(mountpoint)
    fs.device = parse_device(device) if device is not None else None
    fs.others_allowed = "allow_other" in opts.fuse_options

    async def watch_signals() -> None:
        nonlocal detach
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
            async for signum in sigs:
                log.info("received %s, unmounting", signal.Signals(signum).name)
                if _mount_device(mountpoint) != device:
                    # Detached already: unmounting the path would hit whatever is
                    # mounted there now. Users of our files get ENOTCONN from now on.
                    log.warning("the mount was detached already: stopping")
                    transport.terminate()
                    return
                # A normal unmount, served by the still running loop, ends main() by
                # itself. If files are still open, detach lazily instead: their users
                # get ENOTCONN from then on, as after any forced FUSE unmount.
                result = await trio.run_process(
                    ["fusermount3", "-u", str(mountpoint)], capture_stderr=True, check=False
                )
                if result.returncode != 0:
                    reason = result.stderr.decode(errors="replace").strip()
                    log.warning("unmount failed (%s): detaching lazily", reason)
                    detach = True
                    transport.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, name="iofs-signals")
        fs.start(nursery)
        if opts.stats_log is not None:
            nursery.start_soon(
                _log_statistics, fs, opts.stats_log, opts.stats_interval, name="iofs-stats-log"
            )
        try:
            ready()
            # Room for every background request the kernel may send, and the others.
            await transport.serve(max(opts.max_tasks, fs.background_limits.max_background + 16))
        finally:
            # Every request handler has returned: the engines only have to drain.
            await fs.aclose()
            nursery.cancel_scope.cancel()
    return detach


def _mount_device(mountpoint: Path) -> str | None:
    """The device (``major:minor``) of the mount on top at *mountpoint*, or None."""
    entry = mounttable.find(mountpoint)
    return entry.device if entry else None


async def _log_statistics(fs: Filesystem, path: Path, interval: float) -> None:
    """Append one compact JSON snapshot per line to *path*, every *interval* seconds."""
    try:
        with open(path, "a", buffering=1) as log_file:  # line-buffered: lines land whole
            while True:
                log_file.write(fs.statistics().to_json(indent=None) + "\n")
                await trio.sleep(interval)
    except Exception:  # the filesystem must go on serving without its log
        log.exception("statistics log %s stopped", path)


def _daemonize(log_file: Path | None) -> Callable[[], None]:
    """Detach into the background; the caller's process exits once the daemon is ready.

    Returns the function the daemon calls when it serves requests. Until then the
    original process waits, so `iofs mount` returns only when the mount works, and
    reports the daemon's failure if it dies first.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read()
        if message == b"ready":
            os._exit(0)
        sys.stderr.write(f"iofs: error: the daemon failed to start; see {log_file}\n")
        os._exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    # What C code prints (libfuse's warnings, -o debug) goes to the log, not to nowhere.
    if log_file is None:
        output = devnull
    else:
        output = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for fd in (1, 2):
        os.dup2(output, fd)
    os.close(devnull)
    if output != devnull:
        os.close(output)

    def ready() -> None:
        os.write(write_end, b"ready")
        os.close(write_end)

    return ready


# -- unmounting ------------------------------------------------------------------------
def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 10.0) -> str:
    """Unmount an iofs mount, also when its daemon has died. Returns what was done.

    Waits up to *timeout* seconds for the daemon to exit. A busy mount is refused, or
    with *lazy* detached at once: its daemon serves the files still open on it and
    exits after the last close, which nobody waits for.
    """
    mountpoint = containing_mount(mountpoint)
    entry = find_mount(mountpoint)
    owner = mount_owner(entry) if entry is not None else None
    if owner not in (None, os.getuid()) and os.geteuid() != 0:
        # fusermount3 would say "entry for ... not found" or suggest --lazy: say it plainly.
        raise IofsError(
            f"only root or the user who mounted {mountpoint} (uid {owner}) may unmount it",
            ExitStatus.PERMISSION,
        )
    dead = is_disconnected(mountpoint)
    # Read before unmounting: a daemon removes its state file on the way out, and
    # `iofs umount` must still know which process to wait for.
    state = read_state(mountpoint)
    # A dead mount can only be detached. --lazy tries a normal unmount first, to know
    # whether the daemon exits now or only once the mount's users let go of it.
    result = _fusermount(mountpoint, detach=dead)
    busy = lazy and not dead and result.returncode != 0
    if busy:
        result = _fusermount(mountpoint, detach=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise IofsError(
            f"cannot unmount {mountpoint}: {reason} (try --lazy)", ExitStatus.MOUNT_CONFLICT
        )
    if busy:
        # The daemon goes on serving the files still open on the detached mount; it
        # exits, and removes its state file, when the kernel lets go after the last close.
        return f"detached {mountpoint}: its daemon exits once the files open on it are closed"
    if state is not None:
        _wait_for_daemon(state, timeout)
        if read_state(mountpoint) == state:  # a killed daemon could not remove it
            with contextlib.suppress(OSError):
                state_path(mountpoint).unlink()
    if dead:
        log = (state or {}).get("log")
        kept = f"; its log: {log}" if log else ""  # the daemon never removed it
        return f"cleaned up {mountpoint} (its daemon had died{kept})"
    return f"unmounted {mountpoint}"


def _fusermount(mountpoint: Path, detach: bool) -> subprocess.CompletedProcess[str]:
    command = ["fusermount3", "-u", *(["-z"] if detach else []), str(mountpoint)]
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise IofsError(
            "fusermount3 not found: install the fuse3 package", ExitStatus.UNAVAILABLE
        ) from None


def _daemon_process(state: dict[str, object]) -> psutil.Process | None:
    pid, started = state.get("pid"), state.get("started")
    if not isinstance(pid, int) or not isinstance(started, float):
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01:
            return None  # the pid has been reused
    except psutil.Error:
        return None
    return process


def _wait_for_daemon(state: dict[str, object], timeout: float) -> None:
    process = _daemon_process(state)
    if process is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.02)
    log.warning("daemon %d still running %.0f s after unmount", process.pid, timeout)


def start_daemon(
    opts: MountOptions,
    program: Sequence[str] = (sys.executable, "-m", "iofs"),
    timeout: float = 20.0,
) -> subprocess.Popen[bytes]:
    """Start ``iofs mount --foreground`` as a child; return once the kernel shows the mount.

    *program* is what runs ``iofs`` (tests substitute a daemon with an injected fault).
    The caller owns the child: `stop_daemon` unmounts and reaps it.
    """
    command = [*program, "mount", "--foreground", "--mode", opts.mode]
    if opts.engine is not None:
        command += ["--engine", opts.engine]
    if opts.caching is not None:
        command += ["--cache", opts.caching]
    config = opts.engine_config
    if config.direct is not None:
        command.append("--direct" if config.direct else "--no-direct")
    command += ["--queue-depth", str(config.queue_depth), "--workers", str(config.workers)]
    for option in sorted(opts.fuse_options):
        command += ["-o", option]
    command += ["--attr-timeout", str(opts.attr_timeout)]
    command += ["--entry-timeout", str(opts.entry_timeout)]
    if opts.debug:
        command.append("--debug")
    if opts.log_file is not None:
        command += ["--log", str(opts.log_file)]
    if not opts.statistics:
        command.append("--no-statistics")
    if opts.writeback_cache:
        command.append("--writeback-cache")
    if opts.allow_fallback:
        command.append("--allow-fallback")
    if opts.faults != "off":
        command.append(f"--faults={opts.faults}")  # '=': a spec may start with '-'
    if opts.fd_budget is not None:
        command += ["--fd-budget", str(opts.fd_budget)]
    if not opts.file_handles:
        command.append("--no-file-handles")
    if opts.max_background is not None:
        command += ["--max-background", str(opts.max_background)]
    command += ["--transport", opts.transport]
    if opts.stats_log is not None:
        command += ["--stats-log", str(opts.stats_log)]
        command += ["--stats-interval", str(opts.stats_interval)]
    command += [str(opts.backing), str(opts.mountpoint)]
    mountpoint = Path(os.path.realpath(opts.mountpoint))
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while find_mount(mountpoint) is None:
            if daemon.poll() is not None:
                raise IofsError(f"iofs mount exited with status {daemon.returncode}")
            if time.monotonic() > deadline:
                raise IofsError(f"{mountpoint} not mounted after {timeout:.0f} s")
            time.sleep(0.01)
    except BaseException:
        stop_daemon(daemon, mountpoint)
        raise
    return daemon


@contextlib.contextmanager
def mounted(opts: MountOptions) -> Iterator[subprocess.Popen[bytes]]:
    """An iofs daemon serving *opts.mountpoint* for the block, always stopped after it."""
    daemon = start_daemon(opts)
    try:
        yield daemon
    finally:
        stop_daemon(daemon, Path(os.path.realpath(opts.mountpoint)))


def stop_daemon(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """Unmount *mountpoint* and reap *daemon*, escalating until both are done."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)  # unmounts cleanly, see _serve
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    if find_mount(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
