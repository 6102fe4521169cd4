#!/usr/bin/env python3
"""What each file I/O technique does when the data is not in memory, shown with system calls.

docs/io-techniques.md explains event-based, non-blocking and
asynchronous I/O from first principles; this script shows each claim on a real file:

- event-based: poll() calls a regular file ready although nothing of it is cached, and
  epoll refuses regular files outright (EPERM);
- non-blocking: O_NONBLOCK changes nothing for a regular file (the read waits for the
  disk); preadv2(RWF_NOWAIT) answers EAGAIN instead of waiting;
- asynchronous: Linux AIO's io_submit does a buffered read inside the system call but
  only starts an O_DIRECT one; io_uring returns at once for both, serving cold buffered
  reads through page-cache callbacks and punting what would block (a buffered write on
  ext4) to io-wq kernel worker threads.

Usage: ``.venv/bin/python scripts/io_techniques.py DIR``, DIR on a disk filesystem (not
tmpfs). It writes ``DIR/techniques.dat`` (64 MiB), evicts it from the page cache before
each try (posix_fadvise DONTNEED, no root needed) and removes it at the end. Each timing
is the fastest of three tries on different blocks (another process on the machine can
only make a try slower); the outcomes (EPERM, EAGAIN, done inside the call or not) are
what matter.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import importlib
import mmap
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from iofs.backends import iouring_abi as uring

FILE_SIZE = 64 << 20
BLOCK = 4096
LABEL_WIDTH = 46
TRIES = 3

#: A try: given a fresh block number, the time that ranks it and what to print.
Try = Callable[[int], tuple[float, str]]


class Blocks:
    """Block numbers not used before, spread over the file (each try reads new ones)."""

    def __init__(self) -> None:
        self._next = 17

    def take(self) -> int:
        self._next = (self._next + 997) % (FILE_SIZE // BLOCK)
        return self._next


def duration(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f}µs"


def show(label: str, outcome: str) -> None:
    print(f"  {label + ':':{LABEL_WIDTH}} {outcome}")


def best(label: str, attempt: Try, blocks: Blocks) -> None:
    """Run *attempt* `TRIES` times on new blocks and show the fastest outcome."""
    show(label, min((attempt(blocks.take()) for _ in range(TRIES)), key=lambda r: r[0])[1])


def evict(fd: int) -> None:
    """Drop every cached page of the file behind *fd* (it is clean: fsynced)."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def errno_name(exc: OSError) -> str:
    if exc.errno == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"  # Python's table says ENOTSUP, the same number on Linux
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def iou_workers() -> int:
    """io-wq worker threads of this process (the kernel names them iou-wrk-<tid>)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as comm:
            count += comm.read().startswith("iou-wrk")
    return count


@contextlib.contextmanager
def aligned_buffer() -> Iterator[int]:
    """The address of a page-aligned 4 KiB buffer (O_DIRECT needs one)."""
    buffer = mmap.mmap(-1, BLOCK)
    pointer = ctypes.c_char.from_buffer(buffer)
    try:
        yield ctypes.addressof(pointer)
    finally:
        del pointer
        buffer.close()


def event_based(fd: int, blocks: Blocks) -> None:
    print("Event-based I/O: ask which descriptors are ready, then read without waiting")

    def poll(_: int) -> tuple[float, str]:
        evict(fd)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLOUT)
        start = time.perf_counter()
        events = poller.poll(1000)
        elapsed = time.perf_counter() - start
        flags = events[0][1] if events else 0
        ready = "|".join(name for name in ("POLLIN", "POLLOUT") if flags & getattr(select, name))
        return elapsed, f"ready at once ({ready or 'nothing'}) in {duration(elapsed)}"

    best("poll() on the file, nothing of it cached", poll, blocks)
    epoll = select.epoll()
    try:
        epoll.register(fd, select.EPOLLIN)
        outcome = "accepted"
    except OSError as exc:
        outcome = f"{errno_name(exc)}: epoll does not take regular files"
    finally:
        epoll.close()
    show("epoll_ctl(EPOLL_CTL_ADD) on the file", outcome)


def non_blocking(path: Path, fd: int, kind: str, blocks: Blocks) -> None:
    print("Non-blocking I/O: a call that would wait fails with EAGAIN instead")
    nonblocking = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    buffer = bytearray(BLOCK)

    def read_nonblocking(block: int) -> tuple[float, str]:
        evict(fd)
        start = time.perf_counter()
        try:
            count = os.preadv(nonblocking, [buffer], block * BLOCK)
        except OSError as exc:
            return 0.0, errno_name(exc)
        elapsed = time.perf_counter() - start
        return elapsed, f"{count} bytes after {duration(elapsed)}: no EAGAIN"

    def read_nowait(block: int) -> tuple[float, str]:
        evict(fd)
        start = time.perf_counter()
        try:
            count = os.preadv(fd, [buffer], block * BLOCK, os.RWF_NOWAIT)
            return 1.0, f"{count} bytes (it was cached after all)"
        except OSError as exc:
            elapsed = time.perf_counter() - start
            return elapsed, f"{errno_name(exc)} after {duration(elapsed)}: it did not wait"

    try:
        best("read() with O_NONBLOCK, block not cached", read_nonblocking, blocks)
    finally:
        os.close(nonblocking)
    best("preadv2(RWF_NOWAIT), block not cached", read_nowait, blocks)

    block = blocks.take()
    evict(fd)
    with contextlib.suppress(OSError):
        os.preadv(fd, [buffer], block * BLOCK, os.RWF_NOWAIT)
    time.sleep(0.001)
    try:
        count = os.preadv(fd, [buffer], block * BLOCK, os.RWF_NOWAIT)
        outcome = f"{count} bytes: the miss had started a read"
    except OSError as exc:
        outcome = f"{errno_name(exc)} again: the miss did not start a read"
    show("the same preadv2(RWF_NOWAIT) 1 ms later", outcome)

    writer = os.open(path, os.O_WRONLY)
    try:
        os.pwritev(writer, [buffer], 0, os.RWF_NOWAIT)
        outcome = "written without blocking"
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            outcome = f"EOPNOTSUPP: {kind} cannot try a buffered write without blocking"
        else:
            outcome = f"{errno_name(exc)}: it would have blocked"
    finally:
        os.fsync(writer)
        os.close(writer)
    show("pwritev2(RWF_NOWAIT), buffered", outcome)


def _direct(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        show("O_DIRECT", f"refused ({errno_name(exc)}): no direct I/O on this filesystem")
        return None


def linux_aio(path: Path, fd: int, blocks: Blocks) -> None:
    print("Asynchronous I/O, Linux AIO: io_submit starts operations, io_getevents reaps them")
    aio = importlib.import_module("libaio.libaio")  # python-libaio's ctypes layer
    context = aio.io_context_t()
    aio.io_setup(4, ctypes.byref(context))
    direct = _direct(path)
    try:
        with aligned_buffer() as address:

            def submit(descriptor: int) -> Try:
                def attempt(block: int) -> tuple[float, str]:
                    evict(fd)
                    iocb = aio.iocb()
                    aio.io_prep_pread(
                        iocb, descriptor, ctypes.c_void_p(address), BLOCK, block * BLOCK
                    )
                    iocbs = (aio.iocb_p * 1)(ctypes.pointer(iocb))
                    events = (aio.io_event * 1)()
                    start = time.perf_counter()
                    aio.io_submit(context, 1, iocbs)
                    submitted = time.perf_counter()
                    inside = submitted - start
                    if aio.io_getevents(context, 0, 1, events, ctypes.byref(aio.timespec(0, 0))):
                        return inside, f"returned after {duration(inside)}, the read done"
                    aio.io_getevents(context, 1, 1, events, None)
                    later = time.perf_counter() - submitted
                    return inside, (
                        f"returned after {duration(inside)}, completion {duration(later)} later"
                    )

                return attempt

            best("io_submit, buffered, block not cached", submit(fd), blocks)
            if direct is not None:
                best("io_submit, O_DIRECT", submit(direct), blocks)
    finally:
        if direct is not None:
            os.close(direct)
        aio.io_destroy(context)


def io_uring(path: Path, fd: int, blocks: Blocks) -> None:
    print(
        "Asynchronous I/O, io_uring: a submission ring and a completion ring shared with the kernel"
    )
    reason = uring.probe()
    if reason is not None:
        show("io_uring", f"not available: {reason}")
        return
    workers_before = iou_workers()
    with uring.Ring(32) as ring, aligned_buffer() as address:

        def submit(block: int) -> tuple[float, str]:
            evict(fd)
            ring.prepare(uring.OP_READ, fd, address, BLOCK, block * BLOCK, 0, 1)
            start = time.perf_counter()
            ring.submit()
            inside = time.perf_counter() - start
            if ring.reap():
                return inside, f"returned after {duration(inside)}, the read done"
            ring.wait()
            ring.reap()
            later = time.perf_counter() - start - inside
            return inside, f"returned after {duration(inside)}, completion {duration(later)} later"

        best("io_uring_enter, buffered, block not cached", submit, blocks)

        evict(fd)
        for index in range(16):
            ring.prepare(uring.OP_READ, fd, address, BLOCK, blocks.take() * BLOCK, 0, index)
        ring.submit()
        reaped = len(ring.reap())
        while reaped < 16:
            ring.wait()
            reaped += len(ring.reap())
        show(
            "16 cold buffered reads at once",
            f"io-wq worker threads: {iou_workers() - workers_before} (the page cache calls back)",
        )

        writer = os.open(path, os.O_WRONLY)
        try:
            ring.prepare(uring.OP_WRITE, writer, address, BLOCK, 0, 0, 99)
            ring.submit()
            ring.wait()
            ring.reap()
        finally:
            os.fsync(writer)
            os.close(writer)
        show(
            "one buffered write",
            f"io-wq worker threads: {iou_workers() - workers_before} "
            "(it would block: punted to a worker)",
        )


def filesystem_type(path: Path) -> str:
    result = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="where to write the 64 MiB test file")
    args = parser.parse_args()
    kind = filesystem_type(args.directory)
    if kind == "tmpfs":
        print(f"io_techniques: {args.directory} is on tmpfs: it has no disk to wait for")
        return 1
    path = args.directory / "techniques.dat"
    with open(path, "wb") as file:
        for _ in range(FILE_SIZE // (1 << 20)):
            file.write(os.urandom(1 << 20))
        file.flush()
        os.fsync(file.fileno())  # clean pages: fadvise(DONTNEED) can drop all of them
    fd = os.open(path, os.O_RDONLY)
    blocks = Blocks()
    try:
        print(f"{path}: 64 MiB on {kind}, evicted from the page cache before each try\n")
        event_based(fd, blocks)
        non_blocking(path, fd, kind, blocks)
        linux_aio(path, fd, blocks)
        io_uring(path, fd, blocks)
    finally:
        os.close(fd)
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
