"""A small io_uring ring over the raw system calls, through ctypes (no liburing).

Owned rather than imported: the packaged bindings do not work here (see
``/work/shared/research/io-engines.md``), and the engine needs little: READ, WRITE and
FSYNC, a way for an event loop to learn of completions, and a probe that says why
io_uring cannot be used.

`Ring` is synchronous and single-threaded: `prepare` writes a submission queue entry
(SQE), `submit` hands every prepared SQE to the kernel with one ``io_uring_enter``,
`reap` returns the completion queue entries (CQEs) posted since the last call, and
`wait` blocks until some are. Each SQE carries a caller-chosen ``user_data`` that comes
back in its CQE. The caller keeps every buffer it passed alive, at the same address,
until the CQE for it has been reaped: the kernel writes into (or reads from) it until
then. An event loop can poll `Ring.fd` itself: it is readable while CQEs wait to be
reaped, and reaping resets it. (An eventfd registered with `register_eventfd` is
signalled for each CQE instead, and has to be read to be reset.)

Memory ordering. The rings are shared memory, and Python does plain loads and stores.
That is enough on x86_64 (total store order), which `probe` insists on:

- Submission: no SQPOLL thread is used, so the kernel reads the SQ tail and the SQEs,
  and moves the SQ head, only inside ``io_uring_enter``; the system call orders our
  earlier stores before it. So `submit` reads the head back once and `prepare` works
  from that copy, touching no shared memory but the SQE. The SQ array is filled once
  (slot i names SQE i) and never written again.
- Completion: the kernel writes a CQE, then stores the CQ tail with release semantics.
  We load the tail first, then the CQEs (x86 does not reorder loads with loads), and
  store the new CQ head only after reading them (nor loads with later stores).
- Each 32-bit head or tail is read and written through a ``memoryview`` cast to
  ``"I"``: CPython copies the aligned item with one 4-byte move, so the kernel never
  sees half of an update.

Sizes: the CQ has twice as many entries as the SQ (the kernel's default), so a caller
that keeps at most `Ring.entries` operations in flight can never overflow it.

Setup flags: IORING_SETUP_SUBMIT_ALL (a failed SQE does not stop the rest of a batch)
and IORING_SETUP_COOP_TASKRUN: completions from interrupts are run as task work when
the submitting thread next enters the kernel (or wakes it when it sleeps, e.g. in
epoll_wait) instead of interrupting it with an IPI while it runs. An event loop enters
the kernel every tick, so nothing waits longer for it; the registered eventfd is still
signalled for every CQE. Older kernels refuse unknown flags with EINVAL, and the setup
is tried again without them. IORING_SETUP_DEFER_TASKRUN is not used: it posts CQEs only
inside an ``io_uring_enter`` with GETEVENTS, which a caller waiting on the eventfd would
have to add to every wake-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import struct
import sys
import types
import weakref
from typing import Final

from . import seccomp

# -- from <linux/io_uring.h> -------------------------------------------------------------
_NR_SETUP: Final = 425
_NR_ENTER: Final = 426
_NR_REGISTER: Final = 427

OP_NOP: Final = 0
OP_FSYNC: Final = 3
OP_READ: Final = 22  # Linux 5.6
OP_WRITE: Final = 23
#: A command for the file's driver (``file_operations.uring_cmd``; Linux 5.19): the
#: command number goes in the SQE's offset field, its argument in `command` bytes after
#: byte 48 (16 bytes, or 80 on a ring made with ``sqe128``).
OP_URING_CMD: Final = 46
#: `OP_FSYNC` flag: fdatasync(2) rather than fsync(2).
FSYNC_DATASYNC: Final = 1 << 0

_SETUP_CLAMP: Final = 1 << 4  # clamp too large a size instead of failing
_SETUP_SUBMIT_ALL: Final = 1 << 7  # keep submitting after an SQE fails (Linux 5.18)
_SETUP_COOP_TASKRUN: Final = 1 << 8  # no IPI to post completions (Linux 5.19)
_SETUP_SQE128: Final = 1 << 10  # 128-byte SQEs, room for a command's argument (Linux 5.19)
#: Flags tried in turn until the kernel accepts a set (EINVAL: it lacks one).
_SETUP_FLAGS: tuple[int, ...] = (
    _SETUP_CLAMP | _SETUP_SUBMIT_ALL | _SETUP_COOP_TASKRUN,
    _SETUP_CLAMP | _SETUP_SUBMIT_ALL,
    _SETUP_CLAMP,
)
_FEAT_SINGLE_MMAP: Final = 1 << 0  # SQ and CQ rings share one mapping (Linux 5.4)
_OFF_SQ_RING: Final = 0
_OFF_CQ_RING: Final = 0x8000000
_OFF_SQES: Final = 0x10000000
_ENTER_GETEVENTS: Final = 1 << 0
_REGISTER_EVENTFD: Final = 4
_UNREGISTER_EVENTFD: Final = 5
_REGISTER_PROBE: Final = 8
_PROBE_OPS: Final = 256
_OP_SUPPORTED: Final = 1 << 0

#: Most entries a ring may have (IORING_MAX_ENTRIES).
MAX_ENTRIES: Final = 32768
#: Most bytes one read or write transfers (the kernel's MAX_RW_COUNT); ask for less.
MAX_LENGTH: Final = 0x7FFFF000

# struct io_uring_params: 10 u32, then io_sqring_offsets and io_cqring_offsets
# (8 u32 and a u64 each).
_PARAMS: Final = struct.Struct("<10I8IQ8IQ")
# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, op flags,
# user_data; the rest (buf_index, personality, splice_fd_in, addr3) stays zero.
_SQE: Final = struct.Struct("<BBHiQQIIQ24x")
_SQE_SIZE: Final = _SQE.size
#: Where an `OP_URING_CMD`'s argument starts in its SQE (``sqe->cmd``).
_SQE_COMMAND: Final = 48
_SQE_USER_DATA: Final = struct.Struct("<32xQ")
# struct io_uring_cqe (16 bytes): user_data, res, flags.
_CQE: Final = struct.Struct("<QiI")
_U32: Final = 0xFFFFFFFF

_LIBC_NAME = ctypes.util.find_library("c") or "libc.so.6"
# Setup, register and waiting may block or are rare: those calls release the GIL. The
# submitting io_uring_enter never waits (no GETEVENTS), so it keeps the GIL, which
# saves a release and reacquire on the hot path. Neither sets argtypes: converting
# through them costs ~2 µs a call here; plain ints travel as sign-extended C ints,
# which is what syscall(2) then reads as longs. Pointers go as c_void_p.
_syscall = ctypes.CDLL(_LIBC_NAME, use_errno=True)["syscall"]
_syscall.restype = ctypes.c_long
_syscall_keep_gil = ctypes.PyDLL(_LIBC_NAME, use_errno=True)["syscall"]
_syscall_keep_gil.restype = ctypes.c_long


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def check(res: int) -> int:
    """*res* of a CQE if it is a result, else the `OSError` its negative errno means."""
    if res < 0:
        raise OSError(-res, os.strerror(-res))
    return res


def next_power_of_two(n: int) -> int:
    """The smallest power of two that is at least *n* (and at least 1)."""
    return 1 << max(0, n - 1).bit_length()


class RingFull(Exception):
    """Every SQE is prepared and not yet submitted: `submit` before preparing more."""


class Ring:
    """One io_uring instance: its fd, its shared mappings and its local indices.

    *entries* SQEs, rounded up to a power of two by the kernel (`Ring.entries` says how
    many it gave). With *sqe128* each SQE has 128 bytes (IORING_SETUP_SQE128), as
    commands with an argument longer than 16 bytes need (`prepare_command`). Not
    thread-safe: one owner submits and reaps. ``with Ring(n) as ring:`` closes it; so
    does garbage collection, for the fd.
    """

    def __init__(self, entries: int, *, sqe128: bool = False) -> None:
        if not 1 <= entries <= MAX_ENTRIES:
            raise ValueError(f"entries must be between 1 and {MAX_ENTRIES}, not {entries}")
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._sqe_size = 2 * _SQE_SIZE if sqe128 else _SQE_SIZE
        params = bytearray(_PARAMS.size)
        self.fd = self._setup(entries, params, _SETUP_SQE128 if sqe128 else 0)
        # The fd is closed exactly once: by close(), or when the ring is collected.
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        try:
            self._map_rings(params)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _setup(entries: int, params: bytearray, required: int) -> int:
        address = ctypes.addressof(ctypes.c_char.from_buffer(params))
        for flags in _SETUP_FLAGS:
            params[:] = bytes(len(params))
            struct.pack_into("<I", params, 8, flags | required)
            fd = _syscall(_NR_SETUP, entries, ctypes.c_void_p(address))
            if fd >= 0:
                return int(fd)
            if ctypes.get_errno() != errno.EINVAL:
                break  # EINVAL: an older kernel without some flag; try with fewer
        raise _oserror("io_uring_setup")

    def _map_rings(self, params: bytearray) -> None:
        fields: tuple[int, ...] = _PARAMS.unpack(params)
        self.entries = fields[0]
        self.cq_entries = fields[1]
        self.features = fields[5]
        sq_head, sq_tail, sq_mask, _, _, _, sq_array, _, _ = fields[10:19]
        cq_head, cq_tail, cq_mask, _, _, cqes, _, _, _ = fields[19:28]

        sq_size = sq_array + self.entries * 4
        cq_size = cqes + self.cq_entries * _CQE.size
        if self.features & _FEAT_SINGLE_MMAP:
            sq_map = cq_map = self._map(max(sq_size, cq_size), _OFF_SQ_RING)
        else:
            sq_map = self._map(sq_size, _OFF_SQ_RING)
            cq_map = self._map(cq_size, _OFF_CQ_RING)
        sqe_map = self._map(self.entries * self._sqe_size, _OFF_SQES)

        self._sq = self._view(sq_map).cast("I")
        self._cq = self._sq if cq_map is sq_map else self._view(cq_map).cast("I")
        self._views += [self._sq, self._cq]  # released before the views they derive from
        self._sqes = self._view(sqe_map)
        self._cqes = self._view(cq_map)[cqes : cqes + self.cq_entries * _CQE.size]
        self._views.append(self._cqes)

        # Indices of the shared u32 fields in those views.
        self._sq_head_i = sq_head // 4
        self._sq_tail_i = sq_tail // 4
        self._cq_head_i = cq_head // 4
        self._cq_tail_i = cq_tail // 4
        self._sq_mask: int = self._sq[sq_mask // 4]
        self._cq_mask: int = self._cq[cq_mask // 4]
        # Slot i of the SQ array always names SQE i: SQEs are used in ring order.
        first = sq_array // 4
        for i in range(self.entries):
            self._sq[first + i] = i
        # Local copies: only we move the SQ tail and the CQ head, and the kernel moves
        # the SQ head only inside io_uring_enter (no SQPOLL), so `submit` reads it
        # back. The SQ indices count on past 2**32 here; the rings see them masked.
        self._sq_tail: int = self._sq[self._sq_tail_i]
        self._sq_head: int = self._sq[self._sq_head_i]
        self._cq_head: int = self._cq[self._cq_head_i]
        self._pack_sqe = _SQE.pack_into

    def _map(self, size: int, offset: int) -> mmap.mmap:
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        mapping = mmap.mmap(
            self.fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )
        self._maps.append(mapping)
        return mapping

    def _view(self, mapping: mmap.mmap) -> memoryview:
        view = memoryview(mapping)
        self._views.append(view)
        return view

    # -- submitting ----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """SQEs prepared and not yet taken by the kernel."""
        return self._sq_tail - self._sq_head

    def prepare(
        self,
        opcode: int,
        fd: int,
        address: int,
        length: int,
        offset: int,
        op_flags: int,
        user_data: int,
    ) -> None:
        """Write one SQE; the kernel sees it at the next `submit`.

        *address* and *length* describe the buffer of `OP_READ`/`OP_WRITE` (0 for
        `OP_FSYNC`, whose *op_flags* may be `FSYNC_DATASYNC`). *offset* must be >= 0
        (``-1`` would mean "the file position" to the kernel, so it is refused here).
        """
        tail = self._sq_tail
        if tail - self._sq_head >= self.entries:
            raise RingFull(f"all {self.entries} SQEs are waiting to be submitted")
        # On the hot path: one call into struct, no shared-memory read.
        self._pack_sqe(
            self._sqes,
            (tail & self._sq_mask) * self._sqe_size,
            opcode,
            0,
            0,
            fd,
            offset,
            address,
            length,
            op_flags,
            user_data,
        )
        self._sq_tail = tail + 1

    def prepare_command(
        self, fd: int, command_op: int, address: int, length: int, user_data: int, command: bytes
    ) -> None:
        """Write one `OP_URING_CMD` SQE for *fd*'s driver: command *command_op* with the
        argument bytes *command* (at most 16, or 80 with ``sqe128``), and *address* and
        *length* for the driver to read as it defines them."""
        tail = self._sq_tail
        if len(command) > self._sqe_size - _SQE_COMMAND:
            raise ValueError(f"a command argument of {len(command)} bytes does not fit")
        self.prepare(OP_URING_CMD, fd, address, length, command_op, 0, user_data)
        start = (tail & self._sq_mask) * self._sqe_size + _SQE_COMMAND
        self._sqes[start : start + len(command)] = command

    def submit(self) -> int:
        """Hand every prepared SQE to the kernel with as few system calls as it takes.

        Never waits for completions. Returns how many SQEs the kernel took; raises
        `OSError` if ``io_uring_enter`` fails (the rest stay `pending`).
        """
        pending = self._sq_tail - self._sq_head
        if not pending:
            return 0
        self._sq[self._sq_tail_i] = self._sq_tail & _U32  # publish; the call orders it
        taken = 0
        try:
            while taken < pending:
                count = _syscall_keep_gil(_NR_ENTER, self.fd, pending - taken, 0, 0, 0, 0)
                if count < 0:
                    if ctypes.get_errno() == errno.EINTR:
                        continue
                    raise _oserror("io_uring_enter")
                if count == 0:
                    break  # nothing more it will take now; the rest stays pending
                taken += count
        finally:
            # The kernel's head moved by what it took (read back, not assumed).
            self._sq_head += (self._sq[self._sq_head_i] - self._sq_head) & _U32
        return taken

    def discard_pending(self) -> list[int]:
        """Take back the SQEs the kernel has not taken; return their ``user_data``."""
        head = self._sq_head
        discarded = [
            _SQE_USER_DATA.unpack_from(self._sqes, ((head + i) & self._sq_mask) * self._sqe_size)[0]
            for i in range(self._sq_tail - head)
        ]
        self._sq_tail = head
        self._sq[self._sq_tail_i] = head & _U32  # safe: without SQPOLL the kernel reads it in enter
        return discarded

    # -- completing ----------------------------------------------------------------------
    def reap(self) -> list[tuple[int, int, int]]:
        """The CQEs posted since the last call, oldest first: ``(user_data, res, flags)``.

        A negative *res* is ``-errno`` (see `check`).
        """
        head = self._cq_head
        tail: int = self._cq[self._cq_tail_i]  # load the tail before the entries
        count = (tail - head) & _U32
        if not count:
            return []
        start = head & self._cq_mask
        first = min(count, self.cq_entries - start)
        size = _CQE.size
        cqes = list(_CQE.iter_unpack(self._cqes[start * size : (start + first) * size]))
        if first < count:  # the entries wrap around the end of the ring
            cqes += _CQE.iter_unpack(self._cqes[: (count - first) * size])
        self._cq_head = tail
        self._cq[self._cq_head_i] = tail  # release the entries, after reading them
        return cqes

    def wait(self, count: int = 1) -> None:
        """Block (releasing the GIL) until at least *count* CQEs are waiting."""
        while _syscall(_NR_ENTER, self.fd, 0, count, _ENTER_GETEVENTS, 0, 0) < 0:
            if ctypes.get_errno() != errno.EINTR:
                raise _oserror("io_uring_enter")

    # -- registration --------------------------------------------------------------------
    def _register(self, opcode: int, argument: ctypes.c_void_p | None, count: int) -> None:
        if _syscall(_NR_REGISTER, self.fd, opcode, argument, count) < 0:
            raise _oserror("io_uring_register")

    def register_eventfd(self, eventfd: int) -> None:
        """Have the kernel signal *eventfd* for every CQE it posts.

        The ring holds its own reference to the eventfd: the caller may close its fd
        at any time (trio needs `trio.lowlevel.notify_closing` first if it waits on it).
        """
        value = ctypes.c_int(eventfd)
        self._register(_REGISTER_EVENTFD, ctypes.c_void_p(ctypes.addressof(value)), 1)

    def unregister_eventfd(self) -> None:
        self._register(_UNREGISTER_EVENTFD, None, 0)

    def supported_ops(self) -> frozenset[int]:
        """The opcodes this kernel's io_uring implements (IORING_REGISTER_PROBE)."""
        probe = bytearray(16 + _PROBE_OPS * 8)
        address = ctypes.addressof(ctypes.c_char.from_buffer(probe))
        self._register(_REGISTER_PROBE, ctypes.c_void_p(address), _PROBE_OPS)
        last_op = probe[0]
        return frozenset(
            op
            for op in range(min(last_op + 1, _PROBE_OPS))
            if struct.unpack_from("<H", probe, 16 + op * 8 + 2)[0] & _OP_SUPPORTED
        )

    # -- closing -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._close_fd.alive

    def close(self) -> None:
        """Unmap the rings and close the ring fd. Idempotent.

        Nothing should be in flight: the kernel cancels what still is, and a buffer it
        was using may already be gone.
        """
        for view in reversed(self._views):
            view.release()
        self._views.clear()
        for mapping in self._maps:
            mapping.close()  # closes the fd that mmap keeps a duplicate of
        self._maps.clear()
        self._close_fd()

    def __enter__(self) -> Ring:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()


#: What the engine needs from the kernel, by name.
_NEEDED_OPS: Final = {OP_READ: "IORING_OP_READ", OP_WRITE: "IORING_OP_WRITE", OP_FSYNC: "FSYNC"}


def _sysctl(name: str) -> int | None:
    try:
        with open(f"/proc/sys/kernel/{name}") as file:
            return int(file.read())
    except (OSError, ValueError):
        return None


def probe() -> str | None:
    """None if io_uring works here as `Ring` uses it, else one sentence saying why not."""
    if sys.platform != "linux":
        return "io_uring is a Linux interface"
    machine = platform.machine()
    if machine != "x86_64":
        return f"the ring's memory ordering is only written for x86_64, not {machine}"
    disabled = _sysctl("io_uring_disabled")
    if disabled == 2:
        return "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)"
    try:
        with Ring(2) as ring:
            try:
                supported = ring.supported_ops()
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                supported = frozenset()  # no IORING_REGISTER_PROBE: older than Linux 5.6
            eventfd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                ring.register_eventfd(eventfd)  # the ring holds its own reference
            finally:
                os.close(eventfd)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            if seccomp.seccomp_filtered():
                return "io_uring_setup is not available (ENOSYS): a seccomp filter hides it"
            return "this kernel has no io_uring (built without CONFIG_IO_URING)"
        if exc.errno == errno.EPERM:
            if disabled == 1:
                return (
                    "io_uring is restricted to privileged processes and the group "
                    "kernel.io_uring_group (sysctl kernel.io_uring_disabled = 1)"
                )
            if seccomp.seccomp_filtered():
                return "io_uring_setup is refused (EPERM) by a seccomp filter on this process"
        return f"io_uring cannot be set up here: {exc.strerror}"
    missing = [name for op, name in _NEEDED_OPS.items() if op not in supported]
    if missing:
        return f"this kernel's io_uring lacks {', '.join(missing)} (needs Linux 5.6 or later)"
    return None
