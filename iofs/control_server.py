"""The daemon's side of the control protocol (`iofs.control_protocol`): what a read of a
control xattr on the mount's root answers, and what a write does (switch the mode, set
fault injection), with the checks a write must pass first.

`iofs.fs` routes the requests here (after checking that the reader may list the root)
and counts them as ``control``, apart from the workload's xattr requests. Refusals are
`FUSEError`s with the errnos the protocol documents.
"""

from __future__ import annotations

import errno
import json
import logging
import reprlib
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from pyfuse3 import FUSEError

from .backends import EngineUnavailable, fallback_engine
from .control_protocol import (
    FAULTS_XATTR,
    MODE_XATTR,
    STATISTICS_XATTR,
    XATTR_SIZE_MAX,
    FaultsValue,
    ModeValue,
)
from .faults import BadFaults, parse_faults
from .modes import MAX_SPEC, BadSetting, Setting, parse_setting

if TYPE_CHECKING:
    from .fs import Filesystem

log = logging.getLogger(__name__)

#: Seconds within which a process's second read of the statistics gets the first one's
#: text (see `ControlServer._statistics_for`).
_STATISTICS_REUSE = 0.1


class ControlServer:
    """The control xattrs of *fs*'s mount."""

    def __init__(self, fs: Filesystem) -> None:
        self._fs = fs
        self._statistics_cache: dict[int, tuple[float, bytes]] = {}  # pid -> (when, JSON)

    def read(self, name: bytes, pid: int) -> bytes:
        """The value of control xattr *name* (`CONTROL_XATTRS`), for process *pid*."""
        if name == STATISTICS_XATTR:
            return self._statistics_for(pid)
        if name == FAULTS_XATTR:
            return self._faults_value()
        return self._mode_value()

    async def write(self, name: bytes, value: bytes, uid: int) -> None:
        """A write by *uid* to a control xattr: switch the mode or set fault injection,
        or refuse without changing a thing."""
        fs = self._fs
        if name == STATISTICS_XATTR:
            raise FUSEError(errno.EPERM)  # the statistics are read-only
        if uid not in (0, fs.owner):
            what = "switch the mode" if name == MODE_XATTR else "set fault injection"
            log.warning("uid %d may not %s (only %d and root)", uid, what, fs.owner)
            raise FUSEError(errno.EPERM)
        if name == FAULTS_XATTR:
            try:
                spec = parse_faults(value.decode())  # UTF-8: delay=5µs is a spec
            except (BadFaults, UnicodeDecodeError) as exc:
                log.warning("refused fault spec %s: %s", reprlib.repr(value), exc)
                raise FUSEError(errno.EINVAL) from None
            fs.set_faults(spec)
            return
        try:
            if len(value) > MAX_SPEC:
                raise BadSetting("oversized")
            setting = parse_setting(value.decode("ascii"))
        except (BadSetting, UnicodeDecodeError) as exc:
            log.warning("refused mode setting %s: %s", reprlib.repr(value), exc)
            raise FUSEError(errno.EINVAL) from None
        refusal = fs.passthrough_refusal(setting)
        if refusal is not None and setting != fs.setting:
            log.warning("refused mode setting %s: %s", setting.spec, refusal)
            # The client gets EOPNOTSUPP only: it reads why from iofs.mode.
            fs.refusal = {"spec": setting.spec, "reason": refusal, "at": time.time()}
            raise FUSEError(errno.EOPNOTSUPP)
        if not fs.may_need_refusal(setting):
            self._switch_or_fall_back(setting)  # no await: the switch is atomic on the loop
            return
        async with fs.switching:
            await fs.refuse_if_mapped(setting)
            self._switch_or_fall_back(setting)

    def _switch_or_fall_back(self, setting: Setting) -> None:
        fs = self._fs
        wanted, tried = setting.spec, []
        while True:
            try:
                fs.switch(setting)
                return
            except EngineUnavailable as exc:
                tried.append(setting.engine)
                failure = str(exc).removeprefix(f"engine {setting.engine!r} cannot run here: ")
                fallback = (
                    fallback_engine(setting.engine, failure, tried) if fs.allow_fallback else None
                )
                if fallback is None:
                    log.warning("refused mode setting %s: %s", wanted, exc)
                    # The client gets EOPNOTSUPP only: it reads why from iofs.mode.
                    fs.refusal = {"spec": wanted, "reason": str(exc), "at": time.time()}
                    raise FUSEError(errno.EOPNOTSUPP) from None
            engine, reason = fallback
            log.warning("engine %s cannot run here (%s): using %s", setting.engine, reason, engine)
            setting = replace(setting, engine=engine)

    def _mode_value(self) -> bytes:
        fs = self._fs
        setting = fs.setting
        value: ModeValue = {
            "spec": setting.spec,
            "description": setting.describe(),
            "passthrough": setting.passthrough,
            "writeback_cache": fs.enable_writeback_cache,
            "shared_mmap": fs.shared_mmap,
            "open_files": fs.open_files,
            "passthrough_files": fs.passthrough_files,
            "history": [{"mode": spec, "at": at} for spec, at in fs.recorder.mode_history],
            "refused": fs.refusal,
            "log": fs.log_file,
        }
        # The setting's own fields (mode, engine...) come right after its description.
        head = {"spec": value["spec"], "description": value["description"]}
        return json.dumps({**head, **asdict(setting), **value}).encode()

    def _faults_value(self) -> bytes:
        faults = self._fs.faults.statistics()
        value: FaultsValue = {
            "spec": faults.spec,
            "description": self._fs.faults.spec.describe(),
            "seed": faults.seed,
            "operations": {op: asdict(c) for op, c in faults.operations.items()},
        }
        return json.dumps(value).encode()

    def _statistics_for(self, pid: int) -> bytes:
        """The statistics JSON; a second read by *pid* right after gets the same text.

        Readers ask twice: getfattr for the size and then the value, Python with a small
        buffer and then a large one. A fresh snapshot the second time would be longer
        and not fit (ERANGE), so the first answer is kept for one more read by the same
        process, for a moment.
        """
        now = time.monotonic()
        cached = self._statistics_cache.pop(pid, None)
        if cached is not None and now - cached[0] < _STATISTICS_REUSE:
            return cached[1]
        value = self._fs.statistics().to_json_within(XATTR_SIZE_MAX).encode()
        self._statistics_cache = {
            p: c for p, c in self._statistics_cache.items() if now - c[0] < _STATISTICS_REUSE
        }
        self._statistics_cache[pid] = (now, value)
        return value
