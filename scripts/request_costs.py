#!/usr/bin/env python3
"""What the daemon's own Python costs per FUSE request on the dev transport, without
the kernel: requests built by hand go through `DevTransport._dispatch` to a real
`Filesystem` over a backing directory, and the replies into /dev/null.

Usage: scripts/request_costs.py [--count N] [--rounds R] [--dir DIR]

Measured, each the median of N requests (R rounds, the median round printed):

- the requests of one ``unlink(2)`` of a file the kernel knows, as fio's ``filedelete``
  job makes them: GETATTR of the directory (its attributes were invalidated by the
  previous unlink), LOOKUP of the name (the kernel's entry expired), UNLINK, FORGET;
- the requests of one ``open(O_CREAT)`` and ``close`` of a new file, as fio's
  ``filecreate`` job makes them: GETATTR of the directory, LOOKUP of the missing name,
  CREATE, FLUSH, RELEASE;
- a 4 KiB WRITE and a 4 KiB READ of a 16 MiB file in blocking mode, each served
  inline by the reader (what ``randwrite-4k-buffered`` and ``randread-4k-qd16-direct``
  cost the daemon besides the kernel's read(2) and writev(2)).

No mount, no root: the backing directory is made under ``--dir`` (default /dev/shm, so
that the disk is out of the picture). Timings are this machine's at this moment:
compare two checkouts side by side (``--iofs-root``), not figures across runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _request(opcode: int, unique: int, nodeid: int, body: bytes = b"") -> bytes:
    from iofs.transport import protocol as p

    size = p.IN_HEADER.size + len(body)
    return p.IN_HEADER.pack(size, opcode, unique, nodeid, 0, 0, os.getpid(), 0, 0) + body


async def _measure(backing: Path, count: int) -> dict[str, float]:
    """Median microseconds per request of each kind."""
    import trio

    from iofs.backends import EngineConfig, create_engine
    from iofs.fs import Filesystem
    from iofs.inodes import key_of
    from iofs.transport import protocol as p
    from iofs.transport.dev import DevTransport

    root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY)
    fs = Filesystem(root_fd, create_engine("blocking", EngineConfig()))
    transport = DevTransport()
    transport.fs = fs
    fs.transport = transport
    transport.fd = os.open(os.devnull, os.O_WRONLY)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    unique = 0
    times: dict[str, list[float]] = {}

    async def send(opcode: int, nodeid: int, body: bytes = b"", kind: str = "") -> None:
        nonlocal unique
        unique += 2
        raw = _request(opcode, unique, nodeid, body)
        buffer[: len(raw)] = raw
        started = time.perf_counter()
        await transport._dispatch(view, len(raw))
        if kind:
            times.setdefault(kind, []).append(time.perf_counter() - started)

    def node(path: Path) -> int:
        inode = fs.inodes.find(key_of(os.lstat(path)))
        assert inode is not None
        return inode.id

    try:
        async with trio.open_nursery() as nursery:
            transport._nursery = nursery
            fs.start(nursery)
            directory = backing / "d"
            directory.mkdir()
            await send(p.LOOKUP, p.ROOT_ID, b"d\0")
            d = node(directory)
            names = [b"f.0.%d" % i for i in range(count)]
            for name in names:
                (directory / os.fsdecode(name)).write_bytes(b"x" * 4096)
                await send(p.LOOKUP, d, name + b"\0")  # as the layout did: the kernel knows it
            getattr_in = p.GETATTR_IN.pack(0, 0, 0)
            for name in names:
                inode = node(directory / os.fsdecode(name))
                await send(p.GETATTR, d, getattr_in, "unlink: getattr (directory)")
                await send(p.LOOKUP, d, name + b"\0", "unlink: lookup")
                await send(p.UNLINK, d, name + b"\0", "unlink: unlink")
                await send(p.FORGET, inode, p.FORGET_IN.pack(2), "unlink: forget")

            # fio's filecreate: GETATTR of the directory (changed by the previous create),
            # LOOKUP of the new name (missing), CREATE, FLUSH and RELEASE at close.
            create_in = p.CREATE_IN.pack(os.O_CREAT | os.O_WRONLY, 0o100644, 0o022, 0)
            for name in (b"c.0.%d" % i for i in range(count)):
                await send(p.GETATTR, d, getattr_in, "create: getattr (directory)")
                await send(p.LOOKUP, d, name + b"\0", "create: lookup (missing)")
                await send(p.CREATE, d, create_in + name + b"\0", "create: create")
                [(fh, opened)] = fs._files.items()
                flush_in = p.FLUSH_IN.pack(fh, 0, 0, 0)
                await send(p.FLUSH, opened.id, flush_in, "create: flush")
                release_in = p.RELEASE_IN.pack(fh, os.O_WRONLY, 0, 0)
                await send(p.RELEASE, opened.id, release_in, "create: release")

            data_file = backing / "data"
            with open(data_file, "wb") as f:
                f.truncate(16 << 20)
            await send(p.LOOKUP, p.ROOT_ID, b"data\0")
            inode = node(data_file)
            info = await fs.open(inode, os.O_RDWR, None)  # type: ignore[arg-type]
            payload = os.urandom(4096)
            for _ in range(count):
                offset = random.randrange(4096) * 4096
                write_in = p.WRITE_IN.pack(info.fh, offset, 4096, 0, 0, 0, 0)
                await send(p.WRITE, inode, write_in + payload, "write 4 KiB (blocking)")
                read_in = p.READ_IN.pack(info.fh, offset, 4096, 0, 0, 0, 0)
                await send(p.READ, inode, read_in, "read 4 KiB (blocking)")
            await fs.release(info.fh)
            nursery.cancel_scope.cancel()
    finally:
        os.close(transport.fd)
        fs.close()
        os.close(root_fd)
    return {kind: statistics.median(values) * 1e6 for kind, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="requests of each kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument(
        "--iofs-root", type=Path, default=ROOT, help="the checkout whose iofs to measure"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.iofs_root))
    import trio

    rounds = []
    for _ in range(args.rounds):
        backing = Path(tempfile.mkdtemp(prefix="iofs-costs-", dir=args.dir))
        try:
            rounds.append(trio.run(_measure, backing, args.count))
        finally:
            shutil.rmtree(backing, ignore_errors=True)
    print(f"iofs from {args.iofs_root}; median us per request, {args.rounds} rounds:")
    for kind in rounds[0]:
        figures = [r[kind] for r in rounds]
        shown = ", ".join(f"{f:.1f}" for f in figures)
        print(f"  {kind:30} {statistics.median(figures):6.1f}  ({shown})")
    for op, what in (("unlink", "the four"), ("create", "the five")):
        cycle = [sum(v for k, v in r.items() if k.startswith(op + ":")) for r in rounds]
        print(f"  {op + ': ' + what:30} {statistics.median(cycle):6.1f}")


if __name__ == "__main__":
    main()
