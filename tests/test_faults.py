"""Fault injection: the spec grammar, the injector, and real mounts in every mode.

Applications see the injected errors, a failed write has written nothing, the daemon
goes on serving, the statistics count exactly what was injected, the setting survives
mode switches, and bad specs or strangers change nothing.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from iofs import control
from iofs.cli import main
from iofs.control_protocol import FAULTS_XATTR, MODE_XATTR
from iofs.daemon import mounted
from iofs.errors import ExitStatus, IofsError
from iofs.faults import (
    MAX_DELAY_NS,
    OFF,
    OPERATIONS,
    BadFaults,
    FaultInjector,
    FaultSpec,
    parse_faults,
)
from iofs.intervals import diff
from iofs.mount import MountOptions
from iofs.render import dashboard, stats_table
from iofs.stats import Snapshot

from .conftest import (
    ALL_MODES,
    FUSE_UNAVAILABLE,
    Mount,
    MountFactory,
    mode_runs,
    needs_fuse,
    needs_root,
    scratch_dir,
)

PAGE = 4096
SNAPSHOT = Path(__file__).parent / "data" / "snapshot.json"


# -- the grammar ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("off", "off"),
        (" OFF ", "off"),
        ("eio=0.05", "eio=0.05"),
        ("eio=5%", "eio=0.05"),
        ("every=4,ops=read", "every=4,ops=read"),
        ("errno=enospc, every=2, ops=write", "every=2,errno=ENOSPC,ops=write"),
        ("errno=28,eio=1", "eio=1.0,errno=ENOSPC"),
        ("errno=EWOULDBLOCK,every=1", "every=1,errno=EAGAIN"),
        ("delay=20ms", "delay=20ms"),
        ("delay=1.5ms:10%", "delay=1500us:0.1"),
        ("delay=60s", "delay=60s"),
        ("ops=write+read,eio=0.5", "eio=0.5,ops=read+write"),
        ("range=4k-1M,every=3", "every=3,range=4K-1M"),
        ("range=1M-,every=3", "every=3,range=1M-"),
        ("range=-4096,every=3", "every=3,range=0-4K"),
        ("range=0-,every=3", "every=3"),
        ("seed=7,eio=0.25", "eio=0.25,seed=7"),
    ],
)
def test_examples_parse_to_their_canonical_text(text: str, canonical: str) -> None:
    spec = parse_faults(text)
    assert spec.text == canonical
    assert parse_faults(canonical) == spec


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty fault spec"),
        ("on", "bad fault option 'on'"),
        ("off,eio=1", "bad fault option 'off'"),
        ("eio=1,eio=0.5", "eio= given twice"),
        ("eio=0", "more than 0 and at most 1"),
        ("eio=1.5", "more than 0 and at most 1"),
        ("eio=150%", "more than 0 and at most 1"),
        ("eio=nan", "more than 0 and at most 1"),
        ("eio=lots", "needs a fraction"),
        ("every=0", "within 1.."),
        ("every=-1", "needs a whole number"),
        ("eio=0.1,every=2", "exclude each other"),
        ("seed=3", "needs eio=, every= or delay="),
        ("ops=read", "needs eio=, every= or delay="),
        ("errno=ENOSPC,delay=1ms", "errno= needs eio= or every="),
        ("errno=ENOTANERROR,eio=1", "errno= needs an error name"),
        ("errno=ENOSYS,eio=1", "refused"),
        ("delay=20", "needs a time like 20ms"),
        ("delay=0ms", "more than 0 and at most 60s"),
        ("delay=61s", "more than 0 and at most 60s"),
        ("delay=1ms:0", "more than 0 and at most 1"),
        ("ops=read+fdatasync,eio=1", "ops= takes read+write+fsync"),
        ("ops=read,write,eio=1", "bad fault option 'write'"),
        ("range=4K,eio=1", "needs START-END"),
        ("range=8K-4K,eio=1", "must end after it starts"),
        ("range=1X-2X,eio=1", "needs byte offsets"),
        ("range=0-4K,ops=fsync,eio=1", "ops= has neither"),
        ("seed=-1,eio=1", "needs a whole number"),
        ("eio=1," + "x" * 300, "at most 300 characters"),
    ],
)
def test_bad_specs_say_why_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(BadFaults) as info:
        parse_faults(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message


fractions = st.floats(min_value=0, max_value=1, exclude_min=True)
operations = st.sets(st.sampled_from(OPERATIONS), min_size=1).map(frozenset)
errnos = st.sampled_from(sorted(set(errno.errorcode) - {errno.ENOSYS}))


@st.composite
def specs(draw: st.DrawFn) -> FaultSpec:
    """Every valid spec (not off): the values `parse_faults` can produce."""
    failing = draw(st.sampled_from(["fraction", "every", None]))
    delay_ns = draw(st.sampled_from([0, 1]) | st.integers(1, MAX_DELAY_NS))
    if failing is None and not delay_ns:
        delay_ns = draw(st.integers(1, MAX_DELAY_NS))
    ops = draw(operations)
    start: int = 0
    end: int | None = None
    ranged: bool = draw(st.booleans())
    if ranged and ops & {"read", "write"}:
        start = draw(st.integers(0, 1 << 62) | st.sampled_from([0, 4096, 1 << 20]))
        end = draw(st.none() | st.integers(start + 1, 1 << 63))
    return FaultSpec(
        fraction=draw(fractions) if failing == "fraction" else 0.0,
        every=draw(st.integers(1, 1 << 63)) if failing == "every" else 0,
        error=draw(errnos) if failing else errno.EIO,
        delay_ns=delay_ns,
        delay_fraction=draw(st.just(1.0) | fractions) if delay_ns else 1.0,
        ops=ops,
        start=start,
        end=end,
        seed=draw(st.none() | st.integers(0, (1 << 64) - 1)),
    )


@settings(max_examples=300)
@given(spec=specs())
def test_parse_reads_back_what_text_writes(spec: FaultSpec) -> None:
    assert spec.active
    assert parse_faults(spec.text) == spec
    assert "\n" not in spec.describe()


# fmt: off
TOKENS = [
    "eio=", "every=", "errno=", "delay=", "ops=", "range=", "seed=", "off", ",", "=", ":",
    "-", "+", "%", ".", "0", "1", "4K", "1M", "20ms", "0.5", "EIO", "ENOSPC", "read",
    "write", "fsync", "µs", "nan", "1e-3", " ",
]
# fmt: on


@settings(max_examples=500)
@given(
    text=st.text(max_size=80)
    | st.lists(st.sampled_from(TOKENS), max_size=14).map("".join)
    | specs().map(lambda spec: spec.text + ",")
)
def test_garbage_is_refused_with_one_line_never_another_exception(text: str) -> None:
    try:
        spec = parse_faults(text)
    except BadFaults as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert parse_faults(spec.text) == spec


# -- the injector, without a mount ------------------------------------------------------------
async def outcomes(
    injector: FaultInjector, op: str, count: int, size: int | None = PAGE
) -> list[int]:
    """Run *count* operations on consecutive pages; the errno of each (0: it passed)."""
    results = []
    for index in range(count):
        try:
            await injector.inject(op, index * PAGE, size)
        except OSError as exc:
            results.append(exc.errno or -1)
        else:
            results.append(0)
    return results


@pytest.mark.trio
async def test_every_nth_matching_operation_fails_and_counts() -> None:
    injector = FaultInjector(parse_faults("every=3,ops=read,errno=ENOSPC"))
    assert injector.statistics().seed is None  # no random choices to repeat
    assert await outcomes(injector, "read", 7) == [0, 0, 28, 0, 0, 28, 0]
    assert await outcomes(injector, "write", 3) == [0, 0, 0]  # not selected: not counted
    counters = injector.statistics().operations
    assert (counters["read"].matched, counters["read"].errors) == (7, 2)
    assert counters["write"].matched == 0
    injector.set(parse_faults("every=2,ops=write"))  # the pattern restarts ...
    assert await outcomes(injector, "write", 2) == [0, errno.EIO]
    counters = injector.statistics().operations
    assert counters["read"].errors == 2 and counters["write"].errors == 1  # ... counts do not


@pytest.mark.trio
async def test_a_range_selects_the_reads_and_writes_that_touch_it() -> None:
    injector = FaultInjector(parse_faults("every=1,range=4K-8K"))
    assert await outcomes(injector, "read", 3) == [0, errno.EIO, 0]
    for offset, size, fails in [(4095, 1, False), (4095, 2, True), (8191, 100, True)]:
        try:
            await injector.inject("write", offset, size)
        except OSError:
            assert fails
        else:
            assert not fails
    with pytest.raises(OSError):
        await injector.inject("fsync")  # no range of its own: it covers the whole file


@pytest.mark.trio
async def test_a_seed_repeats_the_same_choices() -> None:
    spec = parse_faults("eio=0.3,delay=1us:0.5,seed=11")
    first = FaultInjector(spec)
    second = FaultInjector(spec)
    pattern = await outcomes(first, "read", 200)
    assert pattern == await outcomes(second, "read", 200)
    assert 20 < pattern.count(errno.EIO) < 100
    assert first.statistics() == second.statistics()
    assert first.statistics().seed == 11
    unseeded = FaultInjector(parse_faults("eio=0.3"))
    replay = FaultInjector(parse_faults(f"eio=0.3,seed={unseeded.seed}"))
    assert await outcomes(unseeded, "write", 50) == await outcomes(replay, "write", 50)


@pytest.mark.trio
async def test_delays_sleep_on_trio_and_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    injector = FaultInjector(parse_faults("delay=20ms,ops=fsync"))
    start = trio.current_time()
    await outcomes(injector, "read", 3)
    assert trio.current_time() == start  # not selected
    await outcomes(injector, "fsync", 3, size=None)
    assert trio.current_time() - start == pytest.approx(0.06)
    fsync = injector.statistics().operations["fsync"]
    assert (fsync.delays, fsync.delay_ns, fsync.errors) == (3, 60_000_000, 0)
    injector.set(OFF)
    assert not injector.armed and injector.ever_armed
    assert injector.statistics().spec == "off"


# -- statistics and their rendering ------------------------------------------------------------
def render(renderable: RenderableType) -> str:
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_old_snapshots_still_load_and_keep_their_layout() -> None:
    text = SNAPSHOT.read_text()
    snapshot = Snapshot.from_json(text)
    assert snapshot.faults is None
    assert snapshot.to_json() + "\n" == text
    assert "fault injection" not in render(stats_table(snapshot))
    assert "faults" not in render(dashboard(snapshot))


@pytest.mark.trio
async def test_snapshots_carry_fault_counters_through_json_diff_and_rendering() -> None:
    injector = FaultInjector(parse_faults("every=2,delay=1us,seed=5"))
    older = replace(Snapshot.from_json(SNAPSHOT.read_text()), faults=injector.statistics())
    await outcomes(injector, "read", 6)
    newer = replace(older, faults=injector.statistics(), uptime=older.uptime + 2)
    assert Snapshot.from_json(newer.to_json()) == newer
    assert Snapshot.from_json(newer.to_json(indent=None)) == newer
    interval = diff(newer, older)
    assert interval.faults is not None
    assert interval.faults.errors == {"read": 3, "write": 0, "fsync": 0}
    assert interval.faults.errors_per_s["read"] == 1.5
    assert interval.faults.delays_per_s["read"] == 3.0
    table = render(stats_table(newer))
    assert "fault injection every=2,delay=1us,seed=5\n" in table
    section = table[table.index("fault injection") :].splitlines()
    read_row = next(line.split() for line in section if line.split()[:1] == ["read"])
    assert read_row == ["read", "6", "3", "6", "6.00µs"]
    top = render(dashboard(newer, older))
    assert "faults every=2,delay=1us,seed=5" in top
    assert "injected errors/s read 1.5 write 0 fsync 0" in top


# -- real mounts -------------------------------------------------------------------------------
def faults_of(mnt: Mount) -> dict[str, object]:
    value: dict[str, object] = json.loads(os.getxattr(mnt.mountpoint, FAULTS_XATTR))
    return value


def set_faults(mnt: Mount, spec: str) -> None:
    os.setxattr(mnt.mountpoint, FAULTS_XATTR, spec.encode())


def injected(mnt: Mount) -> dict[str, dict[str, int]]:
    """The statistics' fault counters per operation."""
    faults = mnt.statistics()["faults"]
    assert isinstance(faults, dict)
    operations: dict[str, dict[str, int]] = faults["operations"]
    return operations


def errors_of(mnt: Mount) -> dict[str, int]:
    """Failed requests per data operation, as the FUSE statistics count them."""
    ops = mnt.statistics()["operations"]
    assert isinstance(ops, dict)
    return {op: int(ops.get(op, {}).get("errors", 0)) for op in OPERATIONS}


def attempt(call: object, *args: object) -> int:
    """Call and return 0, or the errno it failed with."""
    assert callable(call)
    try:
        call(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


@pytest.fixture
def page() -> Iterator[mmap.mmap]:
    """A page-aligned buffer, as O_DIRECT wants."""
    buffer = mmap.mmap(-1, PAGE)
    try:
        yield buffer
    finally:
        buffer.close()


@needs_fuse
def test_faults_in_every_mode(mode_mount: Mount, page: mmap.mmap) -> None:
    """Reads, writes and fsyncs fail as specified, in each mode and across a switch."""
    skip_if_passed_through(mode_mount)
    mnt = mode_mount
    original = os.urandom(16 * PAGE)
    (mnt.backing / "f").write_bytes(original)
    errors_before = errors_of(mnt)
    # O_DIRECT: every application request is one daemon request, whatever the caching.
    fd = os.open(mnt.mountpoint / "f", os.O_RDWR | os.O_DIRECT)
    try:
        set_faults(mnt, "every=3,ops=read")
        results = []
        for index in range(9):
            results.append(attempt(os.preadv, fd, [page], index * PAGE))
            if not results[-1]:
                assert page[:] == original[index * PAGE : (index + 1) * PAGE]
        assert results == [0, 0, errno.EIO] * 3

        set_faults(mnt, "every=2,ops=write,errno=ENOSPC")
        page[:] = b"w" * PAGE
        writes = [attempt(os.pwritev, fd, [page], index * PAGE) for index in range(4)]
        assert writes == [0, errno.ENOSPC] * 2
        on_disk = (mnt.backing / "f").read_bytes()
        for index in range(4):  # the failed writes wrote nothing
            expected = b"w" * PAGE if index % 2 == 0 else original[index * PAGE :][:PAGE]
            assert on_disk[index * PAGE :][:PAGE] == expected

        set_faults(mnt, "every=1,ops=fsync")
        assert attempt(os.fsync, fd) == errno.EIO
        assert attempt(os.fdatasync, fd) == errno.EIO

        set_faults(mnt, "delay=5ms,ops=read")
        assert [attempt(os.preadv, fd, [page], 0) for _ in range(4)] == [0] * 4

        # A mode switch keeps the setting, and the counters.
        set_faults(mnt, "every=1,ops=read")
        mode = json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))["mode"]
        other = next(m for m in ALL_MODES if m != mode and mode_runs(m) is None)
        os.setxattr(mnt.mountpoint, MODE_XATTR, other.encode())
        assert faults_of(mnt)["spec"] == "every=1,ops=read"
        assert attempt(os.preadv, fd, [page], PAGE) == errno.EIO

        set_faults(mnt, "off")
        assert attempt(os.preadv, fd, [page], PAGE) == 0
        page[:] = b"w" * PAGE
        assert attempt(os.pwritev, fd, [page], PAGE) == 0
        assert attempt(os.fsync, fd) == 0
    finally:
        os.close(fd)
    assert (mnt.backing / "f").read_bytes()[PAGE : 2 * PAGE] == b"w" * PAGE

    counters = injected(mnt)
    assert {op: counters[op]["errors"] for op in OPERATIONS} == {
        "read": 3 + 1,
        "write": 2,
        "fsync": 2,
    }
    assert counters["read"]["delays"] == 4
    assert counters["read"]["delay_ns"] == 4 * 5_000_000
    errors_after = errors_of(mnt)
    # What the applications saw is counted as errors of those operations, no more.
    assert {op: errors_after[op] - errors_before[op] for op in OPERATIONS} == {
        op: counters[op]["errors"] for op in OPERATIONS
    }
    # The delays are in the reads' latency: the slowest four took at least 5 ms each.
    ops = mnt.statistics()["operations"]
    assert isinstance(ops, dict)
    assert ops["read"]["latency"]["max_ns"] >= 5_000_000
    assert mnt.counters()["unexpected_errors"] == 0


@needs_fuse
def test_a_seeded_fraction_fails_the_same_reads_again(mnt: Mount, page: mmap.mmap) -> None:
    (mnt.backing / "f").write_bytes(os.urandom(64 * PAGE))
    fd = os.open(mnt.mountpoint / "f", os.O_RDONLY | os.O_DIRECT)
    try:
        patterns = []
        for _ in range(2):
            set_faults(mnt, "eio=25%,ops=read,seed=42")  # setting it again restarts
            patterns.append([attempt(os.preadv, fd, [page], i * PAGE) for i in range(64)])
    finally:
        os.close(fd)
    assert patterns[0] == patterns[1]
    failed = patterns[0].count(errno.EIO)
    assert 0 < failed < 64 and set(patterns[0]) == {0, errno.EIO}
    assert injected(mnt)["read"] == {
        "matched": 128,
        "errors": 2 * failed,
        "delays": 0,
        "delay_ns": 0,
    }
    assert faults_of(mnt)["seed"] == 42


@needs_fuse
def test_statistics_have_no_faults_until_they_are_set(mnt: Mount) -> None:
    assert "faults" not in mnt.statistics()
    assert faults_of(mnt)["spec"] == "off"
    set_faults(mnt, "delay=500µs")  # the xattr takes UTF-8
    assert faults_of(mnt)["spec"] == "delay=500us"
    set_faults(mnt, "off")
    faults = mnt.statistics()["faults"]
    assert isinstance(faults, dict) and faults["spec"] == "off"  # counters stay visible


@needs_fuse
def test_a_bad_spec_gets_einval_and_changes_nothing(mnt: Mount) -> None:
    set_faults(mnt, "every=1000,ops=fsync,seed=1")
    before = os.getxattr(mnt.mountpoint, FAULTS_XATTR)
    for value in [b"", b"on", b"eio=2", b"every=0", b"\xff", b"eio=1,eio=1", b"x" * 65536]:
        with pytest.raises(OSError) as info:
            os.setxattr(mnt.mountpoint, FAULTS_XATTR, value)
        assert info.value.errno == errno.EINVAL, value
    assert os.getxattr(mnt.mountpoint, FAULTS_XATTR) == before
    assert "refused fault spec" in mnt.log_text()
    assert os.listxattr(mnt.mountpoint) == os.listxattr(mnt.backing)  # hidden


@pytest.fixture(scope="module")
def control_mount() -> Iterator[Mount]:
    """One mount shared by the fuzzing examples."""
    from .conftest import finish_mount, start_mount

    if FUSE_UNAVAILABLE is not None:
        pytest.skip(FUSE_UNAVAILABLE)
    base = scratch_dir("iofs-faults-")
    (base / "b").mkdir()
    (base / "m").mkdir()
    mount = start_mount(base / "b", base / "m", base / "daemon.log")
    try:
        os.setxattr(mount.mountpoint, FAULTS_XATTR, b"every=7,ops=fsync,seed=3")
        yield mount
    finally:
        finish_mount(mount)
        shutil.rmtree(base, ignore_errors=True)


def _valid(value: bytes) -> bool:
    try:
        parse_faults(value.decode())
    except (BadFaults, UnicodeDecodeError):
        return False
    return True


@settings(max_examples=100, deadline=None)
@given(
    value=st.binary(max_size=320)
    | st.lists(st.sampled_from(TOKENS), max_size=10).map("".join).map(str.encode)
)
def test_garbage_through_the_xattr_gets_einval(control_mount: Mount, value: bytes) -> None:
    if _valid(value):
        return  # a valid spec: not what this test is about
    mp = control_mount.mountpoint
    before = os.getxattr(mp, FAULTS_XATTR)
    with pytest.raises(OSError) as info:
        os.setxattr(mp, FAULTS_XATTR, value)
    assert info.value.errno == errno.EINVAL
    assert os.getxattr(mp, FAULTS_XATTR) == before


def as_nobody(action: Callable[[], str]) -> str:
    """Run *action* in a forked child as uid/gid 65534 (nobody); what it returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(write_end, action().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return answer


@needs_root
def test_only_the_owner_or_root_may_set_faults(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=("allow_other",))
    mnt.mountpoint.chmod(0o777)  # so that the kernel lets nobody's setxattr through to us
    mp = mnt.mountpoint

    def try_to_set() -> str:
        try:
            os.setxattr(mp, FAULTS_XATTR, b"eio=1")
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]
        return "set"

    def read_it() -> str:
        return os.getxattr(mp, FAULTS_XATTR).decode()

    def through_the_cli() -> str:
        try:
            control.set_faults(mp, "every=1")
        except IofsError as exc:
            return f"{exc.status} {exc}"
        return "set"

    assert as_nobody(try_to_set) == "EPERM"
    assert json.loads(as_nobody(read_it))["spec"] == "off"  # readable, like the mode
    assert as_nobody(through_the_cli) == (
        f"{int(ExitStatus.PERMISSION)} only the owner of {mp} or root may set its fault "
        "injection (Operation not permitted)"
    )
    assert faults_of(mnt)["spec"] == "off"
    assert "may not set fault injection" in mnt.log_text()


# -- the command line ---------------------------------------------------------------------------
def iofs(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: its exit status, stdout and stderr."""
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@needs_fuse
def test_mount_faults_option_and_the_faults_command(capsys: pytest.CaptureFixture[str]) -> None:
    base = scratch_dir("iofs-faults-cli-")
    backing, mountpoint, log = base / "b", base / "m", base / "daemon.log"
    backing.mkdir()
    mountpoint.mkdir()
    mp = str(mountpoint)
    try:
        # --faults reaches the daemon through MountOptions, start_daemon and the CLI.
        opts = MountOptions(backing, mountpoint, log_file=log, faults="every=2,ops=write")
        with mounted(opts):
            fd = os.open(mountpoint / "f", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
            buffer = mmap.mmap(-1, PAGE)
            try:
                writes = [attempt(os.pwritev, fd, [buffer], i * PAGE) for i in range(4)]
            finally:
                os.close(fd)
                buffer.close()
            assert writes == [0, errno.EIO] * 2

            status, out, _ = iofs(capsys, "faults", mp)
            assert status == 0
            assert out.startswith("every=2,ops=write: every 2nd write fails with EIO\n")
            assert "4 matched" in out and "2 failed" in out

            status, out, err = iofs(capsys, "faults", mp, "eio=2")
            assert (status, out) == (ExitStatus.BAD_SETTING, "")
            assert err == "iofs: error: eio= must be more than 0 and at most 1 (100%), not '2'\n"

            status, out, _ = iofs(capsys, "faults", mp, "delay=1ms:50%,seed=9")
            assert status == 0
            assert out == f"iofs: {mp}: 50% of reads, writes and fsyncs wait 1ms first (seed 9)\n"

            status, out, _ = iofs(capsys, "stats", mp)
            assert status == 0 and "fault injection delay=1ms:0.5,seed=9\n" in out
            status, out, _ = iofs(capsys, "stats", "--json", mp)
            assert json.loads(out)["faults"]["operations"]["write"]["errors"] == 2

            status, out, _ = iofs(capsys, "faults", mp, "off")
            assert (status, out) == (0, f"iofs: {mp}: fault injection off\n")
            assert (mountpoint / "g").write_bytes(b"served") == 6
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, text

        status, _, err = iofs(capsys, "mount", "--faults", "every=x", str(backing), mp)
        assert status == ExitStatus.BAD_SETTING
        assert err == "iofs: error: --faults: every= needs a whole number, not 'x'\n"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def skip_if_passed_through(mnt: Mount) -> None:
    if json.loads(os.getxattr(mnt.mountpoint, MODE_XATTR))["passthrough"]:
        pytest.skip("passthrough: file data never reaches the daemon, so no fault is injected")


# -- fio -------------------------------------------------------------------------------------
@needs_fuse
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_sees_the_injected_errors_and_the_daemon_survives(mode_mount: Mount) -> None:
    skip_if_passed_through(mode_mount)
    mnt = mode_mount
    # fio lays a missing file out with writes and gives up on an error: lay it out first.
    (mnt.backing / "faulty.0.0").write_bytes(os.urandom(2 << 20))
    set_faults(mnt, "eio=0.05,ops=read+write,seed=1")
    result = subprocess.run(
        [
            "fio",
            "--name=faulty",
            f"--directory={mnt.mountpoint}",
            "--rw=randrw",
            "--bs=4k",
            "--size=2m",
            "--direct=1",
            "--ioengine=psync",
            "--continue_on_error=all",
            "--output-format=json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)["jobs"][0]
    counters = injected(mnt)
    injected_errors = counters["read"]["errors"] + counters["write"]["errors"]
    assert job["error"] == errno.EIO
    assert job["total_err"] == injected_errors > 0
    assert counters["read"]["matched"] + counters["write"]["matched"] == 512
    set_faults(mnt, "off")
    (mnt.mountpoint / "after").write_bytes(b"still serving")
    assert (mnt.backing / "after").read_bytes() == b"still serving"
    assert mnt.counters()["unexpected_errors"] == 0
