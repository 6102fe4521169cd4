"""The few Linux system calls the `os` module does not offer, through ctypes.

Each wrapper raises `OSError` with the call's errno, like the `os` functions do, so
that callers treat them alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from typing import Final, Literal

AT_FDCWD = -100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
#: For `utimensat`: set this time to the current time, as the kernel sees it.
NOW: Final = "now"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int


_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any *mode* (FALLOC_FL_KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, ...)."""
    if _fallocate(fd, mode, offset, length) != 0:
        _raise_errno("fallocate")


def _raise_errno(what: str, path: bytes | None = None) -> None:
    err = ctypes.get_errno()
    if path is None:
        raise OSError(err, f"{what}: {os.strerror(err)}")
    raise OSError(err, os.strerror(err), os.fsdecode(path))


def renameat2(
    old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes, flags: int = 0
) -> None:
    """renameat2(2): rename with RENAME_NOREPLACE / RENAME_EXCHANGE."""
    if _renameat2(old_dir_fd, old_name, new_dir_fd, new_name, flags) != 0:
        _raise_errno("renameat2", old_name)


def _timespec(ns: int | Literal["now"] | None) -> _Timespec:
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    if ns == NOW:
        return _Timespec(0, UTIME_NOW)
    sec, nsec = divmod(ns, 1_000_000_000)
    return _Timespec(sec, nsec)


def utimensat(
    path: bytes,
    atime_ns: int | Literal["now"] | None,
    mtime_ns: int | Literal["now"] | None,
) -> None:
    """Set atime and/or mtime of *path* (following symlinks).

    Each time is nanoseconds since the epoch, `NOW`, or None to leave it as it is.
    """
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    if _utimensat(AT_FDCWD, path, times, 0) != 0:
        _raise_errno("utimensat", path)


# -- file handles (name_to_handle_at / open_by_handle_at) --------------------------------
AT_EMPTY_PATH = 0x1000
#: The largest handle the kernel hands out (MAX_HANDLE_SZ in linux/exportfs.h).
MAX_HANDLE_SZ = 128


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(_FileHandle),
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
]
_name_to_handle_at.restype = ctypes.c_int
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int


def handle_of(fd: int) -> tuple[bytes, int]:
    """name_to_handle_at(2) of what *fd* refers to: (handle, mount id).

    The handle is the type (4 bytes, native order) followed by the handle's bytes, a
    compact form for `open_by_handle`. EOPNOTSUPP if the filesystem exports none.
    """
    handle = _FileHandle(MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    if _name_to_handle_at(fd, b"", ctypes.byref(handle), ctypes.byref(mount_id), AT_EMPTY_PATH):
        _raise_errno("name_to_handle_at")
    kind = handle.handle_type.to_bytes(4, "little", signed=True)
    return kind + bytes(handle.f_handle[: handle.handle_bytes]), mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2) of a handle from `handle_of`, on the filesystem of *mount_fd*.

    Needs CAP_DAC_READ_SEARCH (EPERM otherwise); ESTALE once the file is gone.
    """
    data = handle[4:]
    native = _FileHandle(len(data), int.from_bytes(handle[:4], "little", signed=True))
    ctypes.memmove(native.f_handle, data, len(data))
    fd: int = _open_by_handle_at(mount_fd, ctypes.byref(native), flags | os.O_CLOEXEC)
    if fd < 0:
        _raise_errno("open_by_handle_at")
    return fd


_mmap = _libc.mmap
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,
]
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mincore = _libc.mincore
_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def cached_fraction(fd: int, size: int) -> float | None:
    """Share of the first *size* bytes of *fd* in the page cache (mincore(2) over a
    shared read-only mapping), or None if that cannot be told."""
    if size <= 0:
        return None
    address = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        return None
    try:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        if _mincore(address, size, vector) != 0:
            return None
        return sum(1 for byte in bytes(vector) if byte & 1) / pages
    finally:
        _munmap(address, size)
