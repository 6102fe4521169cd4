"""Modes on a live mount: switching under load loses nothing, the control interface
refuses bad input without changing anything, and statistics count what happened."""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from iofs.backends import ENGINES
from iofs.control_protocol import MODE_XATTR, STATISTICS_XATTR
from iofs.metadata import MetadataQueue
from iofs.modes import MODES, BadSetting, parse_setting, resolve
from iofs.stats import MODE_HISTORY
from iofs.transport import passthrough_unavailable

from .acknowledged import RECORD, record
from .conftest import Mount, MountFactory, needs_fuse, needs_root

pytestmark = needs_fuse


def runnable_settings() -> list[str]:
    """Every mode, plus xfs over Linux AIO, whose engines run on this machine."""
    specs = [*MODES, "xfs,engine=aio", "blocking,direct=on", "btrfs,cache=none"]
    return [
        s
        for s in specs
        if ENGINES[parse_setting(s).engine].probe() is None
        # the passthrough mode only where the mounts' transport can pass files through
        and not (parse_setting(s).passthrough and passthrough_unavailable())
    ]


def current_mode(mnt: Mount) -> dict[str, object]:
    value: dict[str, object] = json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))
    return value


class Switcher:
    """Switches the mount through every runnable setting, over and over, on a thread."""

    def __init__(self, mountpoint: Path, period: float = 1.0) -> None:
        self.mountpoint, self.period = mountpoint, period
        self.switches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[BaseException] = []

    def _run(self) -> None:
        settings = runnable_settings()
        while not self._stop.wait(self.period):
            try:
                spec = settings[self.switches % len(settings)]
                os.setxattr(self.mountpoint, MODE_XATTR, spec.encode())
                self.switches += 1
            except BaseException as exc:
                self.errors.append(exc)
                return

    def __enter__(self) -> Switcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- switching under load --------------------------------------------------------------
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
@pytest.mark.parametrize("direct", [0, 1], ids=["buffered", "direct"])
def test_fio_verify_passes_while_modes_switch_every_second(mnt: Mount, direct: int) -> None:
    command = [
        "fio",
        "--name=switching",
        f"--directory={mnt.mountpoint}",
        "--ioengine=libaio",
        "--iodepth=8",
        f"--direct={direct}",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--size=48m",
        "--numjobs=2",
        "--loops=3",  # each loop writes, then verifies
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ]
    with Switcher(mnt.mountpoint, period=0.1) as switcher:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert not switcher.errors, switcher.errors
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    for job in json.loads(result.stdout[result.stdout.index("{") :])["jobs"]:
        assert job["error"] == 0
        assert job["read"]["io_bytes"] == 3 * 48 * 2**20  # verified all of it, each loop
    assert switcher.switches >= len(runnable_settings()), "the run was too short to switch"
    history = mnt.statistics()["mode_history"]
    # Every switch is in the history, which keeps only the last MODE_HISTORY.
    assert isinstance(history, list) and len(history) >= min(switcher.switches, MODE_HISTORY)


def test_acknowledged_writes_survive_switching(mount_factory: MountFactory) -> None:
    """A writer fsyncs each batch and remembers what was acknowledged; after the run and
    an unmount, the backing file holds exactly the acknowledged records."""
    mnt = mount_factory()
    slots = 256
    acknowledged: dict[int, int] = {}
    with Switcher(mnt.mountpoint, period=0.2) as switcher:
        fd = os.open(mnt.mountpoint / "journal", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            generation = 0
            while switcher.switches < 2 * len(runnable_settings()):
                generation += 1
                batch = {(generation * 37 + i * 11) % slots for i in range(16)}
                for index in batch:
                    os.pwrite(fd, record(index, generation), index * RECORD)
                if generation % 2:
                    os.fsync(fd)
                else:
                    os.fdatasync(fd)
                acknowledged.update(dict.fromkeys(batch, generation))
                for index in list(batch)[:4]:  # read back through whichever engine is current
                    assert os.pread(fd, RECORD, index * RECORD) == record(index, generation)
        finally:
            os.close(fd)
    assert not switcher.errors, switcher.errors
    backing = (mnt.backing / "journal").read_bytes()
    for index, generation in acknowledged.items():
        assert backing[index * RECORD : (index + 1) * RECORD] == record(index, generation)


def test_open_files_keep_working_across_switches(mnt: Mount) -> None:
    payload = os.urandom(64 * 1024)
    fd = os.open(mnt.mountpoint / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for spec in runnable_settings():
            os.setxattr(mnt.mountpoint, MODE_XATTR, spec.encode())
            os.pwrite(fd, payload, 4096)
            os.fsync(fd)
            assert os.pread(fd, len(payload), 4096) == payload
            assert current_mode(mnt)["spec"] == parse_setting(spec).spec
    finally:
        os.close(fd)
    assert (mnt.backing / "f").read_bytes()[4096:] == payload
    assert mnt.counters()["draining_engines"] == 0


# -- the control interface ---------------------------------------------------------------
def test_mode_reads_back_as_json_with_history(mnt: Mount) -> None:
    before = current_mode(mnt)
    assert before["spec"] == "blocking" and before["engine"] == "blocking"
    os.setxattr(mnt.mountpoint, MODE_XATTR, b"btrfs,cache=none")
    after = current_mode(mnt)
    assert (after["mode"], after["metadata"], after["caching"]) == ("btrfs", "queue", "none")
    assert [entry["mode"] for entry in after["history"]] == [  # type: ignore[attr-defined]
        "blocking",
        "btrfs,cache=none",
    ]


@pytest.fixture(scope="module")
def control_mount() -> Iterator[Mount]:
    """One mount shared by the fuzzing examples (hypothesis runs many per test)."""
    from .conftest import finish_mount, scratch_dir, start_mount

    base = scratch_dir("iofs-control-")
    (base / "b").mkdir()
    (base / "m").mkdir()
    mount = start_mount(base / "b", base / "m", base / "daemon.log")
    try:
        yield mount
    finally:
        finish_mount(mount)
        shutil.rmtree(base, ignore_errors=True)


def _valid(value: bytes) -> bool:
    try:
        parse_setting(value.decode("ascii"))
    except (BadSetting, UnicodeDecodeError):
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(
    value=st.binary(max_size=300)
    | st.sampled_from([b"", b"xfs,", b",", b"xfs,engine=", b"xfs,direct=maybe", b"\x00xfs"])
    | st.text(alphabet="xfsbtrblockingnone,=engiudoa", max_size=40).map(str.encode)
)
def test_garbage_mode_settings_get_einval_and_change_nothing(
    control_mount: Mount, value: bytes
) -> None:
    mp = control_mount.mountpoint
    before = os.getxattr(mp, MODE_XATTR)
    if _valid(value):
        return  # a valid setting (rare): not what this test is about
    with pytest.raises(OSError) as info:
        os.setxattr(mp, MODE_XATTR, value)
    assert info.value.errno == errno.EINVAL
    assert os.getxattr(mp, MODE_XATTR) == before


def test_oversized_and_forbidden_control_writes(control_mount: Mount) -> None:
    mp = control_mount.mountpoint
    before = os.getxattr(mp, MODE_XATTR)
    with pytest.raises(OSError) as info:
        os.setxattr(mp, MODE_XATTR, b"x" * 65536)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.setxattr(mp, STATISTICS_XATTR, b"{}")
    assert info.value.errno == errno.EPERM
    assert os.getxattr(mp, MODE_XATTR) == before
    # Hidden: listings, copies and comparisons never see the control attributes.
    assert os.listxattr(mp) == os.listxattr(control_mount.backing)


def test_concurrent_switches_leave_one_consistent_mode(control_mount: Mount) -> None:
    mp = control_mount.mountpoint
    specs = runnable_settings()
    errors: list[BaseException] = []

    def switch(offset: int) -> None:
        try:
            for i in range(20):
                os.setxattr(mp, MODE_XATTR, specs[(i + offset) % len(specs)].encode())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=switch, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    final = current_mode(control_mount)
    assert final["spec"] in {parse_setting(s).spec for s in specs}
    (mp / "probe").write_bytes(b"still serving")
    assert (control_mount.backing / "probe").read_bytes() == b"still serving"
    os.setxattr(mp, MODE_XATTR, b"blocking")


@needs_root
def test_only_the_owner_or_root_may_switch(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=("allow_other",))
    mnt.mountpoint.chmod(0o777)  # so that the kernel lets nobody's setxattr through to us
    mp = mnt.mountpoint
    script = (
        f"setfattr -n iofs.mode -v xfs {mp}; "
        f"getfattr -n iofs.statistics {mp} >/dev/null && echo readable"
    )
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Operation not permitted" in result.stderr
    assert "readable" in result.stdout  # statistics: readable like the root directory
    assert current_mode(mnt)["spec"] == "blocking"
    assert "may not switch the mode" in mnt.log_text()


# -- statistics count what was done ------------------------------------------------------
def test_statistics_count_requests_exactly(mnt: Mount) -> None:
    before = mnt.statistics()["operations"]
    assert isinstance(before, dict)
    fd = os.open(mnt.mountpoint / "counted", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        aligned = mmap.mmap(-1, 4096)  # O_DIRECT wants an aligned buffer
        aligned.write(b"c" * 4096)
        for i in range(50):
            os.pwrite(fd, aligned, i * 4096)
        for _ in range(7):
            os.fsync(fd)
    finally:
        os.close(fd)
    ops = mnt.statistics()["operations"]
    assert isinstance(ops, dict)

    def delta(name: str, field: str) -> int:
        return int(ops[name][field]) - int(before.get(name, {}).get(field, 0))

    assert (delta("write", "count"), delta("write", "bytes")) == (50, 50 * 4096)
    assert delta("fsync", "count") == 7
    assert ops["write"]["kind"] == "data" and ops["create"]["kind"] == "metadata"
    assert mnt.engine_statistics()["writes"] == 50


def test_stats_log_writes_json_lines(mount_factory: MountFactory, tmp_path: Path) -> None:
    log = tmp_path / "stats.jsonl"
    mnt = mount_factory(stats_log=log, stats_interval=0.05)
    (mnt.mountpoint / "x").write_bytes(b"x")
    deadline_lines = 3
    for _ in range(200):
        if log.exists() and len(log.read_text().splitlines()) >= deadline_lines:
            break
        trio.run(trio.sleep, 0.05)
    lines = log.read_text().splitlines()
    assert len(lines) >= deadline_lines
    assert all(json.loads(line)["format"] == "iofs-statistics/1" for line in lines)


# -- the btrfs mode's metadata queue -------------------------------------------------------
@pytest.mark.trio
async def test_metadata_queue_applies_in_order_without_blocking_others() -> None:
    queue = MetadataQueue()
    applied: list[int] = []
    release_first = trio.Event()

    async def update(n: int) -> int:
        if n == 0:
            await release_first.wait()  # a slow update holds the queue
        applied.append(n)
        return n

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.serve)
        results: list[int] = []

        async def submit(n: int) -> None:
            results.append(await queue.run(lambda: update(n)))

        for n in range(5):
            nursery.start_soon(submit, n)
            await trio.testing.wait_all_tasks_blocked()
        assert applied == [] and queue.depth == 5
        # Something that does not go through the queue is not held up by it.
        with trio.fail_after(1):
            await trio.sleep(0)
        release_first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert applied == [0, 1, 2, 3, 4] and sorted(results) == [0, 1, 2, 3, 4]
        assert queue.statistics() == {"served": 5, "depth": 0, "max_depth": 5}
        nursery.cancel_scope.cancel()


def test_btrfs_mode_applies_concurrent_updates_in_arrival_order(
    mount_factory: MountFactory,
) -> None:
    mnt = mount_factory()
    os.setxattr(mnt.mountpoint, MODE_XATTR, b"btrfs")
    (mnt.mountpoint / "data").write_bytes(b"d" * 65536)
    for i in range(20):
        os.mkdir(mnt.mountpoint / f"d{i}")
        os.rename(mnt.mountpoint / f"d{i}", mnt.mountpoint / f"e{i}")
        assert (mnt.mountpoint / "data").read_bytes()[:1] == b"d"
        os.rmdir(mnt.mountpoint / f"e{i}")
    assert sorted(os.listdir(mnt.backing)) == ["data"]
    extra = mnt.counters()
    assert extra["metadata_queue_served"] >= 60
    assert extra["metadata_queue_depth"] == 0


def test_resolve_and_describe() -> None:
    assert resolve("xfs", engine="aio").spec == "xfs,engine=aio"
    assert parse_setting("xfs,engine=aio,direct=off").direct is False
    assert parse_setting(" btrfs , cache=none ").spec == "btrfs,cache=none"
    for bad in ("", "xfs,engine=warp", "xfs,direct=perhaps", "xfs,cache=all", "xfs,x=1"):
        with pytest.raises(BadSetting):
            parse_setting(bad)


# -- the kernel's writeback cache (a mount option) ---------------------------------------
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_writeback_cache_keeps_data_and_posix_semantics(mount_factory: MountFactory) -> None:
    mnt = mount_factory(writeback_cache=True)
    assert current_mode(mnt)["writeback_cache"] is True
    mp = mnt.mountpoint
    # A write-only open: the kernel reads around partial pages through it.
    (mp / "wo").write_bytes(b"a" * 10000)
    fd = os.open(mp / "wo", os.O_WRONLY)
    try:
        os.pwrite(fd, b"B" * 10, 4095)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (mnt.backing / "wo").read_bytes() == b"a" * 4095 + b"B" * 10 + b"a" * 5895
    # O_APPEND is the kernel's business with the writeback cache.
    with open(mp / "log", "ab") as log:
        log.write(b"one\n")
    with open(mp / "log", "ab") as log:
        log.write(b"two\n")
    assert (mnt.backing / "log").read_bytes() == b"one\ntwo\n"
    result = subprocess.run(
        [
            "fio",
            "--name=wb",
            f"--directory={mp}",
            "--rw=randwrite",
            "--bsrange=512-64k",
            "--size=8m",
            "--numjobs=2",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
