"""Inode numbers through the mount: a file's ``st_ino`` stays the same for as long as the
backing file lives, whatever the kernel forgets, and every name of a hard-linked file
shows the same one.

iofs reports its FUSE node ids as ``st_ino``. The kernel forgets the inodes it evicts
(memory pressure, ``drop_caches``, which other test runs on a shared machine write) and
looks them up again later: a node id counted up anew each time made the soak's tree check
see two names of one hard-linked file with different numbers ("hard-link groups differ"),
and would do the same to ``tar``, ``rsync -H``, ``du`` or ``find -samefile``.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs import syscalls
from iofs.fs import Filesystem
from iofs.inodes import DEVICE_SHIFT, MIN_FD_BUDGET, SPARE_NUMBERS, key_of

from .conftest import ROOT, Mount
from .test_fs_inprocess import CTX, RecordingEngine


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Filesystem]:
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    filesystem = Filesystem(root_fd, RecordingEngine())
    try:
        yield filesystem
    finally:
        filesystem.close()
        os.close(root_fd)


# -- in process: the kernel's forget, then a lookup of the other name ----------------------
@pytest.mark.trio
async def test_a_hard_link_keeps_its_number_after_the_kernel_forgets(
    fs: Filesystem, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "other").write_bytes(b"o")
    (tmp_path / "a").write_bytes(b"x")
    os.link(tmp_path / "a", tmp_path / "d" / "b")
    a = await fs.lookup(pyfuse3.ROOT_INODE, b"a", CTX)
    await fs.forget([(a.st_ino, 1)])  # the kernel evicted it: the daemon lets it go
    with pytest.raises(OSError, match="forgotten"):
        fs.inodes[a.st_ino]
    other = await fs.lookup(pyfuse3.ROOT_INODE, b"other", CTX)  # a new inode in between
    d = await fs.lookup(pyfuse3.ROOT_INODE, b"d", CTX)
    b = await fs.lookup(d.st_ino, b"b", CTX)
    assert b.st_ino == a.st_ino != other.st_ino
    assert (await fs.lookup(pyfuse3.ROOT_INODE, b"a", CTX)).st_ino == a.st_ino
    assert a.st_ino == os.lstat(tmp_path / "a").st_ino  # the backing number, as natively


@pytest.mark.trio
async def test_a_number_the_kernel_may_still_know_is_never_given_to_another_file(
    fs: Filesystem, tmp_path: Path
) -> None:
    """A removed file the kernel has not forgotten keeps its number: should the backing
    filesystem give that inode number to a new file meanwhile, the new file gets a spare
    number, and keeps it after the kernel forgets it until it is removed."""
    (tmp_path / "f").write_bytes(b"x")
    f = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
    key = key_of(os.lstat(tmp_path / "f"))
    await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)  # released; the kernel still knows it
    reused = fs.inodes.number_of(key)  # what a new file with f's backing number would get
    assert reused >= SPARE_NUMBERS and reused != f.st_ino
    await fs.forget([(f.st_ino, 1)])
    assert fs.inodes.number_of(key) == reused  # the new file's number stays its own
    assert fs.inodes.number_of((key[0], 1)) >= SPARE_NUMBERS  # 1 is the root's


def test_numbers_of_other_devices_and_of_numbers_that_do_not_fit(fs: Filesystem) -> None:
    root_dev = fs.inodes.root.key[0]
    assert fs.inodes.number_of((root_dev, 12345)) == 12345
    assert fs.inodes.number_of((root_dev + 1, 12345)) == 1 << DEVICE_SHIFT | 12345
    assert fs.inodes.number_of((root_dev + 2, 12345)) == 2 << DEVICE_SHIFT | 12345
    assert fs.inodes.number_of((root_dev + 1, 12345)) == 1 << DEVICE_SHIFT | 12345
    too_big = fs.inodes.number_of((root_dev, 1 << DEVICE_SHIFT))
    assert too_big >= SPARE_NUMBERS
    assert fs.inodes.number_of((root_dev, 1 << DEVICE_SHIFT)) == too_big  # kept
    assert fs.inodes.number_of((root_dev, 0)) not in (0, too_big)


def _new_file_with_number(directory: Path, number: int) -> Path | None:
    """Create files in *directory* until one gets the backing inode *number*, freed just
    before (ext4 gives the lowest free number of the directory's group to the next new
    file); remove the others. None if a process elsewhere took the number first."""
    made = []
    try:
        for attempt in range(64):
            path = directory / f"new{attempt}"
            path.write_bytes(b"new")
            if os.lstat(path).st_ino == number:
                return path
            made.append(path)
        return None
    finally:
        for path in made:
            path.unlink()


#: Tries at having a freed backing inode number given again, on a machine where other
#: processes create files on the same filesystem.
REUSE_TRIES = 5


@pytest.mark.trio
async def test_a_number_given_to_another_file_comes_with_another_generation(
    fs: Filesystem, tmp_path: Path
) -> None:
    """The kernel opens a handle taken through the mount only if the generation in it
    is that of the inode under its number: a new file given a removed one's number must
    have another generation. While the kernel knows an inode, its generation stays."""
    for _ in range(REUSE_TRIES):
        (tmp_path / "f").write_bytes(b"old")
        old = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        again = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
        assert (again.st_ino, again.generation) == (old.st_ino, old.generation)
        await fs.unlink(pyfuse3.ROOT_INODE, b"f", CTX)
        await fs.forget([(old.st_ino, 2)])  # the kernel let go of the removed file
        new_file = _new_file_with_number(tmp_path, old.st_ino)
        if new_file is not None:
            break
    else:
        pytest.fail("the backing filesystem never gave a freed inode number again")
    new = await fs.lookup(pyfuse3.ROOT_INODE, new_file.name.encode(), CTX)
    assert new.st_ino == old.st_ino
    assert new.generation != old.generation
    root = await fs.getattr(pyfuse3.ROOT_INODE, CTX)
    assert root.generation == 0  # the kernel made the root inode with generation 0


@pytest.mark.trio
async def test_a_number_the_daemon_forgot_is_stale_not_an_error(
    fs: Filesystem, tmp_path: Path
) -> None:
    """The kernel asks for ``.`` in a node id it forgot (open_by_handle_at of a handle
    taken through the mount): the answer is ESTALE, and nothing went wrong in the daemon."""
    (tmp_path / "f").write_bytes(b"x")
    f = await fs.lookup(pyfuse3.ROOT_INODE, b"f", CTX)
    await fs.forget([(f.st_ino, 1)])
    for ask in (
        lambda: fs.lookup(f.st_ino, b".", CTX),
        lambda: fs.getattr(f.st_ino, CTX),
        lambda: fs.open(f.st_ino, os.O_RDONLY, CTX),
    ):
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await ask()
        assert refused.value.errno == errno.ESTALE
    assert fs.counters()["unexpected_errors"] == 0


# -- in process, property-based: any sequence of lookups, forgets and changes --------------
NAMES = [b"a", b"b", b"c", b"d/a", b"d/b", b"d/c"]
names = st.integers(0, len(NAMES) - 1)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("lookup"), names),
        st.tuples(st.just("forget"), st.integers(0, 20)),
        st.tuples(st.just("create"), names),
        st.tuples(st.just("link"), names, names),
        st.tuples(st.just("unlink"), names),
        st.tuples(st.just("rename"), names, names),
    ),
    max_size=40,
)


class Kernel:
    """What the kernel knows: node id -> (lookup count, which file), and the rule that a
    backing file shows one number while it lives, however often it is forgotten."""

    def __init__(self, fs: Filesystem, root: Path) -> None:
        self.fs, self.root = fs, root
        self.known: dict[int, list[int]] = {}  # node id -> [lookups, file, generation]
        self.files: dict[tuple[int, int], int] = {}  # live backing key -> file
        self.numbers: dict[int, int] = {}  # file -> the number it showed first
        self.births = 0
        self.last_holder: dict[int, tuple[int, int]] = {}  # number -> (file, generation)

    def file_of(self, key: tuple[int, int]) -> int:
        if key not in self.files:
            self.births += 1
            self.files[key] = self.births
        return self.files[key]

    def reported(self, name: bytes, entry: pyfuse3.EntryAttributes) -> None:
        """The daemon answered *entry* for *name* (and counted a lookup)."""
        number, generation = entry.st_ino, entry.generation
        file = self.file_of(key_of(os.lstat(self.root / name.decode())))
        shown = self.numbers.setdefault(file, number)
        assert number == shown, f"{name!r}: number {number}, before {shown}"
        # The generation: the same while the kernel knows the number (a change would
        # make it take its inode for a stale one), another one once the number is given
        # to another file (else a handle of the one before would open the new one).
        before = self.last_holder.get(number)
        if before is not None and before[0] != file:
            assert generation != before[1], f"{name!r}: number {number} and its generation"
        self.last_holder[number] = (file, generation)
        count = self.known.setdefault(number, [0, file, generation])
        assert count[1] == file, f"{name!r}: number {number} is another file's"
        assert count[2] == generation, f"{name!r}: number {number} changed generation"
        count[0] += 1

    def settle(self) -> None:
        """Files whose last name is gone die: a new one may get their backing number."""
        alive = set()
        for directory in (self.root, self.root / "d"):
            for entry in os.scandir(directory):
                alive.add(key_of(entry.stat(follow_symlinks=False)))
        self.files = {k: f for k, f in self.files.items() if k in alive}

    async def parent(self, name: bytes) -> tuple[int, bytes]:
        directory, _, base = name.rpartition(b"/")
        if not directory:
            return pyfuse3.ROOT_INODE, base
        d = await self.fs.lookup(pyfuse3.ROOT_INODE, directory, CTX)
        self.reported(directory, d)
        return d.st_ino, base

    async def step(self, step: tuple[object, ...]) -> None:
        fs = self.fs
        match step:
            case ("lookup", int(i)):
                parent, base = await self.parent(NAMES[i])
                if (self.root / NAMES[i].decode()).exists():
                    self.reported(NAMES[i], await fs.lookup(parent, base, CTX))
            case ("forget", int(i)):
                if self.known:
                    number = sorted(self.known)[i % len(self.known)]
                    await fs.forget([(number, self.known.pop(number)[0])])
            case ("create", int(i)):
                parent, base = await self.parent(NAMES[i])
                if not (self.root / NAMES[i].decode()).exists():
                    flags = os.O_WRONLY | os.O_CREAT
                    info, entry = await fs.create(parent, base, 0o644, flags, CTX)
                    self.reported(NAMES[i], entry)
                    await fs.release(info.fh)
            case ("link", int(i), int(j)):
                source, target = self.root / NAMES[i].decode(), self.root / NAMES[j].decode()
                if source.exists() and not target.exists():
                    parent, base = await self.parent(NAMES[i])
                    node = await fs.lookup(parent, base, CTX)
                    self.reported(NAMES[i], node)
                    parent, base = await self.parent(NAMES[j])
                    self.reported(NAMES[j], await fs.link(node.st_ino, parent, base, CTX))
            case ("unlink", int(i)):
                if (self.root / NAMES[i].decode()).exists():
                    await fs.unlink(*await self.parent(NAMES[i]), CTX)
            case ("rename", int(i), int(j)):
                if (self.root / NAMES[i].decode()).exists():
                    old_parent, old = await self.parent(NAMES[i])
                    new_parent, new = await self.parent(NAMES[j])
                    await fs.rename(old_parent, old, new_parent, new, 0, CTX)
        self.settle()


@pytest.mark.parametrize("budget", [MIN_FD_BUDGET, 1024], ids=["tiny-budget", "budget"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps)
def test_a_file_shows_one_number_while_it_lives(
    budget: int, steps: list[tuple[object, ...]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="iofs-numbers-") as scratch:
        root = Path(scratch)
        (root / "d").mkdir()
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        fs = Filesystem(root_fd, RecordingEngine(), fd_budget=budget)
        try:
            kernel = Kernel(fs, root)

            async def run() -> None:
                for step in steps:
                    await kernel.step(step)

            trio.run(run)
        finally:
            fs.close()
            os.close(root_fd)


# -- through a real mount: the kernel evicts its inodes --------------------------------------
def _kernel_forgets_everything(mnt: Mount) -> None:
    """Make the kernel evict the mount's unused inodes (and so send FORGET for them), as
    memory pressure would; wait until the daemon knows only the root."""
    deadline = time.monotonic() + 10
    while True:
        # Again each time: a file closed just before may still be held until the daemon
        # has answered its (asynchronous) RELEASE, and a dropped dentry may free its
        # parent only on the next pass.
        Path("/proc/sys/vm/drop_caches").write_text("2")  # dentries and inodes, no data
        if mnt.counters()["inodes"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mnt.counters()["inodes"] == 1, "the kernel did not forget the mount's inodes"


@pytest.mark.skipif(not ROOT, reason="drop_caches needs root")
def test_hard_links_show_one_number_after_the_kernel_evicts_them(mnt: Mount, plain: Path) -> None:
    """What the soak's tree check met: the names of one file, stat'ed on either side of an
    eviction, must show one number (and the groups as on a plain directory)."""
    for tree in (mnt.mountpoint, plain):
        (tree / "d").mkdir()
        (tree / "a").write_bytes(b"x")
        os.link(tree / "a", tree / "d" / "b")
        (tree / "c").write_bytes(b"y")
    before = os.lstat(mnt.mountpoint / "a").st_ino
    _kernel_forgets_everything(mnt)
    os.lstat(mnt.mountpoint / "c")  # another file looked up first
    assert os.lstat(mnt.mountpoint / "d" / "b").st_ino == before
    assert os.lstat(mnt.mountpoint / "a").st_ino == before
    assert os.lstat(mnt.mountpoint / "c").st_ino != before

    def groups(tree: Path, between: Callable[[], None]) -> set[frozenset[str]]:
        """The hard-link groups by st_ino, as the soak's check and ``rsync -H`` find them,
        with *between* done after each stat."""
        by_number: dict[int, set[str]] = {}
        for name in ("a", "d/b", "c"):
            by_number.setdefault(os.lstat(tree / name).st_ino, set()).add(name)
            between()
        return {frozenset(names) for names in by_number.values()}

    evicting = groups(mnt.mountpoint, lambda: _kernel_forgets_everything(mnt))
    assert evicting == groups(plain, lambda: None) == {frozenset({"a", "d/b"}), frozenset({"c"})}


# -- through a real mount: file handles taken through the mount -----------------------------
def _handle_through(mnt: Mount, path: Path, *, opens: bytes | None = None) -> bytes:
    """name_to_handle_at of *path* on the mount: the kernel encodes node id and generation.
    With *opens*, check that the handle opens the file (its content) while a descriptor
    keeps the kernel from evicting the inode (other test runs write drop_caches)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        handle = syscalls.handle_of(fd)[0]
        if opens is not None:
            assert _read_by_handle(mnt.mountpoint, handle) == opens
        return handle
    finally:
        os.close(fd)


def _read_by_handle(mountpoint: Path, handle: bytes) -> bytes:
    """open_by_handle_at on the mount (needs CAP_DAC_READ_SEARCH), then read."""
    mount_fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = syscalls.open_by_handle(mount_fd, handle, os.O_RDONLY)
    finally:
        os.close(mount_fd)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def _stale(mnt: Mount, handle: bytes) -> None:
    with pytest.raises(OSError) as refused:
        _read_by_handle(mnt.mountpoint, handle)
    assert refused.value.errno == errno.ESTALE


@pytest.mark.skipif(not ROOT, reason="drop_caches and open_by_handle_at need root")
def test_a_handle_of_a_removed_file_does_not_open_the_file_given_its_number(mnt: Mount) -> None:
    """A handle of a file, taken through the mount, opens that file; once the file is
    removed, it must not open the new file the backing filesystem gave its number to
    (ESTALE), whether the kernel knows the new file (it checks the generation) or not
    (it asks the daemon for "." in the number)."""
    f = mnt.mountpoint / "f"
    for _ in range(REUSE_TRIES):
        f.write_bytes(b"old")
        number = os.lstat(f).st_ino
        handle = _handle_through(mnt, f, opens=b"old")
        f.unlink()
        _kernel_forgets_everything(mnt)  # the number is free again for a new file
        new_file = _new_file_with_number(mnt.mountpoint, number)
        if new_file is not None:
            break
    else:
        pytest.fail("the backing filesystem never gave a freed inode number again")
    assert new_file.read_bytes() == b"new"  # the kernel knows the new file under the number
    _stale(mnt, handle)
    _kernel_forgets_everything(mnt)
    _stale(mnt, handle)  # the daemon is asked for "." in a number it no longer knows
    assert mnt.counters()["unexpected_errors"] == 0


@pytest.mark.skipif(not ROOT, reason="drop_caches and open_by_handle_at need root")
def test_a_handle_of_a_forgotten_inode_is_stale_and_the_daemon_stays_clean(mnt: Mount) -> None:
    """The kernel does not know the handle's node id, so it asks the daemon for "." in it
    (FUSE's EXPORT_SUPPORT): the daemon no longer knows it either and answers ESTALE,
    with nothing in its log or its unexpected-error count (`finish_mount` reads the log)."""
    f = mnt.mountpoint / "f"
    f.write_bytes(b"x")
    handle = _handle_through(mnt, f)
    _kernel_forgets_everything(mnt)
    _stale(mnt, handle)
    assert mnt.counters()["unexpected_errors"] == 0
    assert f.read_bytes() == b"x"  # the file itself is fine
