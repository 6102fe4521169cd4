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
import resource
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
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
from .daemon_log import configure_logging, drop_log
from .errors import ExitStatus, IofsError
from .faults import BadFaults, parse_faults
from .fs import Filesystem
from .inodes import default_fd_budget
from .live_mounts import (
    DEAD_CONNECTION,
    FSTYPE,
    default_log_path,
    find_mount,
    is_disconnected,
    read_state,
    state_path,
    unmount,
)
from .mappings import parse_device
from .modes import DEFAULT_MODE, BadSetting, Setting, resolve
from .transport import TRANSPORT_NAMES, MountFailed, Transport, create_transport, default_transport

log = logging.getLogger(__name__)


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


def _check_paths(backing: Path, mountpoint: Path) -> tuple[Path, Path]:
    _clean_up_dead_mount(mountpoint)
    for what, path in (("backing directory", backing), ("mountpoint", mountpoint)):
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno in DEAD_CONNECTION:
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


def mount(opts: MountOptions) -> ExitStatus:
    """Mount and serve until unmounted or signalled. Raises IofsError on bad input.
    FAILED if the connection broke (the transport logged how; the mount is detached)."""
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
    # A mount refused before it served leaves no log behind (`iofs log` needs a mount);
    # a log that was there already (`--log FILE`, another daemon's) is left alone.
    fresh_log = log_file is not None and opts.log_file is None and not log_file.exists()
    configure_logging(opts.debug, log_file)
    mounted = False
    try:
        # A crash in C code (ctypes, libfuse) kills the daemon without a Python traceback:
        # have the fatal signal's stack written where the log goes (stderr, see _daemonize).
        faulthandler.enable()
        if opts.transport == "uring":
            from .transport.uring import prepare_kernel

            # Asked for by name: say why it cannot be had rather than serve another way.
            if (reason := prepare_kernel()) is not None:
                raise IofsError(f"--transport uring: {reason}", ExitStatus.UNAVAILABLE)

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
                    mounted = True
                except (RuntimeError, MountFailed) as exc:
                    # libfuse says why on stderr ("fuse: unknown option(s): ..."): one line.
                    lines = captured().strip().splitlines()
                    reason = str(exc) if isinstance(exc, MountFailed) or not lines else lines[-1]
                    status = exc.status if isinstance(exc, MountFailed) else None
                    status = status or _init_failure_status(reason)
                    raise IofsError(f"cannot mount {mountpoint}: {reason}", status) from None
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
            if transport.failure is not None:
                return ExitStatus.FAILED  # its log stays, as for any daemon that failed
            log.info("unmounted %s", mountpoint)
            if log_file is not None and opts.log_file is None and read_state(mountpoint) is None:
                # The default log goes with the mount (`--log FILE` keeps one); a daemon that
                # failed never gets here and leaves it for `iofs log`. After a lazy detach
                # a newer daemon's state file says it logs there now: leave it to that one.
                with contextlib.suppress(OSError):
                    log_file.unlink()
            return ExitStatus.OK
        finally:
            fs.close()
            os.close(root_fd)
    except BaseException:
        if fresh_log and not mounted and log_file is not None:
            drop_log(log_file)
        raise


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

    async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal detach
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
            task_status.started()
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
        # Caught before the first request is served: the dev transport answers INIT (and
        # so lets the mount be used) as soon as it serves, and a SIGTERM from then on must
        # unmount, not kill the daemon.
        await nursery.start(watch_signals, name="iofs-signals")
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
    # A connection that broke leaves the mount in place: detach it, as after a failure.
    return detach or transport.failure is not None


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
