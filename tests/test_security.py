"""Security through real mounts (issue 6).

- The daemon resolves every name relative to a handle and never follows a symlink, so
  no symlink or ``..`` in the backing tree, not even one swapped in during an
  operation, makes it touch anything outside. An inotify tripwire and a snapshot of a
  sentinel tree next to the backing directory prove it.
- Without allow_other only the mounting user gets in; with it, other users get what
  the kernel's permission checks give them on the backing filesystem; set-id bits and
  device nodes count only where the mount says suid or dev.
- Only the mount's owner or root may write the control attributes; reading them takes
  what listing the mount root takes.

The symlink tests put the backing directory, the mountpoint and a plain directory at
the same depth under three parents, each with a ``sentinel`` next to it::

    base/b/root  backing       base/b/sentinel  the real one: must never change
    base/m/root  mountpoint    base/m/sentinel  decoy
    base/p/root  plain         base/p/sentinel  decoy

A relative link such as ``../sentinel`` in the backing tree names the real sentinel
from the daemon's side, but the kernel follows it from the mountpoint, into a decoy.
So clients may follow relative links freely: only the daemon following a link itself
could reach the real sentinel. Absolute links name the real sentinel from both sides,
so they are only used with operations that do not follow them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
import trio
from pyfuse3 import FUSEError, RequestContext

from iofs import mounttable
from iofs.backends import EngineConfig, create_engine
from iofs.control_protocol import FAULTS_XATTR, MODE_XATTR, STATISTICS_XATTR
from iofs.fs import Filesystem

from .conftest import (
    ALL_MODES,
    FUSE_UNAVAILABLE,
    ROOT,
    Mount,
    MountFactory,
    finish_mount,
    mode_runs,
    needs_fuse,
    needs_root,
    race_beside_script,
    scratch_dir,
    start_mount,
)
from .differential import outcome, snapshot

pytestmark = needs_fuse

NOBODY = 65534
DAEMON_UID = 1  # "daemon" on Debian: a second ordinary user, with group 1

# -- acting as another user ---------------------------------------------------------------
#: Runs a list of operations as whoever starts it and prints their outcomes as JSON:
#: ``[op, *args]`` in, ``["ok", value]`` or ``["error", "ENAME"]`` out, in order.
PROBE = textwrap.dedent(
    """
    import errno, json, os, subprocess, sys

    def run(op, *a):
        if op == "read":
            with open(a[0], "rb") as f:
                return f.read().decode(errors="replace")
        if op == "write":
            fd = os.open(a[0], os.O_WRONLY | a[2])
            try:
                return os.write(fd, a[1].encode())
            finally:
                os.close(fd)
        if op == "create":
            os.close(os.open(a[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return None
        if op == "exec":
            return subprocess.run(a, capture_output=True, text=True, check=True).stdout
        if op == "listdir":
            return sorted(os.listdir(a[0]))
        if op == "stat":
            st = os.stat(a[0])
            return [oct(st.st_mode), st.st_uid, st.st_gid]
        if op == "getxattr":
            return len(os.getxattr(a[0], a[1]))
        if op == "setxattr":
            return os.setxattr(a[0], a[1], a[2].encode())
        if op == "utime":
            return os.utime(a[0], None if a[1] is None else (a[1], a[1]))
        if op == "link":
            return os.link(a[0], a[1])
        return getattr(os, op)(*a)

    results = []
    for call in json.loads(sys.argv[1]):
        try:
            results.append(["ok", run(*call)])
        except OSError as exc:
            results.append(["error", errno.errorcode.get(exc.errno, str(exc.errno))])
    print(json.dumps(results))
    """
)

Call = list[object]


def as_user(
    uid: int, argv: Sequence[str], timeout: float = 60, mount: Mount | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as *uid* (group *uid*, no supplementary groups).

    A process waiting for a FUSE request the daemon has taken cannot be killed, so on
    a timeout *mount*'s daemon is killed first (which aborts its requests); then
    `subprocess.TimeoutExpired` is raised.
    """
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    child = subprocess.Popen(
        ["setpriv", *ids, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if mount is not None:
            mount.daemon.kill()
        child.kill()
        child.communicate()
        raise
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def probe(uid: int, calls: Sequence[Call]) -> list[list[object]]:
    """The outcome of each call, made by *uid* in a process of its own."""
    result = as_user(uid, [sys.executable, "-c", PROBE, json.dumps(calls)])
    assert result.returncode == 0, result.stderr
    outcomes: list[list[object]] = json.loads(result.stdout)
    return outcomes


# -- watching a tree that nobody may touch ------------------------------------------------
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_IN_ALL_EVENTS = 0xFFF  # access, modify, attrib, close, open, move, create, delete...
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (+ name)


class Tripwire:
    """inotify watches on some directories: every open, read, write, attribute change,
    creation, removal or rename in them (or of them) is reported. stat(2) is not, but a
    stat changes nothing. *ignore* names (directory, entry) pairs that may be touched."""

    def __init__(self, directories: Sequence[Path], ignore: Sequence[tuple[Path, str]] = ()):
        self._fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._watches: dict[int, Path] = {}
        self._ignore = set(ignore)
        for directory in directories:
            wd = _libc.inotify_add_watch(self._fd, bytes(directory), _IN_ALL_EVENTS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._watches[wd] = directory

    def events(self) -> list[str]:
        """What happened since the watches were set, as "path: mask" lines."""
        seen: list[str] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                directory = self._watches.get(wd)
                if directory is not None and (directory, name) not in self._ignore:
                    seen.append(f"{directory / name}: {mask:#x}")

    def close(self) -> None:
        os.close(self._fd)


def fingerprint(root: Path) -> dict[str, object]:
    """Everything about a tree that a change would show: kinds, modes, owners, sizes,
    times (but atime), link counts, contents, link targets and xattrs."""
    nodes: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *sorted(dirnames + filenames)]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            xattrs = sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            )
            nodes[os.path.relpath(path, root)] = (
                oct(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_nlink,
                st.st_mtime_ns,
                st.st_ctime_ns,
                content,
                xattrs,
            )
    return nodes


# -- the layout of the symlink tests ------------------------------------------------------
SECRET = b"SENTINEL-SECRET: the daemon read this"
#: Names only the real sentinel has: a listing that shows one came from the daemon.
SENTINEL_ONLY = "sentinel-only"

#: Relative links (clients may follow them: from the mountpoint they lead to a decoy).
RELATIVE_LINKS = {
    "up": "..",
    "out": "../sentinel",
    "out_file": "../sentinel/secret",
    "dotted": "./d/../../sentinel",
    "deep/out": "../../sentinel",
    "deep/up": "../..",
    "deep/er/out": "../../../sentinel/sub",
    "dangling": "../sentinel/absent",
    "loop": "loop",
    "ping": "pong",
    "pong": "ping",
}
#: Paths through the relative links, for operations that follow them.
FOLLOWED_PATHS = [
    "out",
    "out/secret",
    "out/sub",
    "out/sub/file",
    "out/new",
    "out_file",
    "dotted/secret",
    "deep/out/secret",
    "deep/out/new",
    "deep/up/sentinel/secret",
    "up/sentinel/secret",
    "up/sentinel/new",
    "deep/er/out/file",
    "dangling",
]


def absolute_links(real_sentinel: Path) -> dict[str, str]:
    """Links that name the real sentinel (or the machine) whoever follows them."""
    return {
        "abs": str(real_sentinel),
        "abs_file": str(real_sentinel / "secret"),
        "abs_root": "/",
        "far": "../" * 16 + "etc/passwd",
    }


def fill_sentinel(sentinel: Path, secret: bytes, only: bool) -> None:
    sentinel.mkdir()
    (sentinel / "secret").write_bytes(secret)
    (sentinel / "sub").mkdir()
    (sentinel / "sub" / "file").write_bytes(secret)
    os.setxattr(sentinel / "secret", "user.mark", b"untouched")
    if only:
        (sentinel / SENTINEL_ONLY).write_bytes(secret)
    for path in (sentinel, sentinel / "sub"):
        path.chmod(0o777)  # writable by all: permissions would not stop a stray write


def fill_hostile_tree(root: Path, real_sentinel: Path) -> None:
    root.mkdir()
    root.chmod(0o777)
    (root / "f").write_bytes(b"inside")
    (root / "d").mkdir()
    (root / "deep" / "er").mkdir(parents=True)
    for name, target in {**RELATIVE_LINKS, **absolute_links(real_sentinel)}.items():
        os.symlink(target, root / name)


@dataclass
class Hostile:
    base: Path
    mount: Mount
    plain: Path
    sentinel: Path  # the real one, next to the backing directory
    tripwire: Tripwire
    before: dict[str, object] = field(default_factory=dict)

    def assert_untouched(self) -> None:
        """Nothing happened to the real sentinel: no event, no difference."""
        events = self.tripwire.events()
        assert not events, "the daemon touched the tree outside the backing directory:\n" + (
            "\n".join(events[:20])
        )
        assert fingerprint(self.sentinel) == self.before
        assert self.mount.counters()["unexpected_errors"] == 0


@pytest.fixture(params=ALL_MODES)
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    """A mount of a backing tree full of hostile symlinks, in each mode."""
    if FUSE_UNAVAILABLE is not None:
        pytest.skip(FUSE_UNAVAILABLE)
    mode: str = request.param
    reason = mode_runs(mode)
    if reason is not None:
        pytest.skip(f"mode {mode} cannot run here: {reason}")
    base = scratch_dir("iofs-hostile-")
    try:
        for side in "bmp":
            (base / side).mkdir()
            (base / side).chmod(0o755)
            fill_sentinel(
                base / side / "sentinel", SECRET if side == "b" else b"decoy", side == "b"
            )
        sentinel = base / "b" / "sentinel"
        fill_hostile_tree(base / "b" / "root", sentinel)
        fill_hostile_tree(base / "p" / "root", sentinel)
        (base / "m" / "root").mkdir()
        mount = start_mount(
            base / "b" / "root",
            base / "m" / "root",
            base / "daemon.log",
            ("allow_other",) if ROOT else (),  # for the tests that act as nobody
            engine=None,
            mode=mode,
        )
        try:
            before = fingerprint(sentinel)
            # The daemon opens the backing directory itself all the time (b/root).
            watched = [base / "b", sentinel, sentinel / "sub"]
            tripwire = Tripwire(watched, ignore=[(base / "b", "root")])
            try:
                yield Hostile(base, mount, base / "p" / "root", sentinel, tripwire, before)
            finally:
                tripwire.close()
        finally:
            finish_mount(mount)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _nofollow_ops(link: str) -> list[tuple[str, Callable[[Path], object]]]:
    """Operations on the link itself: each hands the daemon the link's own inode or
    name. All of them must give what they give on a plain directory."""

    def via_handle(root: Path, use: Callable[[bytes], object]) -> object:
        # /proc/self/fd/N of an O_PATH descriptor reaches the link itself.
        fd = os.open(root / link, os.O_PATH | os.O_NOFOLLOW)
        try:
            return use(b"/proc/self/fd/%d" % fd)
        finally:
            os.close(fd)

    def lstat(path: Path) -> object:
        st = os.lstat(path)
        return stat.S_IFMT(st.st_mode), st.st_size, st.st_uid, st.st_nlink

    ops: list[tuple[str, Callable[[Path], object]]] = [
        ("lstat", lambda r: lstat(r / link)),
        ("readlink", lambda r: os.readlink(r / link)),
        ("open nofollow", lambda r: os.open(r / link, os.O_RDONLY | os.O_NOFOLLOW)),
        ("create excl", lambda r: os.open(r / link, os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
        ("mkdir", lambda r: os.mkdir(r / link)),
        ("mkfifo", lambda r: os.mkfifo(r / link)),
        ("symlink over", lambda r: os.symlink("x", r / link)),
        ("utime", lambda r: os.utime(r / link, ns=(10**9, 2 * 10**9), follow_symlinks=False)),
        (
            "trusted xattr",
            lambda r: os.setxattr(r / link, "trusted.t", b"v", follow_symlinks=False),
        ),
        ("user xattr", lambda r: os.setxattr(r / link, "user.t", b"v", follow_symlinks=False)),
        ("list xattrs", lambda r: sorted(os.listxattr(r / link, follow_symlinks=False))),
        ("handle chmod", lambda r: via_handle(r, lambda p: os.chmod(p, 0o600))),
        ("handle chown", lambda r: via_handle(r, lambda p: os.chown(p, 4321, 4321))),
        ("handle truncate", lambda r: via_handle(r, lambda p: os.truncate(p, 0))),
        ("handle open", lambda r: via_handle(r, lambda p: os.open(p, os.O_RDONLY))),
        ("handle open w", lambda r: via_handle(r, lambda p: os.open(p, os.O_WRONLY | os.O_TRUNC))),
        ("handle utime", lambda r: via_handle(r, lambda p: os.utime(p, ns=(3, 4 * 10**9)))),
        ("handle xattr", lambda r: via_handle(r, lambda p: os.setxattr(p, "trusted.h", b"1"))),
        ("handle listdir", lambda r: via_handle(r, os.listdir)),
        ("lchown", lambda r: os.chown(r / link, 1234, 1234, follow_symlinks=False)),
        ("hard link", lambda r: os.link(r / link, r / f"{link}.hard", follow_symlinks=False)),
        ("lstat again", lambda r: (lstat(r / link), os.lstat(r / link).st_mtime_ns)),
        ("rename link", lambda r: os.rename(r / f"{link}.hard", r / f"{link}.moved")),
        ("unlink link", lambda r: os.unlink(r / f"{link}.moved")),
    ]
    if RELATIVE_LINKS.get(link) in ("loop", "ping", "pong"):
        # Following a loop stays inside the tree: ELOOP on both sides.
        ops += [
            ("stat", lambda r: os.stat(r / link)),
            ("open", lambda r: os.open(r / link, os.O_RDONLY)),
            ("chmod", lambda r: os.chmod(r / link, 0o777)),
            ("truncate", lambda r: os.truncate(r / link, 0)),
            ("mkdir below", lambda r: os.mkdir(r / link / "x")),
            ("listdir", lambda r: os.listdir(r / link)),
        ]
    return ops


def _followed_ops(path: str) -> list[tuple[str, Callable[[Path], object]]]:
    """Operations the kernel resolves through the relative links (into a decoy)."""

    def write(target: Path, flags: int) -> int:
        fd = os.open(target, os.O_WRONLY | flags, 0o644)
        try:
            return os.write(fd, b"written through a link")
        finally:
            os.close(fd)

    def fresh(root: Path, name: str) -> Path:
        source = root / f"fresh-{name}"
        source.write_bytes(b"fresh")
        return source

    tag = path.replace("/", "_")
    return [
        ("stat", lambda r: os.stat(r / path).st_size),
        ("read", lambda r: (r / path).read_bytes()),
        ("listdir", lambda r: sorted(os.listdir(r / path))),
        ("write", lambda r: write(r / path, os.O_CREAT | os.O_TRUNC)),
        ("append", lambda r: write(r / path, os.O_APPEND)),
        ("chmod", lambda r: os.chmod(r / path, 0o666)),
        ("chown", lambda r: os.chown(r / path, 4242, 4242)),
        ("truncate", lambda r: os.truncate(r / path, 1)),
        ("utime", lambda r: os.utime(r / path, ns=(5, 6))),
        ("user xattr", lambda r: os.setxattr(r / path, "user.t", b"through")),
        ("get xattr", lambda r: os.getxattr(r / path, "user.mark")),
        ("mkdir", lambda r: os.mkdir(r / path / "made")),
        ("mkfifo", lambda r: os.mkfifo(r / path / "fifo")),
        ("symlink", lambda r: os.symlink("x", r / path / "link")),
        ("link into", lambda r: os.link(fresh(r, tag + "l"), r / path / "linked")),
        ("rename into", lambda r: os.rename(fresh(r, tag + "r"), r / path / "renamed")),
        ("unlink below", lambda r: os.unlink(r / path / "file")),
        ("rmdir below", lambda r: os.rmdir(r / path / "made")),
    ]


def test_hostile_symlinks_never_lead_the_daemon_outside(hostile: Hostile) -> None:
    mnt, plain = hostile.mount.mountpoint, hostile.plain
    links = [*RELATIVE_LINKS, *absolute_links(hostile.sentinel)]
    differences = []
    for link in links:
        for what, op in _nofollow_ops(link):
            on_mount, on_plain = outcome(partial(op, mnt)), outcome(partial(op, plain))
            for result in (on_mount, on_plain):
                if (
                    result[0] == "ok"
                    and isinstance(result[1], int)
                    and what.startswith(("open", "create", "handle open"))
                ):
                    os.close(result[1])  # a descriptor (the test expects none)
            if on_mount != on_plain:
                differences.append(f"{what} {link}: mount {on_mount}, plain {on_plain}")
    assert not differences, "\n".join(differences)

    seen: list[object] = []
    for path in FOLLOWED_PATHS:
        for _, op in _followed_ops(path):
            seen.append(outcome(partial(op, mnt)))
    listing = [sorted(os.listdir(d)) for d in (mnt, mnt / "deep", mnt / "deep" / "er")]
    text = repr([*seen, *listing])
    assert SECRET.decode() not in text and SENTINEL_ONLY not in text
    # The clients' writes through the links did land, in the decoy next to the mount.
    decoy = hostile.base / "m" / "sentinel"
    for name in ("new", "secret"):
        assert (decoy / name).read_bytes() == b"w"  # written, then truncated to 1 byte
    hostile.assert_untouched()


#: Swaps names in the backing tree as fast as it can, for argv[2] seconds:
#: - ``victim`` (a directory) with ``victim.swap`` (a link to ../sentinel), atomically,
#:   and ``deep/victim`` with a link to ../../sentinel;
#: - renames a link to ../sentinel/secret over ``victim_file``, then a file again;
#: - makes ``fresh`` appear as a link out and disappear again (create's race).
#: Prints how many rounds it made.
SWAPPER = textwrap.dedent(
    """
    import contextlib, os, shutil, sys, time
    from iofs.syscalls import RENAME_EXCHANGE, renameat2

    os.chdir(sys.argv[1])
    end = time.monotonic() + float(sys.argv[2])
    rounds = 0
    while time.monotonic() < end:
        for parent, link in ((".", "../sentinel"), ("deep", "../../sentinel")):
            victim, swap = f"{parent}/victim", f"{parent}/victim.swap"
            with contextlib.suppress(OSError):
                renameat2(-100, victim.encode(), -100, swap.encode(), RENAME_EXCHANGE)
        with contextlib.suppress(FileExistsError):
            os.symlink("../sentinel/secret", "victim_file.tmp")
        os.rename("victim_file.tmp", "victim_file")
        with open("victim_file.tmp", "wb") as f:
            f.write(b"a file again")
        os.rename("victim_file.tmp", "victim_file")
        with contextlib.suppress(FileExistsError):
            os.symlink("../sentinel/secret", "fresh")
        time.sleep(0.0001)
        try:
            os.unlink("fresh")
        except IsADirectoryError:
            shutil.rmtree("fresh", ignore_errors=True)
        except FileNotFoundError:
            pass
        rounds += 1
    print(rounds)
    """
)

RACED_PATHS = [
    "victim",
    "victim/f",
    "victim/d",
    "victim/new",
    "deep/victim/f",
    "deep/victim/new",
    "victim_file",
    "fresh",
]


def _prepare_victims(root: Path) -> None:
    for parent, link in ((root, "../sentinel"), (root / "deep", "../../sentinel")):
        (parent / "victim").mkdir()
        (parent / "victim" / "f").write_bytes(b"inside")
        (parent / "victim" / "d").mkdir()
        os.symlink(link, parent / "victim.swap")
    (root / "victim_file").write_bytes(b"a file")


def _hammer(mnt: Path, stop: threading.Event, seed: int, results: list[object]) -> None:
    """Operations through the raced paths until *stop*; records every outcome."""
    rng = random.Random(seed)
    counter = 0

    def fresh() -> Path:
        nonlocal counter
        counter += 1
        source = mnt / f"own-{seed}-{counter}"
        source.write_bytes(b"own")
        return source

    def write(path: Path, flags: int) -> bytes:
        fd = os.open(path, os.O_RDWR | flags, 0o644)
        try:
            os.write(fd, b"hammered")
            return os.pread(fd, 100, 0)
        finally:
            os.close(fd)

    ops: list[Callable[[Path], object]] = [
        lambda p: write(p, os.O_CREAT),
        lambda p: write(p, os.O_CREAT | os.O_TRUNC),
        lambda p: p.read_bytes(),
        lambda p: sorted(os.listdir(p)),
        lambda p: os.mkdir(p / "m"),
        lambda p: os.rmdir(p / "m"),
        lambda p: os.rename(fresh(), p / "renamed"),
        lambda p: os.link(fresh(), p / "linked"),
        lambda p: os.symlink("target", p / "sym"),
        lambda p: os.chmod(p, 0o755),
        lambda p: os.truncate(p, 3),
        lambda p: os.setxattr(p, "user.h", b"1"),
        lambda p: os.getxattr(p, "user.mark"),
        lambda p: os.utime(p, ns=(7, 8)),
        lambda p: os.mkfifo(p / "fifo"),
        lambda p: os.stat(p).st_mode,
    ]
    # Names below the victims may also be removed or replaced (the victims themselves
    # stay, so that the swapper keeps swapping a directory with a link).
    below = [p for p in RACED_PATHS if "/" in p]
    removals: list[Callable[[Path], object]] = [os.unlink, lambda p: os.rename(fresh(), p)]
    while not stop.is_set():
        if rng.random() < 0.1:
            op, path = rng.choice(removals), mnt / rng.choice(below)
        else:
            op, path = rng.choice(ops), mnt / rng.choice(RACED_PATHS)
        results.append(outcome(partial(op, path)))


def test_symlinks_swapped_in_during_operations(hostile: Hostile) -> None:
    """A backing directory swapped with a link out, again and again, under load."""
    backing, mnt = hostile.mount.backing, hostile.mount.mountpoint
    _prepare_victims(backing)
    seconds = 1.2
    stop = threading.Event()
    results: list[object] = []
    hammers = [threading.Thread(target=_hammer, args=(mnt, stop, seed, results)) for seed in (1, 2)]
    out = race_beside_script(SWAPPER, [str(backing), str(seconds)], hammers, stop)
    assert int(out) > 10, "the swapper did not run"
    assert len(results) > 100
    text = repr(results)
    assert SECRET.decode() not in text and SENTINEL_ONLY not in text
    hostile.assert_untouched()
    (mnt / "after").write_bytes(b"still serving")
    assert (backing / "after").read_bytes() == b"still serving"


#: Makes argv[1] appear and disappear for argv[3] seconds as argv[2]: a link out of
#: the backing tree, root's private file (which must keep its content), or a FIFO.
#: Prints how often root's file was found changed.
INTRUDER = textwrap.dedent(
    """
    import os, sys, time
    path, kind, end = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
    changed = 0
    while time.monotonic() < end:
        mine = None  # the inode of root's file, if this round made it
        try:
            if kind == "link":
                os.symlink("../sentinel/secret", path)
            elif kind == "fifo":
                os.mkfifo(path, 0o600)  # nobody may not open it: no reader, no writer
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, b"root's")
                mine = os.fstat(fd).st_ino
                os.close(fd)
        except FileExistsError:
            pass
        time.sleep(0.0002)
        try:
            if mine is not None and os.lstat(path).st_ino == mine:
                with open(path, "rb") as f:
                    changed += f.read() != b"root's"
            os.unlink(path)
        except FileNotFoundError:
            pass
        time.sleep(0.0002)
    print(changed)
    """
)

#: Opens argv[1] to create-or-append for argv[2] seconds; prints the errnos it got.
CREATOR = textwrap.dedent(
    """
    import errno, json, os, sys, time
    path, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
    errors, opened = {}, 0
    while time.monotonic() < end:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        except OSError as exc:
            name = errno.errorcode[exc.errno]
            errors[name] = errors.get(name, 0) + 1
            continue
        opened += 1
        try:
            os.write(fd, b"nobody's")
        finally:
            os.close(fd)
    print(json.dumps({"opened": opened, "errors": errors}))
    """
)


@needs_root
@pytest.mark.parametrize("hostile", ["uncached"], indirect=True)
@pytest.mark.parametrize("kind", ["link", "file", "fifo"])
def test_create_racing_another_node_gets_the_kernels_checks(hostile: Hostile, kind: str) -> None:
    """Nobody's open(O_CREAT) while the name appears between the kernel's lookup and the
    create: the daemon (root) must not open the new node in the caller's place, which
    would follow a link out, write root's 0600 file, or block the loop on a FIFO. Only
    in the uncached mode: with lookups never cached, nearly every open looks the name
    up afresh and the race is won within a second (create is metadata: every mode
    shares this path)."""
    backing, mnt = hostile.mount.backing, hostile.mount.mountpoint
    seconds = "1.0"
    intruder = subprocess.Popen(
        [sys.executable, "-c", INTRUDER, str(backing / "x"), kind, seconds],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        argv = [sys.executable, "-c", CREATOR, str(mnt / "x"), seconds]
        creator = as_user(NOBODY, argv, timeout=30, mount=hostile.mount)
    except subprocess.TimeoutExpired:
        pytest.fail("nobody's opens stopped returning: the daemon is blocked")
    finally:
        changed, _ = intruder.communicate(timeout=30)
    assert creator.returncode == 0, creator.stderr
    report = json.loads(creator.stdout)
    assert int(changed) == 0, "nobody wrote into root's private file"
    # ESTALE: the kernel's second look found the race again (rare).
    assert set(report["errors"]) <= {"EACCES", "ENOENT", "ESTALE"}
    assert report["opened"] > 0
    hostile.assert_untouched()


# -- create's race, without the kernel --------------------------------------------------
@dataclass
class FakeContext:
    uid: int = NOBODY
    gid: int = NOBODY
    pid: int = os.getpid()
    umask: int = 0o022


@pytest.mark.trio
async def test_create_never_opens_a_node_that_appeared_since_the_lookup(tmp_path: Path) -> None:
    """The same race made certain: create() finds a link, a FIFO, a private file."""
    backing, outside = tmp_path / "backing", tmp_path / "outside"
    backing.mkdir()
    outside.write_bytes(b"outside")
    os.symlink("../outside", backing / "link")
    os.mkfifo(backing / "fifo")
    (backing / "private").write_bytes(b"root's")
    (backing / "private").chmod(0o600)
    root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY)
    fs = Filesystem(root_fd, create_engine("blocking", EngineConfig()))
    ctx = cast(RequestContext, FakeContext())
    try:
        for name in (b"link", b"fifo", b"private"):
            for flags in (os.O_WRONLY | os.O_TRUNC, os.O_RDONLY):
                with pytest.raises(FUSEError) as info:
                    await fs.create(pyfuse3.ROOT_INODE, name, 0o644, flags, ctx)
                assert info.value.errno == errno.ESTALE  # the kernel looks again
            with pytest.raises(FUSEError) as info:
                flags = os.O_WRONLY | os.O_EXCL
                await fs.create(pyfuse3.ROOT_INODE, name, 0o644, flags, ctx)
            assert info.value.errno == errno.EEXIST
        assert fs.counters()["open_files"] == 0
    finally:
        fs.close()
        os.close(root_fd)
    assert outside.read_bytes() == b"outside"
    assert (backing / "private").read_bytes() == b"root's"


# -- who may use the mount -------------------------------------------------------------
# These tests run in one mode: the permission checks are the kernel's (default_permissions)
# and the control interface's, before any request reaches an engine.


@needs_root
def test_without_allow_other_only_the_mounting_user_gets_in(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=())
    mp = mnt.mountpoint
    (mp / "public").write_bytes(b"for everyone")
    (mp / "public").chmod(0o644)
    mp.chmod(0o777)
    calls: list[Call] = [
        ["stat", str(mp)],
        ["listdir", str(mp)],
        ["read", str(mp / "public")],
        ["create", str(mp / "new")],
        ["getxattr", str(mp), STATISTICS_XATTR.decode()],
        ["getxattr", str(mp), MODE_XATTR.decode()],
        ["setxattr", str(mp), MODE_XATTR.decode(), "xfs"],
        ["setxattr", str(mp), FAULTS_XATTR.decode(), "eio=1"],
    ]
    for uid in (NOBODY, DAEMON_UID):
        assert probe(uid, calls) == [["error", "EACCES"]] * len(calls)
    assert json.loads(os.getxattr(mp, MODE_XATTR))["spec"] == "blocking"
    assert json.loads(os.getxattr(mp, FAULTS_XATTR))["spec"] == "off"
    assert not (mnt.backing / "new").exists()


def _permission_tree(root: Path) -> None:
    """Files of root, nobody and daemon with the modes that make the checks bite."""
    root.chmod(0o755)

    def node(name: str, mode: int, uid: int = 0, gid: int = 0, data: bytes = b"") -> None:
        path = root / name
        if name.endswith("/"):
            path.mkdir()
        else:
            path.write_bytes(data or name.encode())
        os.chown(path, uid, gid)
        path.chmod(mode)

    node("root600", 0o600)
    node("root644", 0o644)
    node("root640", 0o640, gid=DAEMON_UID)  # readable by group daemon
    node("nobody600", 0o600, NOBODY, NOBODY)
    node("nobody644", 0o644, NOBODY, NOBODY)
    node("closed/", 0o700)
    node("closed/f", 0o644)
    node("traverse/", 0o711)
    node("traverse/f", 0o644)
    node("sticky/", 0o1777)
    node("sticky/rootfile", 0o666)
    node("sticky/nobodyfile", 0o644, NOBODY, NOBODY)
    node("open/", 0o777)
    node("open/rootfile", 0o644)


def _permission_calls(root: Path, uid: int) -> list[Call]:
    r = str(root)
    return [
        ["read", f"{r}/root600"],
        ["read", f"{r}/root644"],
        ["read", f"{r}/root640"],
        ["read", f"{r}/nobody600"],
        ["write", f"{r}/root644", "x", 0],
        ["write", f"{r}/root644", "x", os.O_APPEND],
        ["write", f"{r}/nobody644", "mine", os.O_APPEND],
        ["truncate", f"{r}/root644", 0],
        ["chmod", f"{r}/root644", 0o666],
        ["chmod", f"{r}/nobody644", 0o664],
        ["chown", f"{r}/root644", uid, uid],
        ["chown", f"{r}/nobody644", DAEMON_UID, -1],
        ["chown", f"{r}/nobody644", -1, 0],
        ["chown", f"{r}/nobody644", -1, NOBODY],
        ["utime", f"{r}/root644", 12345],
        ["utime", f"{r}/root644", None],
        ["utime", f"{r}/nobody644", 12345],
        ["setxattr", f"{r}/root644", "user.x", "1"],
        ["setxattr", f"{r}/nobody644", "user.x", "1"],
        ["getxattr", f"{r}/nobody644", "user.x"],
        ["listdir", f"{r}/closed"],
        ["stat", f"{r}/closed/f"],
        ["listdir", f"{r}/traverse"],
        ["read", f"{r}/traverse/f"],
        ["create", f"{r}/new-{uid}"],
        ["mkdir", f"{r}/closed/x-{uid}"],
        ["unlink", f"{r}/sticky/rootfile"],
        ["rename", f"{r}/sticky/rootfile", f"{r}/sticky/taken-{uid}"],
        ["write", f"{r}/sticky/rootfile", "anyone", os.O_APPEND],
        ["link", f"{r}/root600", f"{r}/open/hard-{uid}"],
        ["symlink", "../root600", f"{r}/open/soft-{uid}"],
        ["read", f"{r}/open/soft-{uid}"],
        ["create", f"{r}/open/made-{uid}"],
        ["chmod", f"{r}/open/made-{uid}", 0o4755],
        ["stat", f"{r}/open/made-{uid}"],
        ["unlink", f"{r}/open/rootfile"],
    ]


@needs_root
def test_with_allow_other_other_users_get_what_the_backing_gives(
    mount_factory: MountFactory, plain: Path
) -> None:
    mnt = mount_factory(options=("allow_other",))
    for root in (mnt.mountpoint, plain):
        _permission_tree(root)
    for uid in (NOBODY, DAEMON_UID):
        on_mount = probe(uid, _permission_calls(mnt.mountpoint, uid))
        on_plain = probe(uid, _permission_calls(plain, uid))
        assert on_mount == on_plain, f"uid {uid}"
        if uid == NOBODY:  # and the checks do bite
            assert on_mount[:4] == [
                ["error", "EACCES"],
                ["ok", "root644"],
                ["error", "EACCES"],
                ["ok", "nobody600"],
            ]
            assert on_mount[8] == ["error", "EPERM"]  # chmod of root's file
            assert on_mount[10] == ["error", "EPERM"]  # chown of root's file
    assert snapshot(mnt.backing) == snapshot(plain)


@needs_root
def test_set_id_bits_and_devices_count_only_where_the_mount_says(
    mount_factory: MountFactory,
) -> None:
    """libfuse mounts nosuid,nodev unless told suid or dev (only root may)."""
    effective: dict[str, object] = {}
    for options in [("allow_other",), ("allow_other", "nosuid"), ("allow_other", "suid")]:
        mnt = mount_factory(options=options)
        mp = mnt.mountpoint
        mp.chmod(0o755)
        shutil.copy("/usr/bin/id", mp / "id")
        os.chmod(mp / "id", 0o4755)  # set-user-ID root
        os.mknod(mp / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        entry = mounttable.find(mp)
        assert entry is not None
        flags = entry.options.split(",")
        outcomes = probe(
            NOBODY, [["exec", str(mp / "id"), "-u"], ["write", str(mp / "null"), "x", 0]]
        )
        effective[options[-1]] = (outcomes, "nosuid" in flags, "nodev" in flags)
    nobody_ran, root_ran = ["ok", f"{NOBODY}\n"], ["ok", "0\n"]
    no_device = ["error", "EACCES"]
    assert effective == {
        "allow_other": ([nobody_ran, no_device], True, True),
        "nosuid": ([nobody_ran, no_device], True, True),
        "suid": ([root_ran, no_device], False, True),
    }


# -- the control interface ----------------------------------------------------------------
CONTROL_READS = [STATISTICS_XATTR, MODE_XATTR, FAULTS_XATTR]
CONTROL_WRITES = [(MODE_XATTR, "xfs"), (FAULTS_XATTR, "eio=1"), (STATISTICS_XATTR, "{}")]


@needs_root
def test_only_the_owner_or_root_may_write_control_attributes(
    mount_factory: MountFactory,
) -> None:
    """Other users, for each mode of the mount root: with write permission on it the
    kernel lets their setxattr through and the daemon refuses it (EPERM); without, the
    kernel refuses (EACCES). Reading is reading the root. Extends test_modes' check
    (nobody, root 0777, iofs.mode) to every control attribute, root mode and user."""
    mnt = mount_factory(options=("allow_other",))
    mp = mnt.mountpoint
    calls: list[Call] = [["getxattr", str(mp), name.decode()] for name in CONTROL_READS]
    calls += [["setxattr", str(mp), name.decode(), value] for name, value in CONTROL_WRITES]
    readable = [["ok", "?"]] * len(CONTROL_READS)
    for root_mode, reads, writes in [
        (0o777, readable, "EPERM"),
        (0o755, readable, "EACCES"),
        (0o700, [["error", "EACCES"]] * len(CONTROL_READS), "EACCES"),
    ]:
        mp.chmod(root_mode)
        for uid in (NOBODY, DAEMON_UID):
            got = probe(uid, calls)
            got_reads = [[kind, "?"] if kind == "ok" else [kind, v] for kind, v in got[:3]]
            assert got_reads == reads, (oct(root_mode), uid)
            assert got[3:] == [["error", writes]] * len(CONTROL_WRITES), (oct(root_mode), uid)
        assert json.loads(os.getxattr(mp, MODE_XATTR))["spec"] == "blocking"
        assert json.loads(os.getxattr(mp, FAULTS_XATTR))["spec"] == "off"
    # The owner (root here) still may, whatever the root's mode.
    os.setxattr(mp, FAULTS_XATTR, b"off")
    os.setxattr(mp, MODE_XATTR, b"nonblocking")
    assert json.loads(os.getxattr(mp, MODE_XATTR))["spec"] == "nonblocking"
    log = mnt.log_text()
    assert "may not switch the mode" in log and "may not set fault injection" in log
    mp.chmod(0o755)


@pytest.mark.trio
async def test_an_ordinary_owner_may_write_control_attributes_others_may_not(
    tmp_path: Path,
) -> None:
    """The owner rule with an owner that is not root (mounting as another user needs
    /dev/fuse, which only root may open here: so the operations are called directly)."""
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    fs = Filesystem(root_fd, create_engine("blocking", EngineConfig()))
    fs.owner = 4242

    def ctx(uid: int) -> RequestContext:
        return cast(RequestContext, FakeContext(uid=uid, gid=uid))

    async def write(uid: int, name: bytes, value: bytes) -> int | None:
        try:
            await fs.setxattr(pyfuse3.ROOT_INODE, name, value, ctx(uid))
        except FUSEError as exc:
            return exc.errno
        return None

    try:
        async with trio.open_nursery() as nursery:
            fs.start(nursery)
            assert await write(4343, MODE_XATTR, b"btrfs") == errno.EPERM
            assert await write(4343, FAULTS_XATTR, b"eio=1") == errno.EPERM
            assert fs.setting.mode == "blocking" and not fs.faults.armed
            assert await write(4242, MODE_XATTR, b"btrfs") is None
            assert await write(0, MODE_XATTR, b"nonblocking") is None
            assert await write(4242, FAULTS_XATTR, b"eio=1,ops=fsync") is None
            assert fs.faults.armed
            assert await write(0, FAULTS_XATTR, b"off") is None
            assert await write(4242, STATISTICS_XATTR, b"{}") == errno.EPERM
            assert fs.setting.mode == "nonblocking"
            await fs.aclose()
            nursery.cancel_scope.cancel()
    finally:
        fs.close()
        os.close(root_fd)
