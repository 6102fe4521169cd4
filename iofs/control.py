"""The client side of the control protocol (`iofs.control_protocol`): xattrs on the root
of a live mount.

``iofs mode``, ``iofs stats`` and ``iofs top`` read and write them; so can anyone with
``getfattr -n iofs.statistics --only-values MOUNTPOINT`` or
``setfattr -n iofs.mode -v xfs MOUNTPOINT``. ``iofs faults`` reads and sets
``iofs.faults`` (``setfattr -n iofs.faults -v eio=0.01 MOUNTPOINT``). Every command
takes any path inside the mount, as df does. This side loads nothing of the daemon
(no pyfuse3).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import cast

from .backends import EngineUnavailable, engine_class
from .control_protocol import (
    FAULTS_XATTR,
    MODE_XATTR,
    STATISTICS_XATTR,
    XATTR_NAME_MAX,
    FaultsValue,
    ModeValue,
    read_only_request,
)
from .errors import ExitStatus, IofsError
from .faults import BadFaults, FaultSpec, parse_faults
from .live_mounts import (
    containing_mount,
    default_log_path,
    find_mount,
    is_disconnected,
    mount_owner,
    read_state,
)
from .modes import BadSetting, Setting, parse_setting
from .stats import Snapshot


class SwitchRefused(IofsError):
    """The daemon refused a switch because files on the mount are mapped shared."""


def live_mountpoint(path: Path) -> Path:
    """The root of the live iofs mount that *path* lies in; IofsError if there is none."""
    return _checked_mountpoint(path)


def _checked_mountpoint(path: Path) -> Path:
    """The root of the live iofs mount that *path* lies in (any path inside it)."""
    mountpoint = containing_mount(path)
    if is_disconnected(mountpoint):
        raise IofsError(
            f"{mountpoint}: the iofs daemon has died (run 'iofs umount {mountpoint}')",
            ExitStatus.MOUNT_CONFLICT,
        )
    return mountpoint


def _read_refused(path: Path, what: str, exc: OSError) -> IofsError:
    """The error for a control read the kernel or the daemon refused."""
    if exc.errno not in (errno.EPERM, errno.EACCES):
        return IofsError(f"cannot read {what} of {path}: {exc.strerror}")
    entry = find_mount(path)
    owner = mount_owner(entry) if entry is not None else None
    if entry is not None and owner != os.getuid() and "allow_other" not in entry.options:
        return IofsError(
            f"cannot read {what} of {path}: only the user who mounted it (uid {owner}) "
            "and no one else may use it (it was mounted without -o allow_other)",
            ExitStatus.PERMISSION,
        )
    return IofsError(f"cannot read {what} of {path}: {exc.strerror}", ExitStatus.PERMISSION)


def _read(mountpoint: Path, name: bytes) -> object:
    path = _checked_mountpoint(mountpoint)
    try:
        value = os.getxattr(path, name)
    except OSError as exc:
        raise _read_refused(path, name.decode(), exc) from None
    return json.loads(value)


def read_mode(mountpoint: Path) -> ModeValue:
    """The mount's current setting, its description and the history of switches."""
    return cast(ModeValue, _read(mountpoint, MODE_XATTR))


def read_statistics(mountpoint: Path, *, checked: bool = False) -> Snapshot:
    """A statistics snapshot of the live mount that *mountpoint* lies in.

    *checked*: *mountpoint* is the mount's root, found live already (by a first call):
    the read is then the only request the daemon sees (``iofs top`` polls this way).
    """
    path = mountpoint if checked else _checked_mountpoint(mountpoint)
    try:
        return Snapshot.from_json(os.getxattr(path, STATISTICS_XATTR).decode())
    except OSError as exc:
        raise _read_refused(path, "the statistics", exc) from None
    except ValueError as exc:
        raise IofsError(f"{path} answered statistics iofs cannot read: {exc}") from None


def set_mode(mountpoint: Path, spec: str) -> Setting:
    """Switch the live mount to *spec*; checked here first, so errors say why."""
    path = _checked_mountpoint(mountpoint)
    try:
        setting = parse_setting(spec)
    except BadSetting as exc:
        raise IofsError(str(exc), ExitStatus.BAD_SETTING) from None
    try:
        _write(path, MODE_XATTR, setting.spec, "switch its mode")
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # files are mapped shared: Filesystem.refuse_if_mapped
            raise SwitchRefused(_refusal(path, setting), ExitStatus.FAILED) from None
        if exc.errno != errno.EOPNOTSUPP:
            raise
        raise IofsError(_refusal(path, setting), ExitStatus.UNAVAILABLE) from None
    # The daemon may have used a fallback engine (mounted with --allow-fallback).
    return parse_setting(str(read_mode(path)["spec"]))


def _refusal(path: Path, setting: Setting) -> str:
    """Why the daemon refused to switch to *setting* (EOPNOTSUPP, or EBUSY while files
    are mapped shared), as it recorded it."""
    current = read_mode(path)
    refused = current.get("refused")
    if refused is not None and refused.get("spec") == setting.spec:
        reason = str(refused["reason"])
    else:  # a daemon from before "refused" was recorded: say what this side knows
        try:
            engine_class(setting.engine)
            reason = f"the daemon cannot run engine {setting.engine!r}"
        except EngineUnavailable as unavailable:
            reason = str(unavailable)
    log = current.get("log")
    where = f"its log: {log}" if log else "the daemon logs to its standard error"
    return f"{path} stays in {current['spec']}: {reason} ({where})"


def read_faults(mountpoint: Path) -> FaultsValue:
    """The mount's fault-injection setting: spec, description, seed, counters per op."""
    return cast(FaultsValue, _read(mountpoint, FAULTS_XATTR))


def set_faults(mountpoint: Path, spec: str) -> FaultSpec:
    """Set fault injection on the live mount (``off`` stops it); checked here first."""
    path = _checked_mountpoint(mountpoint)
    try:
        faults = parse_faults(spec)
    except BadFaults as exc:
        raise IofsError(str(exc), ExitStatus.BAD_SETTING) from None
    _write(path, FAULTS_XATTR, faults.text, "set its fault injection")
    return faults


def _write(path: Path, name: bytes, value: str, what: str) -> None:
    """Write the control xattr *name*; refusals become IofsError, except EOPNOTSUPP and
    EBUSY (the caller knows what they mean for its attribute), which stay OSErrors."""
    try:
        try:
            os.setxattr(path, name, value.encode())
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # A read-only mount refuses every setxattr in the VFS, before the daemon
            # sees it; a getxattr of "NAME=VALUE" still reaches it (`iofs.control_protocol`).
            request = read_only_request(name, value.encode())
            if len(request) > XATTR_NAME_MAX:
                raise IofsError(
                    f"{path} is mounted read-only: a setting is at most "
                    f"{XATTR_NAME_MAX - len(name) - 1} bytes there ({value!r} is longer)",
                    ExitStatus.BAD_SETTING,
                ) from None
            os.getxattr(path, request)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise IofsError(
                f"only the owner of {path} or root may {what} ({exc.strerror})",
                ExitStatus.PERMISSION,
            ) from None
        if exc.errno in (errno.EOPNOTSUPP, errno.EBUSY):
            raise
        raise IofsError(f"the daemon refused {value!r}: {exc.strerror}") from None


def daemon_log(path: Path) -> tuple[Path, Path]:
    """The mountpoint of the iofs mount *path* lies in, and its daemon's log file.

    A live daemon says where it logs (in ``iofs.mode``); for a dead one, its state file
    does, or the default place. IofsError if it logs to a terminal (``--foreground``).
    """
    mountpoint = containing_mount(path)
    log: object = None
    if not is_disconnected(mountpoint):
        log = read_mode(mountpoint).get("log")
    else:
        state = read_state(mountpoint)
        log = state.get("log") if state is not None else str(default_log_path(mountpoint))
    if not isinstance(log, str):
        raise IofsError(
            f"the daemon of {mountpoint} logs to the standard error of the process that "
            "started it (mounted with --foreground and no --log)",
            ExitStatus.UNAVAILABLE,
        )
    return mountpoint, Path(log)
