"""No mode may break an application: the same application-level operations give the
same results in every mode, and across a live switch between any two modes, as in a
plain directory.

The operations are what databases and tools do: a shared mapping written, msync'ed
and read back through read(); an SQLite database in WAL mode (its -shm file is mapped
shared), several transactions, a reopen and ``PRAGMA integrity_check``; O_DIRECT;
O_APPEND; fallocate; xattrs. The one combination that cannot work, shared mmap of a
file opened with direct_io on a transport that did not negotiate
FUSE_DIRECT_IO_ALLOW_MMAP (`iofs.modes.SHARED_MMAP_LIMIT`), must fail exactly as
documented: mmap answers ENODEV, SQLite SQLITE_IOERR_SHMMAP, and a switch into such
a setting while a file is mapped shared is refused (EBUSY, one line from `iofs mode`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import mmap
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs.control_protocol import MODE_XATTR
from iofs.mappings import parse_device, shared_mappings
from iofs.modes import CACHINGS, MODES, parse_setting
from iofs.transport import default_transport

from .conftest import ALL_MODES, Mount, MountFactory, mode_runs, needs_fuse

pytestmark = needs_fuse

PAGE = mmap.PAGESIZE
MAPPED_SIZE = 16 * PAGE
DIRECT_BLOCK = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 1
_EOPNOTSUPP = errno.errorcode[errno.EOPNOTSUPP]  # "ENOTSUP": the same number

Outcome = tuple[str, Any]


def outcome(action: Callable[[], Any]) -> Outcome:
    """("ok", value), or the error as an application sees it (errno or SQLite code)."""
    try:
        return ("ok", action())
    except sqlite3.Error as exc:
        return ("sqlite", getattr(exc, "sqlite_errorname", type(exc).__name__))
    except OSError as exc:
        return ("error", errno.errorcode.get(exc.errno or 0, str(exc.errno)))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def mode_state(mountpoint: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(os.getxattr(mountpoint, MODE_XATTR))
    return state


def transport(config: pytest.Config) -> str:
    """The transport the mounts use (the --transport option, else iofs's default)."""
    chosen: str | None = config.getoption("--transport", default=None)
    return chosen or default_transport()


def expect_shared_mmap(spec: str, transport_name: str) -> bool:
    """Whether shared mmap must work for files opened in *spec* (the documented rule)."""
    return transport_name != "pyfuse3" or not CACHINGS[parse_setting(spec).caching].direct_io


@dataclass
class Session:
    """An application's files in one directory: a mapped file, an SQLite database in
    WAL mode, an O_APPEND log, an O_DIRECT file, a fallocated file and a file with
    xattrs. Handles stay open between steps (and so across mode switches)."""

    root: Path
    seed: int = 0
    mapped_fd: int | None = None
    mapping: mmap.mmap | None = None
    db: sqlite3.Connection | None = None
    append_fd: int | None = None
    direct_fd: int | None = None
    rng: random.Random = field(init=False)
    rows: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        (self.root / "mapped").write_bytes(bytes(MAPPED_SIZE))
        (self.root / "xattrs").write_bytes(b"x")
        self.append_fd = os.open(self.root / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.direct_fd = os.open(self.root / "direct", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        self.buffer = mmap.mmap(-1, DIRECT_BLOCK)  # O_DIRECT wants an aligned buffer

    # -- shared mapping -----------------------------------------------------------------
    def map(self) -> Outcome:
        """Open the mapped file and map it shared (the open decides direct_io)."""
        assert self.mapping is None
        fd = os.open(self.root / "mapped", os.O_RDWR)

        def mapped() -> str:
            self.mapping = mmap.mmap(fd, MAPPED_SIZE, mmap.MAP_SHARED)
            self.mapped_fd = fd
            return "mapped"

        result = outcome(mapped)
        if self.mapping is None:
            os.close(fd)
        return result

    def map_read_only(self) -> Outcome:
        """A read-only shared mapping of a read-only open (refused alike: VM_MAYSHARE)."""
        with _opened(self.root / "mapped", os.O_RDONLY) as fd:
            return outcome(lambda: digest(_with_map(fd, mmap.MAP_SHARED, mmap.PROT_READ)))

    def map_private(self) -> Outcome:
        """MAP_PRIVATE works with direct_io too: the kernel drops its cache first."""
        with _opened(self.root / "mapped", os.O_RDONLY) as fd:
            return outcome(lambda: digest(_with_map(fd, mmap.MAP_PRIVATE, mmap.PROT_READ)))

    def unmap(self) -> None:
        if self.mapping is not None:
            self.mapping.flush()
            self.mapping.close()
            self.mapping = None
        if self.mapped_fd is not None:
            os.close(self.mapped_fd)
            self.mapped_fd = None

    def write_mapped(self) -> dict[str, Any]:
        """Write through the mapping, msync, then check read() and pwrite() coherence."""
        assert self.mapping is not None and self.mapped_fd is not None
        offset = self.rng.randrange(0, MAPPED_SIZE - 3 * PAGE)
        data = self.rng.randbytes(self.rng.randrange(1, 2 * PAGE))
        self.mapping[offset : offset + len(data)] = data
        self.mapping.flush()  # msync(MS_SYNC)
        seen_by_read = os.pread(self.mapped_fd, len(data), offset)
        poke = self.rng.randrange(0, MAPPED_SIZE - 64)
        os.pwrite(self.mapped_fd, b"P" * 64, poke)
        return {
            "read_after_msync": seen_by_read == data,
            "mapping_after_pwrite": self.mapping[poke : poke + 64] == b"P" * 64,
            "file": digest(os.pread(self.mapped_fd, MAPPED_SIZE, 0)),
        }

    def write_unmapped(self) -> str:
        """What the application falls back to without a mapping: pwrite, same bytes."""
        offset = self.rng.randrange(0, MAPPED_SIZE - 3 * PAGE)
        data = self.rng.randbytes(self.rng.randrange(1, 2 * PAGE))
        self.rng.randrange(0, MAPPED_SIZE - 64)  # keep the sequence in step with write_mapped
        with _opened(self.root / "mapped", os.O_RDWR) as fd:
            os.pwrite(fd, data, offset)
        return digest((self.root / "mapped").read_bytes())

    # -- SQLite in WAL mode ---------------------------------------------------------------
    def open_db(self) -> Outcome:
        def opened() -> str:
            db = sqlite3.connect(self.root / "db.sqlite", isolation_level=None)
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
            except BaseException:
                db.close()
                raise
            self.db = db
            return str(mode)

        return outcome(opened)

    def transaction(self) -> Outcome:
        assert self.db is not None
        db = self.db
        count = self.rng.randrange(1, 20)
        values = [
            (self.rows + i, self.rng.randbytes(self.rng.randrange(1, 3000))) for i in range(count)
        ]

        def run() -> list[Any]:
            db.execute("BEGIN")
            db.executemany("INSERT INTO t VALUES (?, ?)", values)
            db.execute("UPDATE t SET v = v || x'00' WHERE k % 7 = 0")
            db.execute("COMMIT")
            return list(db.execute("SELECT count(*), sum(length(v)), max(k) FROM t").fetchone())

        result = outcome(run)
        if result[0] == "ok":
            self.rows += count
        return result

    def probe_db(self) -> Outcome:
        """Open a fresh WAL database and use it (then remove it): the documented failure
        where files cannot be mapped shared. PRAGMA journal_mode=WAL succeeds; the first
        access maps the -shm file."""
        path = self.root / "probe.sqlite"
        try:
            return outcome(lambda: _use_wal_database(path))
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")

    def close_db(self) -> Outcome:
        """Close (checkpointing the WAL into the database and removing it), reopen, and
        check the database's integrity. The check opens it immutable: then SQLite needs
        no -shm mapping, so it reads the same in every setting."""
        if self.db is not None:
            self.db.close()
            self.db = None
        if not (self.root / "db.sqlite").exists():
            return ("ok", None)

        def check() -> list[Any]:
            uri = f"file:{self.root / 'db.sqlite'}?immutable=1"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                rows = db.execute("SELECT k, v FROM t ORDER BY k").fetchall()
                return [
                    db.execute("PRAGMA integrity_check").fetchone()[0],
                    db.execute("PRAGMA journal_mode").fetchone()[0],
                    len(rows),
                    digest(repr(rows).encode()),
                ]

        return outcome(check)

    # -- O_APPEND, O_DIRECT, fallocate, xattrs ----------------------------------------------
    def append(self) -> dict[str, Any]:
        assert self.append_fd is not None
        os.lseek(self.append_fd, 0, os.SEEK_SET)  # O_APPEND writes at the end anyway
        data = self.rng.randbytes(self.rng.randrange(1, 5000))
        written = os.write(self.append_fd, data)
        content = (self.root / "log").read_bytes()
        return {"written": written, "size": len(content), "tail": content[-len(data) :] == data}

    def direct(self) -> dict[str, Any]:
        assert self.direct_fd is not None
        block = self.rng.randrange(0, 8)
        self.buffer[:] = self.rng.randbytes(DIRECT_BLOCK)
        written = os.pwritev(self.direct_fd, [self.buffer], block * DIRECT_BLOCK)
        back = mmap.mmap(-1, DIRECT_BLOCK)
        got = os.preadv(self.direct_fd, [back], block * DIRECT_BLOCK)
        same = back[:] == self.buffer[:]
        back.close()
        return {
            "written": written,
            "read": got,
            "same": same,
            "file": digest((self.root / "direct").read_bytes()),
        }

    def fallocate(self) -> dict[str, Any]:
        length = self.rng.randrange(1, 1 << 20)
        path = self.root / "falloc"
        with _opened(path, os.O_RDWR | os.O_CREAT) as fd:
            posix = outcome(lambda: os.posix_fallocate(fd, 0, length))
            size = os.fstat(fd).st_size

            def keep_size() -> int:
                if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, length + (1 << 20)) != 0:
                    raise OSError(ctypes.get_errno(), "fallocate")
                return os.fstat(fd).st_size

            raw = outcome(keep_size)
            zeros = os.pread(fd, length, 0) == bytes(length)
        return {"posix_fallocate": posix, "size": size, "zeros": zeros, "keep_size": raw}

    def xattrs(self) -> list[Any]:
        path = self.root / "xattrs"
        name = f"user.k{self.rng.randrange(0, 5)}"
        os.setxattr(path, name, self.rng.randbytes(self.rng.randrange(1, 200)))
        if self.rng.random() < 0.3:
            os.removexattr(path, name)
        names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
        return [(n, digest(os.getxattr(path, n))) for n in names]

    def close(self) -> None:
        """Let go of everything (again after a failure: each part only once)."""
        self.unmap()
        if self.db is not None:
            self.db.close()
            self.db = None
        for fd in (self.append_fd, self.direct_fd):
            if fd is not None:
                os.close(fd)
        self.append_fd = self.direct_fd = None
        self.buffer.close()


@contextlib.contextmanager
def _opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _use_wal_database(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("CREATE TABLE t (k)")
        return str(mode)


def _with_map(fd: int, flags: int, prot: int) -> bytes:
    with mmap.mmap(fd, MAPPED_SIZE, flags, prot) as mapping:
        return mapping[:]


def tree(root: Path) -> dict[str, str]:
    """Every regular file under *root* (SQLite's -shm and -wal are gone once closed)."""
    return {
        str(p.relative_to(root)): digest(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Twin:
    """One `Session` on the mount and one in a plain directory, stepped together.

    *shared* says whether the mount's current setting maps files shared; where it does
    not, the mount must fail exactly as documented and the plain side skips the step.
    """

    def __init__(self, mount_root: Path, plain_root: Path, seed: int) -> None:
        self.mount = Session(mount_root, seed)
        self.plain = Session(plain_root, seed)
        self.refused_maps = 0
        self.keep_size: Outcome | None = None

    def both(self, step: Callable[[Session], Any]) -> Any:
        theirs, ours = step(self.plain), step(self.mount)
        assert ours == theirs, (
            f"{getattr(step, '__name__', step)}: mount {ours!r}, plain {theirs!r}"
        )
        return ours

    def step(self, shared: bool) -> None:
        """One round of every operation."""
        if self.mount.mapping is None:
            if shared:
                assert self.both(Session.map) == ("ok", "mapped")
            else:
                assert self.mount.map() == ("error", "ENODEV")
                assert self.mount.map_read_only() == ("error", "ENODEV")
                self.refused_maps += 1
        if self.mount.mapping is not None:
            self.both(Session.write_mapped)
        else:
            self.both(Session.write_unmapped)
        self.both(Session.map_private)
        if shared:
            self.both(Session.map_read_only)
        if shared and self.mount.db is None:
            assert self.both(Session.open_db) == ("ok", "wal")
        if not shared:
            assert self.mount.probe_db() == ("sqlite", "SQLITE_IOERR_SHMMAP")
        if self.mount.db is not None:
            assert self.both(Session.transaction)[0] == "ok"
        self.both(Session.append)
        self.both(Session.direct)
        ours, theirs = self.mount.fallocate(), self.plain.fallocate()
        # Raw fallocate where supported: where the transport has no fallocate (pyfuse3),
        # FALLOC_FL_KEEP_SIZE is EOPNOTSUPP on the mount; either way alike in every mode.
        supported = ours["keep_size"][0] == "ok"
        kind: Outcome = ("ok", None) if supported else ours["keep_size"]
        if self.keep_size is None:
            self.keep_size = kind
        assert kind == self.keep_size, "fallocate changed with the mode"
        assert ours["keep_size"] in (theirs["keep_size"], ("error", _EOPNOTSUPP))
        ours.pop("keep_size")
        theirs.pop("keep_size")
        assert ours == theirs, f"fallocate: mount {ours!r}, plain {theirs!r}"
        self.both(Session.xattrs)

    def release_mappings(self) -> None:
        """What an application must do before a switch into a setting without shared mmap."""
        for session in (self.mount, self.plain):
            session.unmap()
        self.both(Session.close_db)

    def finish(self) -> None:
        self.release_mappings()
        self.close()
        assert tree(self.mount.root) == tree(self.plain.root)

    def close(self) -> None:
        self.mount.close()
        self.plain.close()


def switch(mountpoint: Path, spec: str) -> None:
    os.setxattr(mountpoint, MODE_XATTR, spec.encode())


def refused_by_cli(mountpoint: Path, spec: str) -> str:
    """`iofs mode` into *spec* must refuse with one line; the mode stays as it was."""
    before = mode_state(mountpoint)["spec"]
    result = subprocess.run(
        [sys.executable, "-m", "iofs", "mode", str(mountpoint), spec],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mapped shared" in lines[0] and "Traceback" not in result.stderr
    assert mode_state(mountpoint)["spec"] == before
    return lines[0]


def covering_walk(nodes: list[str]) -> list[str]:
    """A walk through *nodes* that takes every ordered pair (a, b), a != b, once:
    an Eulerian circuit of the complete directed graph (Hierholzer)."""
    unused = {a: [b for b in nodes if b != a] for a in nodes}
    stack, walk = [nodes[0]], []
    while stack:
        if unused[stack[-1]]:
            stack.append(unused[stack[-1]].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def runnable_modes() -> list[str]:
    return [m for m in ALL_MODES if mode_runs(m) is None]


def enter(twin: Twin, mountpoint: Path, spec: str, transport_name: str) -> bool:
    """Switch the live mount to *spec* with the twin's mapping (and database) open;
    return whether files opened now may be mapped shared."""
    shared = expect_shared_mmap(spec, transport_name)
    was_shared = mode_state(mountpoint)["shared_mmap"]
    if not shared and was_shared and twin.mount.mapping is not None:
        line = refused_by_cli(mountpoint, spec)
        assert str(twin.mount.root / "mapped") in line
        with pytest.raises(OSError) as refused:
            switch(mountpoint, spec)
        assert refused.value.errno == errno.EBUSY
        twin.release_mappings()
    switch(mountpoint, spec)
    state = mode_state(mountpoint)
    assert state["spec"] == parse_setting(spec).spec
    assert state["shared_mmap"] == shared, state
    return shared


# -- default suite ------------------------------------------------------------------------
ROUNDS = 3


def test_same_results_in_every_mode(
    mode_mount: Mount, plain: Path, request: pytest.FixtureRequest
) -> None:
    """Mounted in each mode: every operation gives what it gives in a plain directory,
    except what the mode documents (shared mmap where the transport cannot)."""
    spec = mode_state(mode_mount.mountpoint)["spec"]
    shared = expect_shared_mmap(spec, transport(request.config))
    assert mode_state(mode_mount.mountpoint)["shared_mmap"] is shared
    twin = Twin(mode_mount.mountpoint, plain, seed=1)
    for _ in range(ROUNDS):
        twin.step(shared)
    twin.finish()
    assert twin.refused_maps == (0 if shared else ROUNDS)


def test_same_results_across_every_switch(
    mount_factory: MountFactory, plain: Path, request: pytest.FixtureRequest
) -> None:
    """One mount walks through every ordered pair of modes (20 switches for 5 modes),
    one round of every operation in each, with the mapping and the database open across
    each switch that allows it; a switch that does not is refused while they are."""
    modes = runnable_modes()
    walk = covering_walk(modes)
    mnt = mount_factory(engine=None, mode=walk[0])
    transport_name = transport(request.config)
    twin = Twin(mnt.mountpoint, plain, seed=2)
    twin.step(expect_shared_mmap(walk[0], transport_name))
    pairs = set()
    for before, after in itertools.pairwise(walk):
        shared = enter(twin, mnt.mountpoint, after, transport_name)
        twin.step(shared)
        pairs.add((before, after))
    twin.finish()
    assert len(pairs) == len(modes) * (len(modes) - 1)


def test_a_refused_switch_changes_nothing_and_names_the_mapping(
    mount_factory: MountFactory, request: pytest.FixtureRequest
) -> None:
    """While a file is mapped shared, a switch into uncached is refused (where the
    transport cannot map direct_io files) and the mapping goes on working; once
    unmapped, the switch goes through and says what it means for mapped files."""
    if not any(not expect_shared_mmap(m, transport(request.config)) for m in MODES):
        pytest.skip("every mode maps files shared on this transport")
    mnt = mount_factory(engine=None, mode="blocking")
    path = mnt.mountpoint / "shm"
    path.write_bytes(bytes(2 * PAGE))
    with _opened(path, os.O_RDWR) as fd, mmap.mmap(fd, 2 * PAGE) as mapping:
        line = refused_by_cli(mnt.mountpoint, "uncached")
        assert f"pid {os.getpid()}" in line and str(path) in line
        assert "--transport dev" in line
        # The refusal is the daemon's: a direct setxattr gets EBUSY, and also for a
        # caching override on another mode.
        with pytest.raises(OSError) as refused:
            switch(mnt.mountpoint, "btrfs,cache=none")
        assert refused.value.errno == errno.EBUSY
        mapping[:5] = b"still"
        mapping.flush()
        assert os.pread(fd, 5, 0) == b"still"
    result = subprocess.run(
        [sys.executable, "-m", "iofs", "mode", str(mnt.mountpoint), "uncached"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "switched to uncached" in result.stdout
    assert "ENODEV" in result.stdout and "FUSE_DIRECT_IO_ALLOW_MMAP" in result.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "iofs", "mode", str(mnt.mountpoint)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ENODEV" in shown.stdout
    with _opened(path, os.O_RDWR) as fd, pytest.raises(OSError) as enodev:
        mmap.mmap(fd, 2 * PAGE)
    assert enodev.value.errno == errno.ENODEV
    assert mnt.log_text().count("files on the mount are mapped shared") == 2


def test_a_mapping_made_through_an_earlier_open_stays_coherent(
    mount_factory: MountFactory,
) -> None:
    """The refusal's window: a file opened before the switch into uncached and mapped
    after it keeps a page-cache mapping; the kernel writes its dirty pages back before a
    direct read and drops them after a direct write, so both views agree."""
    mnt = mount_factory(engine=None, mode="blocking")
    path = mnt.mountpoint / "early"
    path.write_bytes(bytes(2 * PAGE))
    with _opened(path, os.O_RDWR) as early:
        switch(mnt.mountpoint, "uncached")
        with mmap.mmap(early, 2 * PAGE) as mapping, _opened(path, os.O_RDWR) as direct:
            mapping[10:15] = b"dirty"  # no msync
            assert os.pread(direct, 5, 10) == b"dirty"
            os.pwrite(direct, b"direct", PAGE + 3)
            assert mapping[PAGE + 3 : PAGE + 9] == b"direct"
    assert (mnt.backing / "early").read_bytes()[10:15] == b"dirty"


def test_the_scan_finds_only_shared_mappings_of_the_device(tmp_path: Path) -> None:
    """`/proc/PID/maps`: the device is hex, the fourth permission character is ``s`` for
    MAP_SHARED (read-only too), a path may hold spaces or be missing."""
    lines = {
        "100": [
            "7f00-7f01 rw-s 00000000 00:2d 12 /mnt/db-shm",
            "7f01-7f02 r--s 00000000 00:2d 13 /mnt/read only shared",
            "7f02-7f03 rw-p 00000000 00:2d 14 /mnt/private",
            "7f03-7f04 rw-s 00000000 00:2e 15 /elsewhere/shared",
            "7f04-7f05 rw-s 00000000 00:2d 12 /mnt/db-shm",
            "7f05-7f06 rw-s 00000000 00:2d 16",
        ],
        "200": ["7f00-7f01 r-xp 00000000 08:01 99 /usr/bin/python3"],
    }
    for pid, maps in lines.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "maps").write_text("\n".join(maps) + "\n")
        (tmp_path / pid / "comm").write_text(f"p{pid}\n")
    (tmp_path / "self").mkdir()
    scan = shared_mappings(parse_device("0:45"), proc=tmp_path)
    assert [(m.pid, m.command, m.path) for m in scan.mappings] == [
        (100, "p100", "/mnt/db-shm"),
        (100, "p100", "/mnt/read only shared"),
        (100, "p100", "inode 16"),
    ]
    assert scan.unreadable == 0
    assert scan.describe(limit=2) == (
        "pid 100 (p100) /mnt/db-shm, pid 100 (p100) /mnt/read only shared and 1 more"
    )


# -- slow suite: randomised ----------------------------------------------------------------
OPERATIONS = ("step", "step", "step", "switch", "switch", "remap", "reopen_db")


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    script=st.lists(
        st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 1000)), min_size=4, max_size=30
    ),
)
def test_random_operations_and_switches(
    mount_factory: MountFactory,
    request: pytest.FixtureRequest,
    seed: int,
    script: list[tuple[str, int]],
) -> None:
    """Random rounds, switches to random modes and engine/cache overrides (often while
    a mapping and the database are live), remaps and database reopens: the mount and a
    plain directory agree after every one, and the refusals are exactly the documented
    ones."""
    transport_name = transport(request.config)
    modes = runnable_modes()
    specs = modes + [
        s for s in ("btrfs,cache=none", "uncached,cache=kernel") if parse_setting(s).mode in modes
    ]
    mnt = _shared_mount(mount_factory, request)
    switch(mnt.mountpoint, "blocking")
    base = Path(os.environ.get("TMPDIR", "/tmp"))
    name = f"case-{seed}-{len(script)}-{os.urandom(4).hex()}"
    mount_root, plain_root = mnt.mountpoint / name, base / f"iofs-invariance-{name}"
    mount_root.mkdir()
    plain_root.mkdir()
    twin = Twin(mount_root, plain_root, seed)
    try:
        shared = True
        for operation, choice in script:
            if operation == "switch":
                shared = enter(twin, mnt.mountpoint, specs[choice % len(specs)], transport_name)
            elif operation == "remap":
                twin.mount.unmap()
                twin.plain.unmap()
            elif operation == "reopen_db" and twin.mount.db is not None:
                twin.both(Session.close_db)
            twin.step(shared)
        twin.finish()
    finally:
        twin.close()
        shutil.rmtree(plain_root, ignore_errors=True)
        shutil.rmtree(mount_root, ignore_errors=True)


def _shared_mount(mount_factory: MountFactory, request: pytest.FixtureRequest) -> Mount:
    """One mount for every hypothesis example of a test (mounting per example is slow)."""
    cache = request.node.__dict__.setdefault("_iofs_mount", [])
    if not cache:
        cache.append(mount_factory(engine=None, mode="blocking"))
    mount: Mount = cache[0]
    return mount
