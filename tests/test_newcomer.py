"""What a newcomer met (issue 15): the failures they hit, and the conventions of fio,
mount(8), sshfs and top/iostat that the command line follows."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iofs import mounttable
from iofs.backends import ENGINES
from iofs.cli import _parser
from iofs.durations import parse_duration
from iofs.errors import ExitStatus
from iofs.live_mounts import (
    default_log_path,
    escaped_mountpoint,
    find_mount,
    state_path,
    unescaped_mountpoint,
)
from iofs.mount_helper import iofs_arguments

from .conftest import Mount, MountFactory, needs_fuse, needs_root, scratch_dir
from .test_cli import (  # noqa: F401  (dirs: a fixture)
    AS_NOBODY,
    IOFS,
    daemon_engine,
    dirs,
    iofs,
    remove_leftovers,
)

MAX_NR = Path("/proc/sys/fs/aio-max-nr")


# -- paths the kernel accepts ----------------------------------------------------------
@pytest.fixture
def base() -> Iterator[Path]:
    path = scratch_dir("iofs-paths-")
    try:
        yield path
    finally:
        for entry in reversed(sorted(os.listdir(os.fsencode(path)))):
            target = os.path.join(os.fsencode(path), entry)
            if find_mount(Path(os.fsdecode(target))) is not None:
                subprocess.run([b"fusermount3", b"-u", b"-z", target], check=False)
        shutil.rmtree(path, ignore_errors=True)


@needs_fuse
@pytest.mark.parametrize(
    ("backing_name", "mountpoint_name"),
    [
        (b"back ing \xc3\xa9", b"my mnt \xc3\xbc \xe6\x97\xa5\xe6\x9c\xac"),  # é, ü, 日本
        (b"back\xff\xfeing", b"mnt \xe9"),  # not UTF-8 at all: Latin-1 bytes
        (b"a,b\\c", b"-dash"),  # fsname's separators, and a name like an option
    ],
    ids=["utf-8", "not-utf-8", "separators"],
)
def test_any_path_the_kernel_accepts_mounts(
    base: Path, backing_name: bytes, mountpoint_name: bytes
) -> None:
    backing = os.path.join(os.fsencode(base), backing_name)
    mountpoint = os.path.join(os.fsencode(base), mountpoint_name)
    os.mkdir(backing)
    os.mkdir(mountpoint)
    with open(os.path.join(backing, b"f"), "wb") as file:
        file.write(b"kept")
    result = subprocess.run(
        [*map(os.fsencode, IOFS), b"mount", b"--mode", b"xfs", b"--", backing, mountpoint],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    entry = find_mount(Path(os.fsdecode(mountpoint)))
    assert entry is not None and os.fsencode(entry.source) == backing  # df shows the path
    with open(os.path.join(mountpoint, b"f"), "rb") as file:
        assert file.read() == b"kept"
    with open(os.path.join(mountpoint, b"g"), "wb") as file:
        file.write(b"new")
    with open(os.path.join(backing, b"g"), "rb") as file:
        assert file.read() == b"new"
    for command in ([b"mode", mountpoint], [b"stats", mountpoint], [b"log", mountpoint]):
        shown = subprocess.run(
            [*map(os.fsencode, IOFS), *command], capture_output=True, timeout=60, check=False
        )
        assert shown.returncode == 0, (command, shown.stderr)
    state = state_path(Path(os.fsdecode(mountpoint)))
    log = default_log_path(Path(os.fsdecode(mountpoint)))
    assert log.exists() and state.exists()
    gone = subprocess.run(
        [*map(os.fsencode, IOFS), b"umount", mountpoint],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 0, gone.stderr
    assert find_mount(Path(os.fsdecode(mountpoint))) is None
    # Removed with the mount (`iofs umount` waits for the daemon to exit).
    assert not state.exists() and not log.exists()


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_state_file_names_are_readable_and_name_one_mountpoint(raw: bytes) -> None:
    mountpoint = Path(os.fsdecode(b"/" + raw.strip(b"/"))) if raw.strip(b"/") else Path("/")
    name = escaped_mountpoint(mountpoint)
    assert "/" not in name and not name.startswith(".") and name.isascii()
    assert unescaped_mountpoint(name) == mountpoint


def test_state_file_names_of_plain_paths_read_as_the_path() -> None:
    assert escaped_mountpoint(Path("/tmp/iofs/mnt")) == "tmp-iofs-mnt"
    assert escaped_mountpoint(Path("/srv/my-data")) == "srv-my\\x2ddata"


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_mount_table_fields_are_unescaped_to_the_path(raw: bytes) -> None:
    # /proc/self/mounts escapes space, tab, newline and backslash in octal.
    escaped = re.sub(rb"[ \t\n\\]", lambda m: b"\\%03o" % m[0][0], raw)
    assert os.fsencode(mounttable.unescape(escaped)) == raw


def test_cleaning_up_races_the_daemon_removing_its_state_file(base: Path) -> None:
    """The flaky teardown of issue 15: the fixture saw the state file, then the daemon
    removed it before it was read. Here a thread writes and removes it as fast as it
    can while the clean-up runs, which must never fail."""
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    state = state_path(mountpoint)
    stop = threading.Event()

    def daemon() -> None:
        while not stop.is_set():
            state.write_text(json.dumps({"pid": os.getpid(), "started": 0.0}))
            state.unlink(missing_ok=True)

    thread = threading.Thread(target=daemon)
    thread.start()
    try:
        for _ in range(500):
            remove_leftovers(mountpoint)
    finally:
        stop.set()
        thread.join()
    assert not state.exists()


# -- an engine that cannot run with the queue depth asked for ---------------------------
def _aio_room() -> int:
    return int(MAX_NR.read_text())


@needs_fuse
def test_an_aio_queue_beyond_aio_max_nr_is_status_6_or_falls_back(
    dirs: tuple[Path, Path],  # noqa: F811
) -> None:
    if ENGINES["aio"].probe() is not None:
        pytest.skip(f"aio cannot run here: {ENGINES['aio'].probe()}")
    backing, mountpoint = dirs
    # More than the whole system may have, whatever other processes hold right now;
    # beyond io_uring's ring too, so the fallback has to go on to a thread pool.
    depth = str(max(_aio_room() + 1, 32769))
    args = ["mount", "--mode", "xfs", "--engine", "aio", "--queue-depth", depth]
    refused = iofs(*args, str(backing), str(mountpoint))
    assert refused.returncode == ExitStatus.UNAVAILABLE
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(
        f"iofs: error: mode xfs: engine 'aio' cannot run here: an AIO context for {depth} "
        f"events does not fit in fs.aio-max-nr ({_aio_room()}, "
    )
    assert "use a queue depth of at most" in refused.stderr
    assert find_mount(mountpoint) is None
    fallen = iofs(*args, "--allow-fallback", str(backing), str(mountpoint))
    assert fallen.returncode == 0, fallen.stderr
    try:
        lines = fallen.stderr.splitlines()
        assert lines[0].startswith("iofs: engine aio cannot run here (an AIO context for")
        assert lines[-1].endswith("mode xfs uses threads instead (--allow-fallback)")
        assert daemon_engine(mountpoint) == "threads"
        (mountpoint / "f").write_bytes(b"data" * 1024)
        assert (backing / "f").read_bytes() == b"data" * 1024
    finally:
        assert iofs("umount", str(mountpoint)).returncode == 0


@needs_fuse
def test_a_ring_beyond_iorings_limit_is_status_6(dirs: tuple[Path, Path]) -> None:  # noqa: F811
    if ENGINES["io_uring"].probe() is not None:
        pytest.skip(f"io_uring cannot run here: {ENGINES['io_uring'].probe()}")
    backing, mountpoint = dirs
    result = iofs("mount", "--mode", "xfs", "--queue-depth", "32769", str(backing), str(mountpoint))
    assert (result.returncode, result.stderr) == (
        ExitStatus.UNAVAILABLE,
        "iofs: error: mode xfs: engine 'io_uring' cannot run here: a ring holds at most "
        "32768 entries (IORING_MAX_ENTRIES): use a queue depth of at most 32768 "
        "(--allow-fallback uses the closest engine that runs)\n",
    )
    assert find_mount(mountpoint) is None


@needs_fuse
def test_a_refused_switch_says_why_and_where_the_log_is(dirs: tuple[Path, Path]) -> None:  # noqa: F811
    if ENGINES["io_uring"].probe() is not None:
        pytest.skip(f"io_uring cannot run here: {ENGINES['io_uring'].probe()}")
    backing, mountpoint = dirs
    mounted = iofs("mount", "--queue-depth", "40000", str(backing), str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    try:
        switched = iofs("mode", str(mountpoint), "xfs")
        log = default_log_path(mountpoint)
        assert (switched.returncode, switched.stderr) == (
            ExitStatus.UNAVAILABLE,
            f"iofs: error: {mountpoint} stays in blocking: engine 'io_uring' cannot run here: "
            "a ring holds at most 32768 entries (IORING_MAX_ENTRIES): use a queue depth of "
            f"at most 32768 (its log: {log})\n",
        )
        assert "refused mode setting xfs" in log.read_text()
        assert json.loads(os.getxattr(mountpoint, "iofs.mode"))["spec"].startswith("blocking")
    finally:
        assert iofs("umount", str(mountpoint)).returncode == 0


def _with_4_gib_of_address_space() -> None:
    """In the child (and the daemon it starts): fail with MemoryError, not take the
    machine's memory, if a queue depth ever makes something per operation again."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _limited_iofs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOFS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_with_4_gib_of_address_space,
    )


@needs_fuse
def test_a_queue_depth_of_a_billion_is_refused_before_anything_is_made_for_it(
    dirs: tuple[Path, Path],  # noqa: F811
) -> None:
    """``--queue-depth 1000000000``: a kernel-async engine is refused with the limit at
    mount and at a live switch (it made a slot per operation first: ~23 GiB, and the
    switch never answered), while a blocking mount takes it, having nothing to make."""
    backing, mountpoint = dirs
    billion = "1000000000"
    runnable = [name for name in ("io_uring", "aio") if ENGINES[name].probe() is None]
    if not runnable:
        pytest.skip("neither io_uring nor aio runs here")
    for engine in runnable:
        refused = _limited_iofs(
            "mount", "--mode", "xfs", "--engine", engine, "--queue-depth", billion,
            str(backing), str(mountpoint),
        )  # fmt: skip
        assert refused.returncode == ExitStatus.UNAVAILABLE, refused.stderr
        assert refused.stderr.startswith(f"iofs: error: mode xfs: engine '{engine}' cannot run")
        assert "use a queue depth of at most" in refused.stderr
        assert find_mount(mountpoint) is None
    mounted = _limited_iofs("mount", "--queue-depth", billion, str(backing), str(mountpoint))
    assert mounted.returncode == 0, mounted.stderr
    try:
        for engine in runnable:
            switched = _limited_iofs("mode", str(mountpoint), f"xfs,engine={engine}")
            assert switched.returncode == ExitStatus.UNAVAILABLE, switched.stderr
            assert switched.stderr.startswith(
                f"iofs: error: {mountpoint} stays in blocking: engine '{engine}' cannot run here"
            )
        (mountpoint / "f").write_bytes(b"still serving")
        assert (backing / "f").read_bytes() == b"still serving"
    finally:
        assert iofs("umount", str(mountpoint)).returncode == 0


# -- permissions and read-only mounts ----------------------------------------------------
@needs_root
@needs_fuse
def test_a_user_may_not_unmount_roots_mount(dirs: tuple[Path, Path]) -> None:  # noqa: F811
    backing, mountpoint = dirs
    assert iofs("mount", str(backing), str(mountpoint)).returncode == 0
    try:
        for path in (mountpoint, mountpoint / "inside"):
            result = subprocess.run(
                [*AS_NOBODY, *IOFS, "umount", str(path)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert (result.returncode, result.stderr) == (
                ExitStatus.PERMISSION,
                f"iofs: error: only root or the user who mounted {mountpoint} (uid 0) may "
                "unmount it\n",
            )
            assert find_mount(mountpoint) is not None
        looked = subprocess.run(
            [*AS_NOBODY, *IOFS, "stats", str(mountpoint)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (looked.returncode, looked.stderr) == (
            ExitStatus.PERMISSION,
            f"iofs: error: cannot read the statistics of {mountpoint}: only the user who "
            "mounted it (uid 0) and no one else may use it (it was mounted without -o "
            "allow_other)\n",
        )
    finally:
        assert iofs("umount", str(mountpoint)).returncode == 0


@needs_fuse
def test_control_works_on_a_read_only_mount(mount_factory: MountFactory) -> None:
    mnt: Mount = mount_factory(options=("ro",))
    (mnt.backing / "f").write_bytes(b"x" * 4096)
    switched = iofs("mode", str(mnt.mountpoint), "uncached")
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.startswith(f"iofs: {mnt.mountpoint}: switched to uncached (")
    assert json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))["spec"].startswith("uncached")
    faults = iofs("faults", str(mnt.mountpoint), "every=1,ops=read")
    assert faults.returncode == 0, faults.stderr
    with pytest.raises(OSError) as info:
        (mnt.mountpoint / "f").read_bytes()
    assert info.value.errno == errno.EIO
    assert iofs("faults", str(mnt.mountpoint), "off").returncode == 0
    assert (mnt.mountpoint / "f").read_bytes() == b"x" * 4096
    # The mount itself stays read-only.
    with pytest.raises(OSError) as info:
        (mnt.mountpoint / "g").write_bytes(b"")
    assert info.value.errno == errno.EROFS
    # getfattr does it too (it asks for the size first, then the value: one switch).
    history = len(json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))["history"])
    subprocess.run(
        ["getfattr", "-n", "iofs.mode=xfs,engine=threads", str(mnt.mountpoint)],
        capture_output=True, check=True,
    )  # fmt: skip
    mode = json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))
    assert mode["spec"].startswith("xfs,engine=threads")
    assert len(mode["history"]) == history + 1
    # And the refusals are the same as through setxattr.
    bad = iofs("mode", str(mnt.mountpoint), "zfs")
    assert bad.returncode == ExitStatus.BAD_SETTING
    with pytest.raises(OSError) as info:
        os.getxattr(mnt.mountpoint, "iofs.mode=zfs")
    assert info.value.errno == errno.EINVAL


@needs_fuse
def test_switching_to_the_mode_it_is_in_says_so(mount_factory: MountFactory) -> None:
    mnt = mount_factory(engine=None, mode="blocking")
    again = iofs("mode", str(mnt.mountpoint), "blocking")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"iofs: {mnt.mountpoint}: already in blocking (engine ")
    assert len(json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))["history"]) == 1
    # Through the xattr too: nothing changes, no history entry.
    os.setxattr(mnt.mountpoint, "iofs.mode", b"blocking")
    assert len(json.loads(os.getxattr(mnt.mountpoint, "iofs.mode"))["history"]) == 1


# -- control commands take any path inside a mount ---------------------------------------
@needs_fuse
def test_control_commands_take_any_path_inside_the_mount(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    (mnt.backing / "sub").mkdir()
    (mnt.backing / "sub" / "file").write_bytes(b"x")
    inside = mnt.mountpoint / "sub" / "file"
    for args in (
        ("mode", str(inside), "uncached"),
        ("mode", str(inside.parent)),
        ("stats", str(inside)),
        ("stats", "--json", str(inside.parent)),
        ("faults", str(inside), "off"),
        ("top", "--count", "1", "--interval", "1ms", str(inside)),
        ("log", str(inside)),
    ):
        result = iofs(*args)
        assert result.returncode == 0, (args, result.stderr)
    missing = iofs("mode", str(mnt.mountpoint / "sub" / "nope"))
    assert (missing.returncode, missing.stderr) == (
        ExitStatus.BAD_PATH,
        f"iofs: error: {mnt.mountpoint / 'sub' / 'nope'}: No such file or directory\n",
    )
    gone = iofs("umount", str(inside.parent))
    assert gone.stdout == f"iofs: unmounted {mnt.mountpoint}\n"
    assert find_mount(mnt.mountpoint) is None


# -- the command line's own conventions ---------------------------------------------------
def test_version() -> None:
    result = iofs("--version")
    assert (result.returncode, result.stdout) == (0, "iofs 0.1.0\n")


def _subcommands() -> list[str]:
    parser = _parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_explains_itself(command: str) -> None:
    parser = _parser()
    action = next(a for a in parser._actions if a.dest == "command")
    sub = action.choices[command]  # type: ignore[index]
    assert sub.description, f"{command} --help has no description"
    for argument in sub._actions:
        if isinstance(argument, argparse._HelpAction):
            continue
        name = argument.dest if not argument.option_strings else argument.option_strings[-1]
        assert argument.help, f"{command} {name} has no help"
    shown = iofs(command, "--help")
    assert shown.returncode == 0
    assert "--debug" in shown.stdout and "debug logging" in shown.stdout


def test_defaults_are_shown() -> None:
    shown = iofs("mount", "--help").stdout
    for default in ("default blocking", "default 64", "default 8", "default 1s"):
        assert default in " ".join(shown.split()), default


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1ms", 0.001), ("20ms", 0.02), ("10m", 600), ("2s", 2), ("1.5", 1.5), ("1h", 3600),
     ("1m30s", 90), ("500us", 0.0005), ("500µs", 0.0005), ("250ns", 2.5e-7)],
)  # fmt: skip
def test_one_duration_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@given(st.integers(1, 10**6), st.sampled_from(["ns", "us", "ms", "s", "m", "h", ""]))
def test_durations_read_back_what_they_say(number: int, unit: str) -> None:
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * scale)


@pytest.mark.parametrize(
    "args",
    [
        ("top", "M", "--interval", "ten"),
        ("top", "M", "--interval", "0"),
        ("mount", "B", "M", "--stats-interval", "5x"),
        ("soak", "--duration", "-1m"),
    ],
)
def test_a_bad_duration_is_a_usage_error(args: tuple[str, ...]) -> None:
    result = iofs(*args)
    assert result.returncode == ExitStatus.USAGE
    assert result.stderr.count("\n") == 1


@needs_fuse
def test_times_take_the_duration_syntax_everywhere(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    top = iofs("top", str(mnt.mountpoint), "--interval", "20ms", "--count", "1", "--batch")
    assert top.returncode == 0, top.stderr
    parser = _parser()
    args = parser.parse_args(["mount", "--attr-timeout", "10m", "--entry-timeout", "0", "B", "M"])
    assert (args.attr_timeout, args.entry_timeout) == (600, 0)
    assert parser.parse_args(["soak", "--switch-interval", "1ms"]).switch_interval == 0.001


# -- stats and top: nothing cut off, batch and JSON, their own requests apart -------------
@needs_fuse
def test_stats_and_top_never_cut_a_number(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    for index in range(50):
        (mnt.mountpoint / f"f{index}").write_bytes(b"x" * 100_000)
        (mnt.mountpoint / f"f{index}").read_bytes()
    for columns in ("80", "60", None):  # a narrow terminal, and a pipe
        env = {**os.environ, "COLUMNS": columns} if columns else os.environ.copy()
        if columns is None:
            env.pop("COLUMNS", None)
        for args in (("stats",), ("top", "--count", "1", "--interval", "1ms")):
            result = subprocess.run(
                [*IOFS, *args, str(mnt.mountpoint)],
                capture_output=True, text=True, timeout=60, check=False, env=env,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "…" not in result.stdout, (columns, args, result.stdout)
            if columns is not None:
                widest = max(len(line) for line in result.stdout.splitlines())
                assert widest <= int(columns), (columns, args, result.stdout)
            else:  # in a pipe every column is there
                assert "p99.9" in result.stdout and "in flight" in result.stdout
            assert re.search(r"write\s.*\d", result.stdout), result.stdout


@needs_fuse
def test_top_in_a_pipe_prints_one_frame_per_interval(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    frames = iofs("top", str(mnt.mountpoint), "--interval", "10ms", "--count", "2")
    assert frames.returncode == 0, frames.stderr
    assert frames.stdout.count("iofs top mode blocking") == 3  # the first, then 2 more
    assert "averages since start" in frames.stdout.split("\n\n")[0]
    lines = iofs("top", "--json", str(mnt.mountpoint), "--interval", "10ms", "--count", "3")
    assert lines.returncode == 0, lines.stderr
    intervals = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [i["since_start"] for i in intervals] == [True, False, False, False]
    assert all(i["mode"].startswith("blocking") for i in intervals)


@needs_fuse
def test_tops_own_polling_is_not_the_workloads(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    (mnt.mountpoint / "f").write_bytes(b"x")
    lines = iofs("top", "--json", str(mnt.mountpoint), "--interval", "1ms", "--count", "5")
    assert lines.returncode == 0, lines.stderr
    intervals = [json.loads(line) for line in lines.stdout.splitlines()]
    for interval in intervals:
        assert "control" not in interval["operations"]
    # The mount is idle: after the first frame (since start) top saw no getxattr, though
    # it read the statistics (a getxattr) every time.
    for interval in intervals[1:]:
        getxattr = interval["operations"].get("getxattr", {"ops_per_s": 0})
        assert getxattr["ops_per_s"] == 0, interval
    statistics = mnt.statistics()["operations"]
    assert isinstance(statistics, dict)
    assert statistics["control"]["count"] >= len(intervals)
    assert statistics["control"]["kind"] == "control"


# -- the daemon's log --------------------------------------------------------------------
@needs_fuse
def test_iofs_log_prints_and_follows_the_daemons_log(dirs: tuple[Path, Path]) -> None:  # noqa: F811
    backing, mountpoint = dirs
    assert iofs("mount", "--mode", "btrfs", str(backing), str(mountpoint)).returncode == 0
    follower = subprocess.Popen([*IOFS, "log", "-f", str(mountpoint)], stdout=subprocess.PIPE)
    try:
        shown = iofs("log", str(mountpoint))
        assert shown.returncode == 0, shown.stderr
        assert f"serving {backing} at {mountpoint} in mode btrfs" in shown.stdout
        assert iofs("mode", str(mountpoint), "xfs,engine=threads").returncode == 0
        assert iofs("umount", str(mountpoint)).returncode == 0
        out, _ = follower.communicate(timeout=30)  # -f ends when the mount goes away
        assert follower.returncode == 0
        assert b"mode switched to xfs" in out
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert not default_log_path(mountpoint).exists()
    not_iofs = iofs("log", "/proc")
    assert (not_iofs.returncode, not_iofs.stderr) == (
        ExitStatus.MOUNT_CONFLICT,
        "iofs: error: /proc is not an iofs mount (it is proc)\n",
    )


# -- mount(8) and /etc/fstab ------------------------------------------------------------
def test_the_mount_helper_turns_mount_options_into_iofs_options() -> None:
    options = (
        "rw,mode=xfs,queue_depth=128,allow_other,allow_fallback,noauto,"
        "x-systemd.automount,nofail,_netdev,defaults,faults=delay=1ms:0.5"
    )
    assert iofs_arguments(["/srv/b", "/mnt/m", "-o", options, "-t", "fuse.iofs"]) == [
        "mount", "--mode=xfs", "--queue-depth=128", "--allow-fallback",
        "--faults=delay=1ms:0.5", "-o", "allow_other", "/srv/b", "/mnt/m",
    ]  # fmt: skip
    assert iofs_arguments(["-n", "b", "m", "-oro,nodirect,log=/a\\,b"]) == [
        "mount", "--no-direct", "--log=/a,b", "-o", "ro", "b", "m",
    ]  # fmt: skip
    for bad in (["b"], ["b", "m", "-x"], ["b", "m", "-o", "mode"], ["b", "m", "-f"]):
        with pytest.raises(ValueError):
            iofs_arguments(bad)


MOUNT_HELPER = Path(sys.executable).parent / "mount.fuse.iofs"


@needs_root
@needs_fuse
def test_mount_t_fuse_iofs_and_an_fstab_line(dirs: tuple[Path, Path]) -> None:  # noqa: F811
    """As root, in a private mount namespace whose /usr/sbin holds only the helper (so
    mount(8) finds it, and the machine's /sbin stays as it is); everything mounted in
    there is unmounted there, and dies with the namespace anyway."""
    if not MOUNT_HELPER.exists():
        pytest.skip(f"{MOUNT_HELPER} is not installed (pip install -e .)")
    backing, mountpoint = dirs
    (backing / "f").write_bytes(b"kept")
    sbin = backing.parent / "sbin"
    sbin.mkdir()
    (sbin / "mount.fuse.iofs").symlink_to(MOUNT_HELPER)
    fstab = backing.parent / "fstab"
    fstab.write_text(f"{backing} {mountpoint} fuse.iofs mode=btrfs,ro,noauto,nofail 0 0\n")
    iofs_command = " ".join(IOFS)
    script = f"""
        set -e
        mount --bind {sbin} /usr/sbin
        mount -t fuse.iofs {backing} {mountpoint} -o mode=xfs,allow_other
        grep " {mountpoint} fuse.iofs " /proc/self/mounts
        cat {mountpoint}/f; echo
        {iofs_command} mode {mountpoint}
        umount {mountpoint}
        mount -T {fstab} {mountpoint}
        grep " {mountpoint} fuse.iofs " /proc/self/mounts
        {iofs_command} mode {mountpoint}
        umount {mountpoint}
        ! grep " {mountpoint} " /proc/self/mounts
    """
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{backing} {mountpoint} fuse.iofs rw," in lines[0] and "allow_other" in lines[0]
    assert lines[1] == "kept"
    assert lines[2].startswith("xfs (engine ")
    assert f"{backing} {mountpoint} fuse.iofs ro," in lines[4]
    assert lines[5].startswith("btrfs (engine ")
    assert find_mount(mountpoint) is None
