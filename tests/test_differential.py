"""Property-based differential test: random operation sequences on the mount and on a
plain directory of the same filesystem must give the same results, errnos and trees.

Run over the machine's own filesystem and, as root, over fresh XFS and Btrfs images.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from iofs import syscalls
from iofs.inodes import MIN_FD_BUDGET
from iofs.loopfs import LoopFilesystem

from .conftest import FUSE_UNAVAILABLE, ROOT, finish_mount, scratch_dir, start_mount
from .differential import Outcome, outcome, snapshot

PATHS = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a"]
paths = st.sampled_from(PATHS)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o000, 0o4755, 0o2750, 0o1777])
xattr_names = st.sampled_from(["user.a", "user.b", "user.long." + "x" * 100])
_cases = itertools.count()
T = TypeVar("T")


def opened(path: Path, flags: int, use: Callable[[int], T]) -> T:
    """Open *path*, *use* the descriptor, close it."""
    fd = os.open(path, flags)
    try:
        return use(fd)
    finally:
        os.close(fd)


class PassthroughMachine(RuleBasedStateMachine):
    """Each example works in fresh subdirectories of `mount_root` and `plain_root`."""

    mount_root: Path
    plain_root: Path
    #: Called after every step (with a tiny descriptor budget: touches other inodes, so
    #: that the next step finds every inode of the case let go of).
    churn: Callable[[], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        case = f"case{next(_cases)}"
        self.roots = (self.mount_root / case, self.plain_root / case)
        self.history: list[str] = []  # what ran, for the failure message
        self.open_fds: list[tuple[int, int]] = []  # (on the mount, on the plain dir)
        for root in self.roots:
            root.mkdir()

    def teardown(self) -> None:
        for pair in self.open_fds:
            for fd in pair:
                os.close(fd)
        for root in self.roots:
            shutil.rmtree(root)

    def both(self, op: Callable[[Path], object]) -> None:
        """Run *op* on both trees; the outcomes must be equal."""
        on_mount, on_plain = (outcome(functools.partial(op, root)) for root in self.roots)
        self._compare(on_mount, on_plain)

    def on_fds(self, index: int, op: Callable[[int], object]) -> None:
        """Run *op* on one pair of descriptors held open; the outcomes must be equal."""
        pair = self.open_fds[index % len(self.open_fds)]
        on_mount, on_plain = (outcome(functools.partial(op, fd)) for fd in pair)
        self._compare(on_mount, on_plain)

    def _compare(self, on_mount: Outcome, on_plain: Outcome, depth: int = 2) -> None:
        rule_frame = sys._getframe(depth)  # the rule that ran, for the history
        args = {k: v for k, v in rule_frame.f_locals.items() if k not in ("self", "op")}
        self.history.append(f"{rule_frame.f_code.co_name}({args}) -> {on_plain!r:.80}")
        assert on_mount == on_plain, "\n".join(
            [*self.history, f"mount gave {on_mount!r:.200}", f"plain gave {on_plain!r:.200}"]
        )

    @rule(path=paths, mode=modes, exclusive=st.booleans(), trunc=st.booleans())
    def create(self, path: str, mode: int, exclusive: bool, trunc: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        flags |= os.O_TRUNC if trunc else 0
        self.both(lambda r: os.close(os.open(r / path, flags, mode)))

    @rule(path=paths, offset=st.integers(0, 70_000), data=st.binary(max_size=5000))
    def write(self, path: str, offset: int, data: bytes) -> None:
        self.both(lambda r: opened(r / path, os.O_WRONLY, lambda fd: os.pwrite(fd, data, offset)))

    @rule(path=paths, data=st.binary(max_size=3000))
    def append(self, path: str, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND
        self.both(lambda r: opened(r / path, flags, lambda fd: os.write(fd, data)))

    @rule(path=paths, offset=st.integers(0, 80_000), size=st.integers(0, 20_000))
    def read(self, path: str, offset: int, size: int) -> None:
        self.both(lambda r: opened(r / path, os.O_RDONLY, lambda fd: os.pread(fd, size, offset)))

    @rule(path=paths, size=st.integers(0, 100_000))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size))

    @rule(
        src=paths,
        dst=paths,
        flags=st.sampled_from([0, syscalls.RENAME_NOREPLACE, syscalls.RENAME_EXCHANGE]),
    )
    def rename(self, src: str, dst: str, flags: int) -> None:
        at = syscalls.AT_FDCWD
        self.both(lambda r: syscalls.renameat2(at, bytes(r / src), at, bytes(r / dst), flags))

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.both(lambda r: os.link(r / src, r / dst, follow_symlinks=False))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(lambda r: os.unlink(r / path))

    @rule(path=paths, mode=modes)
    def mkdir(self, path: str, mode: int) -> None:
        self.both(lambda r: os.mkdir(r / path, mode))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(lambda r: os.rmdir(r / path))

    @rule(path=paths, mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda r: os.chmod(r / path, mode))

    # Targets stay relative and never climb: no operation may ever resolve outside the
    # case directory (an absolute target would let chmod & co. loose on the machine).
    @rule(path=paths, link_to=st.sampled_from([*PATHS, "missing", "x" * 300]))
    def symlink(self, path: str, link_to: str) -> None:
        self.both(lambda r: os.symlink(link_to, r / path))

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        self.both(lambda r: os.readlink(r / path))

    @rule(path=paths)
    def listdir(self, path: str) -> None:
        self.both(lambda r: sorted(os.listdir(r / path)))

    @rule(path=paths, name=xattr_names, value=st.binary(max_size=200))
    def setxattr(self, path: str, name: str, value: bytes) -> None:
        self.both(lambda r: os.setxattr(r / path, name, value, follow_symlinks=False))

    @rule(path=paths, name=xattr_names)
    def removexattr(self, path: str, name: str) -> None:
        self.both(lambda r: os.removexattr(r / path, name, follow_symlinks=False))

    @rule(path=paths, datasync=st.booleans())
    def fsync(self, path: str, datasync: bool) -> None:
        sync = os.fdatasync if datasync else os.fsync
        self.both(lambda r: opened(r / path, os.O_RDONLY, sync))

    @rule(path=paths, atime=st.integers(0, 2**33), mtime=st.integers(0, 2**33))
    def utime(self, path: str, atime: int, mtime: int) -> None:
        # Explicit times must arrive exactly; compared here because the tree snapshot
        # leaves times out (creation times differ between the two trees).
        def op(root: Path) -> tuple[int, int]:
            os.utime(root / path, ns=(atime, mtime), follow_symlinks=False)
            st_ = os.lstat(root / path)
            return st_.st_atime_ns, st_.st_mtime_ns

        self.both(op)

    # -- descriptors held open across steps, while names come and go under them --
    @precondition(lambda self: len(self.open_fds) < 6)
    @rule(
        path=paths,
        flags=st.sampled_from(
            [
                os.O_RDONLY,
                os.O_WRONLY,
                os.O_RDWR,
                os.O_RDWR | os.O_APPEND,
                os.O_RDONLY | os.O_DIRECTORY,
            ]
        ),
    )
    def open_fd(self, path: str, flags: int) -> None:
        opened = [outcome(functools.partial(os.open, root / path, flags)) for root in self.roots]
        fds = [cast(int, value) for kind, value in opened if kind == "ok"]
        if len(fds) == 2:
            self.open_fds.append((fds[0], fds[1]))
            opened = [("ok", "a descriptor")] * 2  # the numbers may differ
        else:
            for fd in fds:
                os.close(fd)
        self._compare(opened[0], opened[1], depth=1)

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5), offset=st.integers(0, 20_000), data=st.binary(max_size=3000))
    def fd_write(self, index: int, offset: int, data: bytes) -> None:
        self.on_fds(index, lambda fd: os.pwrite(fd, data, offset))

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5), offset=st.integers(0, 30_000), size=st.integers(0, 5000))
    def fd_read(self, index: int, offset: int, size: int) -> None:
        self.on_fds(index, lambda fd: os.pread(fd, size, offset))

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5), size=st.integers(0, 30_000))
    def fd_truncate(self, index: int, size: int) -> None:
        self.on_fds(index, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5), datasync=st.booleans())
    def fd_sync(self, index: int, datasync: bool) -> None:
        self.on_fds(index, os.fdatasync if datasync else os.fsync)

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5))
    def fd_stat(self, index: int) -> None:
        def op(fd: int) -> tuple[int, int, int]:
            st_ = os.fstat(fd)
            return st_.st_mode, st_.st_size, st_.st_nlink

        self.on_fds(index, op)

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5))
    def fd_listdir(self, index: int) -> None:
        self.on_fds(index, lambda fd: sorted(os.listdir(fd)))

    @precondition(lambda self: bool(self.open_fds))
    @rule(index=st.integers(0, 5))
    def close_fd(self, index: int) -> None:
        pair = self.open_fds.pop(index % len(self.open_fds))
        self.history.append(f"close_fd({index})")
        for fd in pair:
            os.close(fd)

    @invariant()
    def churned(self) -> None:
        if self.churn is not None:
            self.churn()

    @invariant()
    def same_tree(self) -> None:
        assert snapshot(self.roots[0]) == snapshot(self.roots[1]), "\n".join(self.history)


def run_machine(
    mount_root: Path, plain_root: Path, examples: int, churn: Callable[[], None] | None = None
) -> None:
    machine = type(
        "Machine",
        (PassthroughMachine,),
        {
            "mount_root": mount_root,
            "plain_root": plain_root,
            "churn": None if churn is None else staticmethod(churn),
        },
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def _quick_with_other_engine(request: pytest.FixtureRequest, mount_engine: str) -> bool:
    return request.node.get_closest_marker("slow") is None and mount_engine != "blocking"


@pytest.fixture
def fs_root(request: pytest.FixtureRequest, mount_engine: str) -> Iterator[Path]:
    """A directory on the filesystem under test: the machine's own, or a fresh image."""
    kind = request.param
    if kind != "native" and _quick_with_other_engine(request, mount_engine):
        pytest.skip("loop images with this engine run in the slow suite (-m slow)")
    if kind == "native":
        path = scratch_dir("iofs-diff-")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    if not ROOT:
        pytest.skip(f"making a {kind} loop image needs root")
    mkfs = shutil.which(f"mkfs.{kind}")
    if mkfs is None:
        pytest.skip(f"mkfs.{kind} is not installed")
    with LoopFilesystem(kind, mkfs) as path:
        yield path


@pytest.fixture
def fuse_ok() -> None:
    if FUSE_UNAVAILABLE is not None:
        pytest.skip(FUSE_UNAVAILABLE)


#: The smallest descriptor budget (each example's tree has up to 8 inodes, so the cache
#: lets go all the time), inodes found again by file handle (as root) or by parent and
#: name; None: the default budget.
TINY = (MIN_FD_BUDGET, True)
TINY_BY_NAME = (MIN_FD_BUDGET, False)


@pytest.mark.usefixtures("fuse_ok")
@pytest.mark.parametrize(
    ("fs_root", "examples", "budget"),
    [
        ("native", 300, None),
        ("xfs", 100, None),
        ("btrfs", 100, None),
        pytest.param("native", 30, TINY, id="native-budget4"),
        pytest.param("native", 30, TINY_BY_NAME, id="native-budget4-by-name"),
        pytest.param("native", 3000, None, marks=pytest.mark.slow, id="native-long"),
        pytest.param("xfs", 1000, None, marks=pytest.mark.slow, id="xfs-long"),
        pytest.param("btrfs", 1000, None, marks=pytest.mark.slow, id="btrfs-long"),
        pytest.param("native", 1000, TINY, marks=pytest.mark.slow, id="native-long-budget4"),
        pytest.param(
            "native", 1000, TINY_BY_NAME, marks=pytest.mark.slow, id="native-long-budget4-by-name"
        ),
        pytest.param(
            "xfs", 300, TINY_BY_NAME, marks=pytest.mark.slow, id="xfs-long-budget4-by-name"
        ),
    ],
    indirect=["fs_root"],
)
def test_mount_behaves_like_the_backing_filesystem(
    fs_root: Path,
    examples: int,
    budget: tuple[int, bool] | None,
    mount_engine: str,
    request: pytest.FixtureRequest,
) -> None:
    """The state machine over every engine. The quick run gives the baseline engine the
    most examples; the others share its metadata path and get a tenth on native and
    the XFS/Btrfs images only in the slow run. With a tiny descriptor budget the inode
    table lets go of descriptors all the time and must find inodes again: the metadata
    path, run with the baseline engine only."""
    if budget is not None and mount_engine != "blocking":
        pytest.skip("the descriptor budget is the metadata path's: run with the blocking engine")
    if _quick_with_other_engine(request, mount_engine):
        examples //= 10
    backing, mountpoint, plain = fs_root / "backing", fs_root / "mnt", fs_root / "plain"
    for d in (backing, mountpoint, plain):
        d.mkdir()
    fd_budget, file_handles = budget or (None, True)
    mount = start_mount(
        backing,
        mountpoint,
        fs_root / "daemon.log",
        engine=mount_engine,
        fd_budget=fd_budget,
        file_handles=file_handles,
    )
    try:
        churn = None
        if budget is not None:
            ballast = mountpoint / "ballast"  # beside the cases, outside what is compared
            ballast.mkdir()
            files = [ballast / f"b{i}" for i in range(2 * MIN_FD_BUDGET)]
            for path in files:
                path.touch()

            def churn() -> None:  # listxattr always reaches the daemon's inode
                for path in files:
                    os.listxattr(path)

        run_machine(mountpoint, plain, examples, churn)
        if budget is not None:  # the budget was what was tested
            counters = mount.counters()
            assert counters["fd_evictions"] > 0 and counters["fd_reopens"] > 0, counters
            assert counters["fds_cached"] <= MIN_FD_BUDGET
    finally:
        finish_mount(mount)
