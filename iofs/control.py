"""The client side of the control interface: xattrs on the root of a live mount.

``iofs mode``, ``iofs stats`` and ``iofs top`` read and write them; so can anyone with
``getfattr -n iofs.statistics --only-values MOUNTPOINT`` or
``setfattr -n iofs.mode -v xfs MOUNTPOINT``.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .backends import EngineUnavailable, engine_class
from .errors import IofsError
from .fs import MODE_XATTR, STATISTICS_XATTR
from .modes import BadSetting, Setting, parse_setting
from .mount import FSTYPE, find_mount, is_disconnected
from .stats import Snapshot


def _checked_mountpoint(mountpoint: Path) -> Path:
    path = Path(os.path.realpath(mountpoint))
    entry = find_mount(path)
    if entry is None:
        raise IofsError(f"{path} is not mounted")
    if entry.fstype != FSTYPE:
        raise IofsError(f"{path} is not an iofs mount (it is {entry.fstype})")
    if is_disconnected(path):
        raise IofsError(f"{path}: the iofs daemon has died (run 'iofs umount {path}')")
    return path


def _read(mountpoint: Path, name: bytes) -> dict[str, Any]:
    path = _checked_mountpoint(mountpoint)
    try:
        value = os.getxattr(path, name)
    except OSError as exc:
        raise IofsError(f"cannot read {name.decode()} of {path}: {exc.strerror}") from None
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
        raise IofsError(f"cannot read the statistics of {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise IofsError(f"{path} answered statistics iofs cannot read: {exc}") from None


def set_mode(mountpoint: Path, spec: str) -> Setting:
    """Switch the live mount to *spec*; checked here first, so errors say why."""
    path = _checked_mountpoint(mountpoint)
    try:
        setting = parse_setting(spec)
        engine_class(setting.engine)
    except (BadSetting, EngineUnavailable) as exc:
        raise IofsError(str(exc)) from None
    try:
        os.setxattr(path, MODE_XATTR, setting.spec.encode())
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise IofsError(
                f"only the owner of {path} or root may switch its mode ({exc.strerror})"
            ) from None
        if exc.errno == errno.EOPNOTSUPP:
            raise IofsError(
                f"the daemon cannot run engine {setting.engine!r} (see its log)"
            ) from None
        raise IofsError(f"the daemon refused {setting.spec!r}: {exc.strerror}") from None
    return setting
