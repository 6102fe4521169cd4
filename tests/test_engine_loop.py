"""Asynchronous engines keep the event loop running while an operation is outstanding;
engines flagged BLOCKS_LOOP really do stall it.

The read goes to a file of the gate daemon (tests/gate_daemon.py), which holds every
read until the test opens the gate, so "outstanding" is a state the test controls
rather than a duration it hopes for. A heartbeat task counts its turns on the loop.
Nothing sleeps: the test learns that the read is parked by a read of the daemon's
``/parked`` file, which returns only once it is, and counts heartbeats, not time.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from iofs.backends import ENGINES, Buffer, Capability, Engine, EngineConfig, create_engine, running
from iofs.live_mounts import find_mount
from iofs.transport import default_transport

from .conftest import FUSE_UNAVAILABLE, read_if_present
from .gate_daemon import pattern

DAEMON = Path(__file__).with_name("gate_daemon.py")
#: What one read asks for: a page, aligned, so that it may go through an O_DIRECT twin.
READ_SIZE = 4096
#: Heartbeats the loop must give while the read is parked.
HEARTBEATS = 20
#: How long the daemon holds a read (and ``/parked``) before giving up. Only a broken
#: engine makes anything wait that long; it bounds what a timeout on the loop cannot,
#: a loop stalled by an engine that should not stall it.
PATIENCE = 20.0
#: Bound on each test's work on the loop; a bug fails the test instead of hanging it.
TIMEOUT = PATIENCE + 10.0

pytestmark = pytest.mark.skipif(FUSE_UNAVAILABLE is not None, reason=str(FUSE_UNAVAILABLE))


@dataclass
class Gate:
    """A mounted gate daemon, and the moves a test makes on it (blocking calls)."""

    mountpoint: Path
    log: Path
    daemon: subprocess.Popen[bytes]

    @property
    def gate(self) -> Path:
        return self.mountpoint / "gate"

    def wait_parked(self) -> int:
        """Block until a read of the gate is parked in the daemon; return how many are."""
        fd = os.open(self.mountpoint / "parked", os.O_RDONLY)
        try:
            return int(os.read(fd, 64))
        finally:
            os.close(fd)

    def open(self) -> None:
        """Let parked and later reads of the gate complete."""
        fd = os.open(self.mountpoint / "open", os.O_WRONLY)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)


def _wait_ready(daemon: subprocess.Popen[bytes], log: Path) -> None:
    assert daemon.stdout is not None
    readable, _, _ = select.select([daemon.stdout], [], [], TIMEOUT)
    line = daemon.stdout.readline() if readable else b"(nothing)"
    if line != b"ready\n":
        text = read_if_present(log)
        raise RuntimeError(f"gate daemon did not start: it said {line!r}; log:\n{text}")


def _stop(daemon: subprocess.Popen[bytes], mountpoint: Path) -> None:
    """Unmount (lazily if busy, e.g. after a failed test left a read behind) and reap."""
    if find_mount(mountpoint) is not None:
        command = ["fusermount3", "-u", str(mountpoint)]
        if subprocess.run(command, capture_output=True, check=False).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
            daemon.terminate()  # its remaining users get ENOTCONN
    try:
        daemon.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    if daemon.stdout is not None:
        daemon.stdout.close()


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """The gate daemon on a fresh mountpoint; always unmounted and reaped afterwards."""
    mountpoint, log = tmp_path / "mnt", tmp_path / "gate.log"
    mountpoint.mkdir()
    command = [sys.executable, str(DAEMON), str(mountpoint)]
    command += ["--log", str(log), "--patience", str(PATIENCE)]
    # The run's transport where the gate daemon has it (pyfuse3 or dev), else dev.
    command += ["--transport", "pyfuse3" if default_transport() == "pyfuse3" else "dev"]
    daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        _wait_ready(daemon, log)
        yield Gate(mountpoint, log, daemon)
    finally:
        _stop(daemon, mountpoint)
    assert find_mount(mountpoint) is None, f"{mountpoint} still mounted"
    text = log.read_text()
    if "Traceback" in text or " ERROR " in text:
        pytest.fail(f"gate daemon log:\n{text}")


class Heartbeat:
    """A task that counts its turns on the event loop."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await trio.lowlevel.checkpoint()
            self.ticks += 1

    async def wait_for(self, ticks: int) -> None:
        """Return once the count has reached *ticks* (the loop must be running)."""
        while self.ticks < ticks:
            await trio.lowlevel.checkpoint()


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    name = request.param
    cls = ENGINES[name]
    reason = cls.probe()
    if reason is not None:
        pytest.skip(f"engine {name} cannot run here: {reason}")
    # Linux AIO is only asynchronous for O_DIRECT; FUSE serves an aligned O_DIRECT read
    # asynchronously (async DIO), so the loop is free while the daemon holds it.
    direct = True if Capability.NEEDS_ALIGNED in cls.capabilities else None
    return create_engine(name, EngineConfig(direct=direct))


@pytest.fixture
def gate_fd(gate: Gate) -> Iterator[int]:
    fd = os.open(gate.gate, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.trio
async def test_outstanding_read_and_the_event_loop(
    engine: Engine, gate: Gate, gate_fd: int
) -> None:
    capabilities = engine.capabilities
    if Capability.BLOCKS_LOOP in capabilities:
        await _read_stalls_the_loop(engine, gate_fd, gate)
    elif capabilities & (Capability.KERNEL_ASYNC | Capability.THREADED):
        await _loop_runs_while_read_is_parked(engine, gate_fd, gate)
    else:
        pytest.fail(f"engine {engine.name} declares none of BLOCKS_LOOP, KERNEL_ASYNC, THREADED")


async def _loop_runs_while_read_is_parked(engine: Engine, fd: int, gate: Gate) -> None:
    heartbeat = Heartbeat()
    read_done = trio.Event()
    data: list[Buffer] = []
    ticks_at: dict[str, int] = {}

    async def read() -> None:
        ticks_at["start"] = heartbeat.ticks
        try:
            data.append(await engine.read(fd, 0, READ_SIZE))
        except OSError as exc:
            raise AssertionError(
                f"the read failed ({exc}); EIO is the daemon giving up on a read parked"
                f" for {PATIENCE:g} s: did the engine stall the loop?"
            ) from exc
        ticks_at["end"] = heartbeat.ticks
        read_done.set()

    with trio.fail_after(TIMEOUT):
        async with running(engine), trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat.run, name="heartbeat")
            nursery.start_soon(read, name="read")
            try:
                parked = await trio.to_thread.run_sync(gate.wait_parked, abandon_on_cancel=True)
                assert parked >= 1, "the read never reached the daemon"
                await heartbeat.wait_for(heartbeat.ticks + HEARTBEATS)
                assert not read_done.is_set(), "the read completed with the gate closed"
                await trio.to_thread.run_sync(gate.open, abandon_on_cancel=True)
                await read_done.wait()
            finally:
                # A failed check must not leave the read parked: its task (and the
                # engine's drain) would wait for it until the daemon gives up on it.
                gate.open()
            nursery.cancel_scope.cancel()
    assert ticks_at["end"] - ticks_at["start"] >= HEARTBEATS
    assert bytes(data[0]) == pattern(0, READ_SIZE)
    if Capability.KERNEL_ASYNC in engine.capabilities:
        # A read the daemon held cannot have completed inside the submitting call: the
        # reaper, woken by the kernel, reaped it.
        details = engine.statistics().details
        assert details["reaper_reaps"] >= 1 and details["reaper_wakeups"] >= 1, details


class _Opener(threading.Thread):
    """Opens the gate once a read is parked, from outside the (stalled) event loop."""

    def __init__(self, gate: Gate, heartbeat: Heartbeat) -> None:
        super().__init__(name="gate-opener", daemon=True)
        self._gate = gate
        self._heartbeat = heartbeat
        self.parked = 0
        #: The heartbeat count while the read was parked.
        self.ticks = -1
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.parked = self._gate.wait_parked()
            self.ticks = self._heartbeat.ticks
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                self._gate.open()  # even after an error: the loop waits for this read
            except BaseException as exc:
                self.error = self.error or exc


async def _read_stalls_the_loop(engine: Engine, fd: int, gate: Gate) -> None:
    heartbeat = Heartbeat()
    opener = _Opener(gate, heartbeat)
    with trio.fail_after(TIMEOUT):
        async with running(engine), trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat.run, name="heartbeat")
            await heartbeat.wait_for(1)  # it runs whenever the loop does
            opener.start()
            before = heartbeat.ticks
            data = await engine.read(fd, 0, READ_SIZE)
            after = heartbeat.ticks
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(opener.join, abandon_on_cancel=True)
    if opener.error is not None:
        raise opener.error
    assert opener.parked >= 1, "the read never reached the daemon"
    assert opener.ticks == before, "the loop ran while the read was parked"
    assert after == before, f"the heartbeat ticked {after - before} times during the read"
    assert bytes(data) == pattern(0, READ_SIZE)
