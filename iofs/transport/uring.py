"""The uring transport: the dev transport's protocol, its requests carried by io_uring.

FUSE over io_uring (Linux 6.14+, ``CONFIG_FUSE_IO_URING``, module parameter
``fuse.enable_uring``; see docs/transports.md). The mount and INIT go over /dev/fuse as
in the dev transport; the INIT reply asks for FUSE_OVER_IO_URING. From then on the
kernel holds every new request back until each of its queues (one per possible CPU)
has a buffer registered, and then hands requests to the queue of the CPU the caller
runs on, through io_uring instead of read(2):

- Each queue has `QUEUE_DEPTH` entries. An entry is a header (``struct
  fuse_uring_req_header``: the in/out header, the opcode's fixed part, and the entry's
  commit id and payload size) and a payload buffer of the negotiated max_write; both
  are registered with one ``IORING_OP_URING_CMD`` SQE (128-byte SQEs, the ``struct
  fuse_uring_cmd_req`` in the SQE's command area) that completes when a request has
  been copied into them.
- The reply goes into the same entry (out header, payload) and one
  FUSE_IO_URING_CMD_COMMIT_AND_FETCH SQE both commits it and gives the entry back for
  the next request, which may complete at once: one system call per request, which
  on /dev/fuse costs a read(2) and a writev(2).
- One ring, on the trio thread, carries every queue (the kernel completes the commands
  as task work of the thread that submitted them). The loop waits on the ring fd;
  each wake-up reaps every CQE posted (a batch), dispatches each request through the
  dev transport's parsers to the same `Filesystem` operations, and submits the
  commits that were answered inline with one ``io_uring_enter``.
- FORGET, BATCH_FORGET and INTERRUPT still come through /dev/fuse (the kernel sends
  them there); the dev transport's reader keeps serving that descriptor.

The header and the opcode's fixed part are copied in front of the payload, into room
reserved before each payload buffer, so a request is one contiguous buffer exactly as
read(2) delivers it, and the dev transport's parsers read it unchanged.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from ..backends import iouring_abi
from . import protocol as p
from .dev import _HEADER_ROOM, MAX_PAGES, MAX_WRITE, DevTransport

log = logging.getLogger(__name__)

#: The fuse module's switch for FUSE over io_uring (absent: the kernel lacks it).
ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")
#: Entries (request buffers) per queue: requests in flight from one CPU at once.
QUEUE_DEPTH = 32

_CMD_REGISTER = 1  # FUSE_IO_URING_CMD_REGISTER
_CMD_COMMIT_AND_FETCH = 2  # FUSE_IO_URING_CMD_COMMIT_AND_FETCH
# struct fuse_uring_cmd_req, in the SQE's command area: flags, commit_id, qid.
_CMD_REQ = struct.Struct("<QQH6x")
# struct fuse_uring_req_header: in_out[128], op_in[128], fuse_uring_ent_in_out
# (flags, commit_id, payload_sz, padding, reserved).
_OP_IN = 128
_OP_IN_SIZE = 128
_ENT_IN_OUT = 256
_ENT = struct.Struct("<QQI4xQ")
_HEADER_SIZE = _ENT_IN_OUT + _ENT.size  # 288, sizeof(struct fuse_uring_req_header)
_PAYLOAD_SIZE_AT = _ENT_IN_OUT + 16
_HEADER_SLOT = 512
#: Room before each payload buffer for the request header and the fixed part.
_FRONT = 4096
#: The kernel's payload buffer size: max(FUSE_MIN_READ_BUFFER, max_write, max_pages pages).
PAYLOAD_SIZE = max(p.MIN_READ_BUFFER, MAX_WRITE, MAX_PAGES * 4096)
_IN_SIZE = p.IN_HEADER.size
_U32 = struct.Struct("<I")
_UNIQUE = struct.Struct("<8xQ")
#: A command ends with these when the connection is gone (unmounted, aborted).
_GONE = frozenset({errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED, errno.ENODEV})


def possible_cpus() -> int:
    """How many queues the kernel makes: one per possible CPU (num_possible_cpus)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def unavailable_reason() -> str | None:
    """None if FUSE over io_uring can be used here (turning ``enable_uring`` on as root
    if need be), else one sentence saying why not. Changes nothing."""
    if not ENABLE_URING.parent.exists():
        return "the fuse module is not loaded (modprobe fuse)"
    if not ENABLE_URING.exists():
        return (
            f"this kernel ({platform.release()}) has no FUSE over io_uring "
            "(it needs Linux 6.14 or later built with CONFIG_FUSE_IO_URING)"
        )
    reason = iouring_abi.probe()
    if reason is not None:
        return reason
    try:
        with iouring_abi.Ring(2, sqe128=True) as ring:
            supported = ring.supported_ops()
    except OSError as exc:
        return f"io_uring cannot make a ring of 128-byte entries here: {exc.strerror}"
    if iouring_abi.OP_URING_CMD not in supported:
        return "this kernel's io_uring lacks IORING_OP_URING_CMD"
    enabled = _enabled()
    if isinstance(enabled, str):
        return enabled
    if not enabled and os.geteuid() != 0:
        return (
            f"FUSE over io_uring is off (fuse module parameter {ENABLE_URING}) "
            "and only root may turn it on"
        )
    return None


def prepare_kernel() -> str | None:
    """Make FUSE over io_uring usable: None if it is, else one sentence saying why not.

    As root, turns the fuse module's ``enable_uring`` on if it is off, and leaves it on:
    it only lets daemons ask for io_uring in INIT (each still has to ask), and another
    iofs mount may be starting with it at the same time.
    """
    reason = unavailable_reason()
    if reason is not None or _enabled() is True:
        return reason
    try:
        ENABLE_URING.write_text("Y\n")
    except OSError as exc:
        return f"cannot turn on {ENABLE_URING}: {exc.strerror}"
    log.info("turned on the fuse module's enable_uring (it stays on)")
    return None


def _enabled() -> bool | str:
    """Whether ``enable_uring`` is on, or why it cannot be read."""
    try:
        return ENABLE_URING.read_text().strip() in ("Y", "1")
    except OSError as exc:
        return f"cannot read {ENABLE_URING}: {exc.strerror}"


class UringTransport(DevTransport):
    """FUSE over io_uring (see the module docstring); INIT, forgets and interrupts on
    /dev/fuse as in `DevTransport`."""

    name = "uring"

    def __init__(self, max_background: int | None = None) -> None:
        super().__init__(max_background=max_background)
        self.queues = 0
        self.queue_depth = 0
        self._ring: iouring_abi.Ring | None = None
        self._headers: mmap.mmap | None = None
        self._payloads: mmap.mmap | None = None
        self._iovecs: Any = None  # ctypes array: each entry's (header, payload) iovec
        self._commit_ids: list[int] = []
        self._queue_of: list[int] = []
        self._last_command: list[int] = []
        #: unique -> entry, for requests that came through the ring and await a reply
        self._by_unique: dict[int, int] = {}
        self._live = 0
        #: set when a reply waits in the SQ ring to be submitted (`_flush_replies`)
        self._replies_waiting = trio.Event()
        self._header_view = memoryview(b"")
        self._payload_view = memoryview(b"")
        self._initialized: trio.Event | None = None
        # counters
        self.ring_requests = 0
        self.ring_wakeups = 0
        self.ring_max_batch = 0
        self.ring_submits = 0
        self.ring_errors = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def serve(self, max_tasks: int) -> None:
        self._max_tasks = max(1, max_tasks)
        self._buffer = bytearray(MAX_WRITE + _HEADER_ROOM)  # the /dev/fuse reader's
        self._initialized = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as loops:
                    loops.start_soon(self._serve_ring, name="iofs-uring")
                    await self._read_requests()
                    loops.cancel_scope.cancel()
        # every handler has replied (or found the connection gone)

    def close(self, unmount: bool) -> None:
        super().close(unmount)
        if self._ring is not None:
            # The buffers stay mapped until this object goes: the kernel may still
            # finish a command it had started as the ring went.
            self._ring.close()
            self._ring = None

    def statistics(self) -> Mapping[str, int]:
        counters = dict(super().statistics())
        counters.update(
            {
                "transport_uring_queues": self.queues,
                "transport_uring_queue_depth": self.queue_depth,
                "transport_uring_requests": self.ring_requests,
                "transport_uring_wakeups": self.ring_wakeups,
                "transport_uring_max_batch": self.ring_max_batch,
                "transport_uring_submits": self.ring_submits,
                "transport_uring_errors": self.ring_errors,
                "fuse_over_io_uring": int(bool(self.flags & p.OVER_IO_URING)),
            }
        )
        return counters

    # -- INIT -----------------------------------------------------------------------------
    def wanted(self, offered: int) -> int:
        return super().wanted(offered) | (p.OVER_IO_URING & offered)

    def _init(self, unique: int, body: memoryview) -> None:
        super()._init(unique, body)
        if self.initialized and self._initialized is not None:
            self._initialized.set()

    # -- the ring -------------------------------------------------------------------------
    async def _serve_ring(self) -> None:
        assert self._initialized is not None
        await self._initialized.wait()
        if not self.flags & p.OVER_IO_URING:
            log.error(
                "the kernel did not offer FUSE over io_uring in INIT (%s off?): "
                "serving over /dev/fuse instead",
                ENABLE_URING,
            )
            return
        try:
            ring = self._register(possible_cpus(), min(QUEUE_DEPTH, self._max_tasks))
        except OSError as exc:
            log.error("cannot register the io_uring queues: %s; serving over /dev/fuse", exc)
            return
        try:
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._flush_replies, ring, name="iofs-uring-flush")
                await self._reap(ring)
                tasks.cancel_scope.cancel()
        finally:
            trio.lowlevel.notify_closing(ring.fd)

    def _register(self, queues: int, depth: int) -> iouring_abi.Ring:
        entries = queues * depth
        self._headers = mmap.mmap(-1, entries * _HEADER_SLOT)
        self._payloads = mmap.mmap(-1, entries * (_FRONT + PAYLOAD_SIZE))
        headers = _address(self._headers)
        payloads = _address(self._payloads)
        self._header_view = memoryview(self._headers)
        self._payload_view = memoryview(self._payloads)
        self._iovecs = (ctypes.c_uint64 * (4 * entries))()
        for entry in range(entries):
            self._iovecs[4 * entry : 4 * entry + 4] = [
                headers + entry * _HEADER_SLOT,
                _HEADER_SIZE,
                payloads + entry * (_FRONT + PAYLOAD_SIZE) + _FRONT,
                PAYLOAD_SIZE,
            ]
        self._commit_ids = [0] * entries
        self._queue_of = [entry // depth for entry in range(entries)]
        self._last_command = [_CMD_REGISTER] * entries
        ring = iouring_abi.Ring(entries, sqe128=True)
        self._ring = ring
        self.queues, self.queue_depth = queues, depth
        for entry in range(entries):
            self._prepare(entry)
        self._live = entries
        self._submit()
        log.info(
            "FUSE over io_uring: %d queues of %d entries, %d KiB payload each",
            queues,
            depth,
            PAYLOAD_SIZE // 1024,
        )
        return ring

    def _prepare(self, entry: int) -> None:
        assert self._ring is not None
        command = self._last_command[entry]
        if command == _CMD_REGISTER:
            address = ctypes.addressof(self._iovecs) + entry * 32
            argument = _CMD_REQ.pack(0, 0, self._queue_of[entry])
            self._ring.prepare_command(self.fd, command, address, 2, entry, argument)
        else:
            argument = _CMD_REQ.pack(0, self._commit_ids[entry], self._queue_of[entry])
            self._ring.prepare_command(self.fd, command, 0, 0, entry, argument)

    def _submit(self) -> None:
        assert self._ring is not None
        try:
            self._ring.submit()
        except OSError as exc:
            # Only the system call failed (EBADF, ENOMEM): the SQEs stay pending and
            # go with the next submit.
            self.ring_errors += 1
            log.error("io_uring_enter failed: %s", exc)
        else:
            self.ring_submits += 1

    async def _reap(self, ring: iouring_abi.Ring) -> None:
        """Take the requests the kernel hands over while this task sleeps."""
        while self._live:
            await trio.lowlevel.wait_readable(ring.fd)
            await self._process(ring.reap())

    async def _flush_replies(self, ring: iouring_abi.Ring) -> None:
        """Commit the replies written since the last flush with one ``io_uring_enter``,
        then take the requests that the commits fetched at once (no wake-up for them)."""
        while True:
            await self._replies_waiting.wait()
            # Replies written from here on (those answered inline below too) set the new
            # one: none is left in the SQ ring unsubmitted.
            self._replies_waiting = trio.Event()
            self._submit()
            await self._process(ring.reap())

    async def _process(self, completions: list[tuple[int, int, int]]) -> None:
        if not completions:
            return
        self.ring_wakeups += 1
        self.wakeups += 1
        self.ring_max_batch = max(self.ring_max_batch, len(completions))
        self.max_batch = max(self.max_batch, len(completions))
        headers, payloads = self._header_view, self._payload_view
        for entry, result, _ in completions:
            if result == 0:
                await self._request(entry, headers, payloads)
            else:
                self._failed(entry, -result)

    def _failed(self, entry: int, code: int) -> None:
        if code in (errno.EAGAIN, errno.EINTR):
            self._prepare(entry)  # not taken yet: the same command again
            return
        self._live -= 1
        if code not in _GONE:
            self.ring_errors += 1
            command = "register" if self._last_command[entry] == _CMD_REGISTER else "commit"
            log.error("FUSE io_uring %s of entry %d failed: %s", command, entry, os.strerror(code))

    async def _request(self, entry: int, headers: memoryview, payloads: memoryview) -> None:
        """Entry *entry* holds a request: dispatch it as read(2) would have returned it."""
        at = entry * _HEADER_SLOT
        size, _, unique = struct.unpack_from("<IIQ", headers, at)
        _, commit_id, payload_size, _ = _ENT.unpack_from(headers, at + _ENT_IN_OUT)
        self._commit_ids[entry] = commit_id
        self._last_command[entry] = _CMD_COMMIT_AND_FETCH
        self.ring_requests += 1
        self.requests += 1
        fixed = size - _IN_SIZE - payload_size
        if not 0 <= fixed <= _OP_IN_SIZE or payload_size > PAYLOAD_SIZE:
            self.malformed += 1
            log.warning(
                "FUSE request %d of %d bytes with %d in the payload", unique, size, payload_size
            )
            self._commit(entry, [p.OUT_HEADER.pack(p.OUT_HEADER.size, -errno.EIO, unique)])
            return
        body = entry * (_FRONT + PAYLOAD_SIZE) + _FRONT
        start = body - fixed - _IN_SIZE
        payloads[start : start + _IN_SIZE] = headers[at : at + _IN_SIZE]
        payloads[start + _IN_SIZE : body] = headers[at + _OP_IN : at + _OP_IN + fixed]
        self._by_unique[unique] = entry
        # Never inline: a ring request that waited would hand the reading of /dev/fuse
        # on to a second reader while the first still waits on it, and stall the ring.
        await self._dispatch(payloads[start : body + payload_size], size, may_inline=False)

    # -- replying -----------------------------------------------------------------------
    def _send(self, parts: list[Any]) -> None:
        (unique,) = _UNIQUE.unpack_from(parts[0])
        entry = self._by_unique.pop(unique, None)
        if entry is None:
            super()._send(parts)  # a request read from /dev/fuse
        else:
            self._commit(entry, parts)

    def _commit(self, entry: int, parts: list[Any]) -> None:
        """Write the reply into *entry* and give the entry back to the kernel."""
        if self._ring is None or self._headers is None or self._payloads is None:
            self.abandoned_replies += 1  # the ring is gone: so is the request
            return
        header = parts[0]
        body = entry * (_FRONT + PAYLOAD_SIZE) + _FRONT
        length = 0
        for part in parts[1:]:
            size = len(part)
            if length + size > PAYLOAD_SIZE:
                (unique,) = _UNIQUE.unpack_from(header)
                log.error("a reply of more than %d bytes to request %d", PAYLOAD_SIZE, unique)
                header = p.OUT_HEADER.pack(p.OUT_HEADER.size, -errno.EIO, unique)
                length = 0
                break
            self._payloads[body + length : body + length + size] = part
            length += size
        at = entry * _HEADER_SLOT
        self._headers[at : at + p.OUT_HEADER.size] = header
        _U32.pack_into(self._headers, at + _PAYLOAD_SIZE_AT, length)
        self._prepare(entry)
        # The handlers that run in this scheduling batch add theirs; one submit for all.
        self._replies_waiting.set()


def _address(buffer: mmap.mmap) -> int:
    """The address of *buffer*'s first byte (the mapping stays where it is)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
