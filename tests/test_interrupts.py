"""SIGINT at the moment a harness starts a child: the child must not be left running.

Python raises KeyboardInterrupt wherever the main thread is, also inside
`subprocess.Popen` after the fork while it waits for the exec; Popen then drops the
child. These tests send the SIGINT exactly there (from `Popen._execute_child`, once the
child exists), so what they check does not depend on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iofs.daemon import start_daemon
from iofs.harness import start_child, stop_fio
from iofs.live_mounts import find_mount
from iofs.mount import MountOptions

from .conftest import needs_fuse


@pytest.fixture
def sigint_once_forked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """SIGINT to this process right after the next child is forked; yields its pid.

    Afterwards any such child still running is killed (the failure the tests look for).
    """
    pids: list[int] = []
    execute: Callable[..., Any] = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def execute_then_interrupt(self: subprocess.Popen[bytes], *args: Any) -> None:
        execute(self, *args)
        if not pids:
            pids.append(self.pid)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", execute_then_interrupt)
    try:
        yield pids
    finally:
        monkeypatch.undo()
        for pid in pids:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def reaped(pid: int) -> bool:
    """Whether child *pid* is gone and reaped (not running, not a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_plain_popen_loses_the_child(sigint_once_forked: list[int]) -> None:
    """What start_child is for: Popen interrupted after the fork leaves the child running."""
    with pytest.raises(KeyboardInterrupt):
        subprocess.Popen(["sleep", "60"])
    (pid,) = sigint_once_forked
    assert not reaped(pid)


def test_a_child_interrupted_as_it_starts_is_stopped(sigint_once_forked: list[int]) -> None:
    with pytest.raises(KeyboardInterrupt):
        start_child(lambda: subprocess.Popen([sys.executable, "-c", "input()"]), stop_fio)
    (pid,) = sigint_once_forked
    assert reaped(pid)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@needs_fuse
def test_a_daemon_interrupted_as_it_starts_is_stopped(
    tmp_path: Path, sigint_once_forked: list[int]
) -> None:
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    try:
        with pytest.raises(KeyboardInterrupt):
            start_daemon(MountOptions(backing, mountpoint, log_file=tmp_path / "daemon.log"))
        (pid,) = sigint_once_forked
        assert reaped(pid)
        assert find_mount(mountpoint) is None
    finally:
        if find_mount(mountpoint) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
