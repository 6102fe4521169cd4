"""The client side of the control interface: xattrs on the root of a live mount.

``iofs mode``, ``iofs stats`` and ``iofs top`` read and write them; so can anyone with
``getfattr -n iofs.statistics --only-values MOUNTPOINT`` or
``setfattr -n iofs.mode -v xfs MOUNTPOINT``. ``iofs faults`` reads and sets
``iofs.faults`` (``setfattr -n iofs.faults -v eio=0.01 MOUNTPOINT``).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .backends import EngineUnavailable, engine_class
from .errors import ExitStatus, IofsError
from .faults import BadFaults, FaultSpec, parse_faults
from .fs import FAULTS_XATTR, MODE_XATTR, STATISTICS_XATTR
from .modes import BadSetting, Setting, parse_setting
from .mount import FSTYPE, find_mount, is_disconnected
from .stats import Snapshot


def _checked_mountpoint(mountpoint: Path) -> Path:
    path = Path(os.path.realpath(mountpoint))
    entry = find_mount(path)
    if entry is None:
        raise IofsError(f"{path} is not mounted", ExitStatus.MOUNT_CONFLICT)
    if entry.fstype != FSTYPE:
        raise IofsError(
            f"{path} is not an iofs mount (it is {entry.fstype})", ExitStatus.MOUNT_CONFLICT
        )
    if is_disconnected(path):
        raise IofsError(
            f"{path}: the iofs daemon has died (run 'iofs umount {path}')",
            ExitStatus.MOUNT_CONFLICT,
        )
    return path


def _status_of(exc: OSError) -> ExitStatus:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return ExitStatus.PERMISSION
    return ExitStatus.FAILED


def _read(mountpoint: Path, name: bytes) -> dict[str, Any]:
    path = _checked_mountpoint(mountpoint)
    try:
        value = os.getxattr(path, name)
    except OSError as exc:
        raise IofsError(
            f"cannot read {name.decode()} of {path}: {exc.strerror}", _status_of(exc)
        ) from None
    data: dict[str, Any] = json.loads(value)
    return data


def read_mode(mountpoint: Path) -> dict[str, Any]:
    """The mount's current setting, its description and the history of switches."""
    return _read(mountpoint, MODE_XATTR)


def read_statistics(mountpoint: Path) -> Snapshot:
    """A statistics snapshot of the live mount."""
    path = _checked_mountpoint(mountpoint)
    try:
        return Snapshot.from_json(os.getxattr(path, STATISTICS_XATTR).decode())
    except OSError as exc:
        raise IofsError(
            f"cannot read the statistics of {path}: {exc.strerror}", _status_of(exc)
        ) from None
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
        if exc.errno != errno.EOPNOTSUPP:
            raise
        try:
            engine_class(setting.engine)
            reason = f"the daemon cannot run engine {setting.engine!r} (see its log)"
        except EngineUnavailable as unavailable:
            reason = str(unavailable)
        raise IofsError(reason, ExitStatus.UNAVAILABLE) from None
    # The daemon may have used a fallback engine (mounted with --allow-fallback).
    return parse_setting(str(read_mode(path)["spec"]))


def read_faults(mountpoint: Path) -> dict[str, Any]:
    """The mount's fault-injection setting: spec, description, seed, counters per op."""
    return _read(mountpoint, FAULTS_XATTR)


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
    """Write the control xattr *name*; refusals become IofsError, except EOPNOTSUPP
    (the caller knows what it means for its attribute), which stays an OSError."""
    try:
        os.setxattr(path, name, value.encode())
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise IofsError(
                f"only the owner of {path} or root may {what} ({exc.strerror})",
                ExitStatus.PERMISSION,
            ) from None
        if exc.errno == errno.EOPNOTSUPP:
            raise
        raise IofsError(f"the daemon refused {value!r}: {exc.strerror}") from None
