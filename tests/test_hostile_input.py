"""Bad input through the mount (issue 6): names at and past NAME_MAX, names that are
not UTF-8, offsets near 2^63, sparse files, zero-length and O_DIRECT requests,
truncation racing reads and writes, and more open files than the limits allow.

Each test runs in every mode (the data path differs between them) and, where the
backing filesystem answers the same input, compares the mount with a plain directory
on the same filesystem: the results must be the same. Trees deeper than PATH_MAX are
covered by ``test_posix.test_tree_deeper_than_path_max``.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import random
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iofs.modes import MODES

from .conftest import ALL_MODES, Mount, needs_fuse, needs_root, race_beside_script
from .differential import Outcome, outcome

pytestmark = needs_fuse

NAME_MAX = 255
PATH_MAX = 4096
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
OFF_MAX = (1 << 63) - 1


# -- names ----------------------------------------------------------------------------
def _sized(first: bytes, fill: bytes, length: int) -> bytes:
    """A name of exactly *length* bytes: *first*, then *fill* repeated (and cut)."""
    body = fill * length
    return (first + body)[:length]


#: Names at NAME_MAX and one past it, as ASCII, as UTF-8 (a 2-byte character would be
#: split by one byte more), and as bytes that are not UTF-8 at all.
NAMES = {
    "ascii": b"a",
    "utf8": "é".encode(),
    "latin1": b"\xe9",
    "binary": bytes(range(1, 47)) + bytes(range(48, 256)),  # all bytes but NUL and "/"
}


def _create(path: bytes) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o640))


def _mode(path: bytes) -> int:
    return os.stat(path).st_mode


def _link_length(path: bytes) -> int:
    return len(os.readlink(path))


def _read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _name_results(root: Path) -> list[object]:
    r = bytes(root)
    results: list[object] = []
    for fill in NAMES.values():
        for length in (NAME_MAX, NAME_MAX + 1):
            f, d, s, p = (r + b"/" + _sized(k, fill, length) for k in (b"f", b"d", b"s", b"p"))
            moved, linked = (r + b"/" + _sized(k, fill, length) for k in (b"m", b"h"))
            results += [
                outcome(partial(_create, f)),
                outcome(partial(os.mkdir, d)),
                outcome(partial(os.symlink, b"target", s)),
                outcome(partial(os.mkfifo, p)),
                outcome(partial(_mode, f)),
                outcome(partial(os.rename, f, moved)),
                outcome(partial(os.link, moved, linked)),
                outcome(lambda: sorted(os.listdir(r))),
                outcome(partial(_create, d + b"/in")),
                outcome(partial(os.listdir, d)),
                outcome(partial(os.readlink, s)),
                outcome(partial(os.unlink, moved)),
                outcome(partial(os.unlink, linked)),
                outcome(partial(os.unlink, d + b"/in")),
                outcome(partial(os.rmdir, d)),
                outcome(partial(os.unlink, s)),
                outcome(partial(os.unlink, p)),
                outcome(lambda: sorted(os.listdir(r))),
            ]
    # Symlink targets up to and past PATH_MAX, a path past PATH_MAX, xattr limits.
    for length in (PATH_MAX - 1, PATH_MAX):
        link = r + b"/long-target-%d" % length
        results += [
            outcome(partial(os.symlink, b"t" * length, link)),
            outcome(partial(_link_length, link)),
        ]
    too_long = r + b"/" + b"/".join([b"n" * 200] * 21)  # > PATH_MAX
    results += [
        outcome(partial(os.stat, too_long)),
        outcome(partial(os.open, too_long, os.O_WRONLY | os.O_CREAT)),
        outcome(partial(os.mkdir, too_long)),
    ]
    target = r + b"/xattrs"
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    for name_length in (XATTR_NAME_MAX, XATTR_NAME_MAX + 1):
        name = b"user." + b"x" * (name_length - len(b"user."))
        results += [
            outcome(partial(os.setxattr, target, name, b"v")),
            outcome(partial(os.getxattr, target, name)),
        ]
    for size in (XATTR_SIZE_MAX, XATTR_SIZE_MAX + 1):
        results.append(outcome(partial(os.setxattr, target, b"user.big", b"v" * size)))
    results.append(outcome(lambda: len(os.getxattr(target, b"user.big"))))
    return results


def _metadata_modes() -> list[pytest.ParameterSet]:
    """Every mode for `mode_mount`; those whose metadata path (inline or queued updates,
    kernel caching or none, passthrough opens) an earlier one already has, so that only
    the engine differs, under -m slow."""
    seen: set[tuple[object, ...]] = set()
    params = []
    for mode in ALL_MODES:
        path = (MODES[mode].metadata, MODES[mode].caching, MODES[mode].passthrough)
        params.append(pytest.param(mode, marks=pytest.mark.slow if path in seen else ()))
        seen.add(path)
    return params


#: The names tests: metadata alone (the data they write is a few bytes).
over_metadata_modes = pytest.mark.parametrize("mode_mount", _metadata_modes(), indirect=True)


@over_metadata_modes
def test_names_at_and_past_name_max_like_the_backing(mode_mount: Mount, plain: Path) -> None:
    on_mount = _name_results(mode_mount.mountpoint)
    assert on_mount == _name_results(plain)
    assert ("error", "ENAMETOOLONG") in on_mount and ("error", "ERANGE") in on_mount


_examples = itertools.count()
#: Any bytes a name may hold: everything but "/" and NUL, up to one past NAME_MAX.
names = (
    st.binary(min_size=1, max_size=NAME_MAX + 1)
    .map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"~"))
    .filter(lambda b: b not in (b".", b".."))
)


@over_metadata_modes
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=st.lists(names, min_size=1, max_size=4, unique=True), second=st.lists(names))
def test_any_byte_names_like_the_backing(
    mode_mount: Mount, plain: Path, first: list[bytes], second: list[bytes]
) -> None:
    """Create, list, rename and unlink names that are arbitrary bytes."""
    case = b"case-%d" % next(_examples)

    def run(root: Path) -> list[object]:
        directory = bytes(root) + b"/" + case
        os.mkdir(directory)
        results: list[object] = []
        for name in first:
            path = directory + b"/" + name
            results.append(outcome(partial(_write_file, path, name[:64])))
        results.append(outcome(lambda: sorted(os.listdir(directory))))
        for old, new in zip(first, second, strict=False):
            results.append(
                outcome(partial(os.rename, directory + b"/" + old, directory + b"/" + new))
            )
        listing = outcome(lambda: sorted(os.listdir(directory)))
        results.append(listing)
        if listing[0] == "ok":
            for name in cast(list[bytes], listing[1]):
                path = directory + b"/" + name
                results.append(outcome(partial(_read, path)))
                results.append(outcome(partial(os.unlink, path)))
        results.append(outcome(partial(os.rmdir, directory)))
        return results

    try:
        assert run(mode_mount.mountpoint) == run(plain)
    finally:
        for root in (mode_mount.mountpoint, plain):
            shutil.rmtree(bytes(root) + b"/" + case, ignore_errors=True)


def _write_file(path: bytes, data: bytes) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


# -- huge and sparse files ----------------------------------------------------------------
#: Offsets around the largest off_t, and around ext4's and XFS's largest file sizes.
HUGE_OFFSETS = [OFF_MAX, OFF_MAX - 1, OFF_MAX - 4095, 1 << 62, 1 << 44, (1 << 44) - 4096, 1 << 40]


def _huge_results(root: Path) -> list[object]:
    fd = os.open(root / "huge", os.O_RDWR | os.O_CREAT, 0o644)
    results: list[object] = []
    try:
        for offset in HUGE_OFFSETS:
            results += [
                outcome(partial(os.pwrite, fd, b"x", offset)),
                outcome(partial(os.pwrite, fd, b"y" * 8192, offset - 4096)),
                outcome(partial(os.pread, fd, 16, offset)),
                outcome(partial(os.pread, fd, 8192, offset - 4096)),
                outcome(partial(os.ftruncate, fd, offset)),
                outcome(lambda: os.fstat(fd).st_size),
                outcome(partial(os.lseek, fd, 0, os.SEEK_END)),
                outcome(partial(os.ftruncate, fd, 0)),
            ]
        results += [
            outcome(partial(os.ftruncate, fd, -1)),
            outcome(partial(os.pread, fd, 1, -1)),
            outcome(partial(os.pwrite, fd, b"x", -1)),
            outcome(partial(os.truncate, root / "huge", OFF_MAX)),
            # A sparse file: one block at 1 TiB.
            outcome(partial(os.pwrite, fd, b"end", 1 << 40)),
            outcome(lambda: os.fstat(fd).st_size),
            outcome(partial(os.pread, fd, 8192, (1 << 40) - 4096)),
            outcome(partial(os.pread, fd, 10, (1 << 40) + 3)),
            outcome(partial(os.lseek, fd, (1 << 40) + 3, os.SEEK_DATA)),
            outcome(partial(os.lseek, fd, (1 << 40) + 3, os.SEEK_HOLE)),
            outcome(partial(os.lseek, fd, OFF_MAX, os.SEEK_DATA)),
        ]
    finally:
        os.close(fd)
    return results


#: Run as a child with RLIMIT_FSIZE set: writes past it fail with EFBIG (SIGXFSZ ignored).
FSIZE_CHILD = textwrap.dedent(
    """
    import errno, json, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    out = []
    for offset, size in ((0, 4096), ((1 << 20) - 1, 2), (1 << 20, 1), (2 << 20, 4096)):
        try:
            out.append(os.pwrite(fd, b"z" * size, offset))
        except OSError as exc:
            out.append(errno.errorcode[exc.errno])
    out.append(os.fstat(fd).st_size)
    print(json.dumps(out))
    """
)


def test_huge_offsets_and_sparse_files_like_the_backing(mode_mount: Mount, plain: Path) -> None:
    mnt = mode_mount.mountpoint
    on_mount = _huge_results(mnt)
    assert on_mount == _huge_results(plain)
    assert ("error", "EFBIG") in on_mount and ("error", "ENXIO") in on_mount
    # The sparse file takes the backing's blocks, seen the same through the mount.
    assert os.stat(mnt / "huge").st_blocks == os.stat(mode_mount.backing / "huge").st_blocks
    assert os.stat(mnt / "huge").st_blocks < 100
    # SEEK_DATA / SEEK_HOLE: pyfuse3 has no lseek operation, so the kernel answers for
    # the mount and counts the whole file as data, which POSIX allows. Either way the
    # answers must be consistent with the contents.
    size = 1 << 40
    fd = os.open(mnt / "huge", os.O_RDONLY)
    try:
        data = os.lseek(fd, 0, os.SEEK_DATA)
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
        assert 0 <= data <= size and data <= hole <= size + 3
        assert os.pread(fd, min(data, 4096), 0) == bytes(min(data, 4096))
    finally:
        os.close(fd)
    results = []
    for root in (mnt, plain):
        child = subprocess.run(
            [sys.executable, "-c", FSIZE_CHILD, str(root / "limited")],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(child.stdout))
    assert results[0] == results[1]
    assert "EFBIG" in results[0]


# -- zero-length and O_DIRECT requests ----------------------------------------------------
def _zero_length_results(root: Path) -> list[object]:
    path = root / "zero"
    path.write_bytes(b"z" * 8192)
    results: list[object] = []
    for flags in (os.O_RDWR, os.O_RDWR | os.O_DIRECT):
        fd = os.open(path, flags)
        try:
            for offset in (0, 8192, 8193, 1 << 40, OFF_MAX):
                results += [
                    outcome(partial(os.pread, fd, 0, offset)),
                    outcome(partial(os.pwrite, fd, b"", offset)),
                    outcome(partial(os.preadv, fd, [bytearray()], offset)),
                    outcome(partial(os.pwritev, fd, [b""], offset)),
                ]
            results += [outcome(partial(os.read, fd, 0)), outcome(partial(os.write, fd, b""))]
        finally:
            os.close(fd)
    results.append(os.stat(path).st_size)
    return results


def test_zero_length_requests_like_the_backing(mode_mount: Mount, plain: Path) -> None:
    assert _zero_length_results(mode_mount.mountpoint) == _zero_length_results(plain)


#: (offset, size, buffer misalignment): aligned, sector-aligned and unaligned requests.
DIRECT_REQUESTS = [
    (0, 4096, 0),
    (4096, 8192, 0),
    (1, 3, 0),
    (4096, 100, 0),
    (8192, 4096, 1),
    (512, 512, 0),
    (12288, 4096, 0),
    (20480, 4096, 0),
    (1 << 24, 4096, 0),
    ((1 << 24) + 4000, 200, 0),
]


def _direct_io(root: Path) -> tuple[list[Outcome], list[bytes], bytes]:
    """Write then read each request through O_DIRECT: the outcomes, what each read
    should have returned, and the final content.

    On the mount, every request either works or fails with EINVAL (the backing
    filesystem's answer to unaligned direct I/O): FUSE passes any request through,
    and the engines may serve it (bouncing or using the buffered descriptor)."""
    path = root / "direct"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    model = bytearray()
    results: list[Outcome] = []
    expected: list[bytes] = []
    rng = random.Random(6)
    try:
        for offset, size, skew in DIRECT_REQUESTS:
            with mmap.mmap(-1, size + 8192) as buffer:  # page-aligned, then skewed
                data = rng.randbytes(size)
                buffer[skew : skew + size] = data
                with memoryview(buffer) as view:
                    written = outcome(partial(os.pwritev, fd, [view[skew : skew + size]], offset))
                    if written[0] == "ok":
                        end = offset + int(written[1])  # type: ignore[call-overload]
                        model.extend(bytes(max(0, end - len(model))))
                        model[offset:end] = data[: end - offset]
                    read = outcome(partial(os.preadv, fd, [view[skew : skew + size]], offset))
                    expected.append(bytes(model[offset : offset + size]))
                    if read[0] == "ok":
                        read = ("ok", bytes(view[skew : skew + int(read[1])]))  # type: ignore[call-overload]
                results += [written, read]
    finally:
        os.close(fd)
    return results, expected, bytes(model)


def test_aligned_and_unaligned_o_direct(mode_mount: Mount, plain: Path) -> None:
    on_mount, wanted, mount_model = _direct_io(mode_mount.mountpoint)
    on_plain, _, _ = _direct_io(plain)
    for (offset, size, skew), i in zip(DIRECT_REQUESTS, itertools.count(0, 2), strict=False):
        aligned = not (offset % 4096 or size % 4096 or skew)
        for got, on_backing in ((on_mount[i], on_plain[i]), (on_mount[i + 1], on_plain[i + 1])):
            if aligned:
                assert got == on_backing, (offset, size, skew)
            else:
                assert got == ("error", "EINVAL") or got[0] == "ok", (offset, size, skew)
        if on_mount[i + 1][0] == "ok":
            assert on_mount[i + 1][1] == wanted[i // 2], (offset, size, skew)
    # Whatever was accepted is in the backing file, and nothing else.
    backing = (mode_mount.backing / "direct").read_bytes()
    assert backing == mount_model
    assert (mode_mount.mountpoint / "direct").read_bytes() == mount_model


# -- truncation racing reads and writes ----------------------------------------------------
#: A pattern with no zero byte: a read may see the pattern or zeros (a hole, or bytes
#: past a truncation that a later write extended over), never anything else.
SPAN = 300_000
PATTERN = bytes((i % 251) + 1 for i in range(SPAN + 70_000))

TRUNCATOR = textwrap.dedent(
    """
    import os, random, sys, time
    path, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
    rng, count, least = random.Random(3), 0, int(sys.argv[3])
    # At least *least* truncations however slow the machine, and for at least the time.
    while count < least or time.monotonic() < end:
        os.truncate(path, rng.choice([0, 1, 4095, 4096, 65536, rng.randrange(300_000)]))
        count += 1
    print(count)
    """
)


def _writer(path: Path, stop: threading.Event, seed: int, errors: list[str]) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        while not stop.is_set():
            size = rng.choice([1, 100, 4096, 8192, 65536])
            offset = (
                rng.randrange(0, SPAN)
                // (4096 if size % 4096 == 0 else 1)
                * (4096 if size % 4096 == 0 else 1)
            )
            written = os.pwrite(fd, PATTERN[offset : offset + size], offset)
            if written != size:
                errors.append(f"short write {written} of {size} at {offset}")
    except OSError as exc:
        errors.append(f"write: {exc}")
    finally:
        os.close(fd)


def _reader(path: Path, stop: threading.Event, seed: int, errors: list[str]) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        while not stop.is_set():
            offset, size = rng.randrange(0, SPAN), rng.choice([1, 4096, 65536])
            data = os.pread(fd, size, offset)
            if data != PATTERN[offset : offset + len(data)]:
                wrong = [
                    offset + i
                    for i, byte in enumerate(data)
                    if byte and byte != PATTERN[offset + i]
                ]
                if wrong:
                    errors.append(f"read garbage at {wrong[:5]}")
    except OSError as exc:
        errors.append(f"read: {exc}")
    finally:
        os.close(fd)


def test_truncation_racing_readers_and_writers(mode_mount: Mount) -> None:
    path = mode_mount.mountpoint / "raced"
    path.write_bytes(PATTERN[:SPAN])
    stop = threading.Event()
    errors: list[str] = []
    workers = [
        threading.Thread(target=work, args=(path, stop, seed, errors))
        for work, seed in ((_writer, 1), (_writer, 2), (_reader, 3), (_reader, 4))
    ]
    out = race_beside_script(TRUNCATOR, [str(path), "1.0", "50"], workers, stop)
    assert int(out) >= 50
    assert not errors, errors[:10]
    # The final state is the backing file's, seen the same through the mount.
    backing = (mode_mount.backing / "raced").read_bytes()
    assert path.read_bytes() == backing
    assert os.stat(path).st_size == len(backing)
    assert all(b in (0, PATTERN[i]) for i, b in enumerate(backing))
    assert mode_mount.counters()["unexpected_errors"] == 0
    assert mode_mount.engine_statistics()["errors"] == 0


# -- more open files than the limits allow -------------------------------------------------
#: Sets its RLIMIT_NOFILE soft limit to argv[2], opens the files in argv[1] (a JSON list)
#: round-robin argv[3] times, reads a byte from each descriptor it got, closes them all;
#: prints how many it opened, the errnos of opens, reads and closes, and the good reads.
OPENER = textwrap.dedent(
    """
    import errno, json, os, resource, sys
    paths, soft, attempts = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    fds, open_errors, read_errors = [], {}, {}
    for i in range(attempts):
        try:
            fds.append(os.open(paths[i % len(paths)], os.O_RDWR))
        except OSError as exc:
            name = errno.errorcode[exc.errno]
            open_errors[name] = open_errors.get(name, 0) + 1
    reads = 0
    for fd in fds:
        try:
            reads += os.pread(fd, 1, 0) == b"o"
        except OSError as exc:
            name = errno.errorcode[exc.errno]
            read_errors[name] = read_errors.get(name, 0) + 1
    close_errors = {}
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            name = errno.errorcode[exc.errno]
            close_errors[name] = close_errors.get(name, 0) + 1
    print(json.dumps([len(fds), open_errors, reads, read_errors, close_errors]))
    """
)


def _open_many(paths: list[Path], soft: int, attempts: int) -> list[object]:
    argv = [sys.executable, "-c", OPENER, json.dumps([str(p) for p in paths])]
    child = subprocess.run(
        [*argv, str(soft), str(attempts)], capture_output=True, text=True, check=False, timeout=120
    )
    assert child.returncode == 0, child.stderr
    result: list[object] = json.loads(child.stdout)
    return result


def _daemon_fds(mount: Mount) -> int:
    return len(os.listdir(f"/proc/{mount.daemon.pid}/fd"))


def _wait_for_fds(mount: Mount, expected: int) -> int:
    """The daemon's descriptor count once it is back to *expected* (releases are
    asynchronous), or whatever it is after a few seconds."""
    deadline = time.monotonic() + 5
    while (count := _daemon_fds(mount)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


@needs_root  # lowers the daemon's limit and reads its descriptors
def test_open_files_up_to_the_limits(mode_mount: Mount, plain: Path) -> None:
    mnt = mode_mount.mountpoint
    names = [f"f{i}" for i in range(16)]
    for root in (mnt, plain):
        for name in names:
            (root / name).write_bytes(b"o")
    for name in names:
        os.stat(mnt / name)  # known to the daemon before the baseline
    baseline = _daemon_fds(mode_mount)
    cached = mode_mount.counters()["fds_cached"]

    # The caller's own limit: EMFILE at the same count as on the plain directory.
    on_mount = _open_many([mnt / n for n in names], 200, 300)
    on_plain = _open_many([plain / n for n in names], 200, 300)
    assert on_mount == on_plain
    assert on_mount[1] == {"EMFILE": 300 - int(on_mount[0])}  # type: ignore[call-overload]
    assert _wait_for_fds(mode_mount, baseline) == baseline

    # The daemon's limit: a caller allowed more gets the daemon's EMFILE, and the
    # daemon is fine once the descriptors are closed again.
    pid = mode_mount.daemon.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (baseline + 100, limits[1]))
    try:
        opened, open_errors, reads, read_errors, close_errors = _open_many(
            [mnt / n for n in names], 5000, 400
        )
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert isinstance(opened, int) and isinstance(open_errors, dict)
    assert isinstance(reads, int) and isinstance(read_errors, dict)
    assert 0 < opened < 400
    assert set(open_errors) <= {"EMFILE", "ENFILE"}
    assert set(read_errors) <= {"EMFILE", "ENFILE"}  # an O_DIRECT twin may not open
    assert reads + sum(read_errors.values()) == opened
    assert close_errors == {}, "close(2) failed: the daemon had no descriptor for flush"
    # Out of descriptors, the daemon let go of some it held for inodes (found again
    # when needed): fewer than before, by exactly those.
    counters = mode_mount.counters()
    assert counters["fd_reclaims"] >= 1
    let_go = cached - counters["fds_cached"]
    assert let_go > 0
    assert _wait_for_fds(mode_mount, baseline - let_go) == baseline - let_go
    assert [os.stat(mnt / n).st_size for n in names] == [1] * len(names)
    (mnt / "after").write_bytes(b"still serving")
    assert (mnt / "after").read_bytes() == b"still serving"
    assert mode_mount.counters()["unexpected_errors"] == 0
