"""Addresses of Python buffers, for engines that hand them to the kernel (aio, io_uring):
the kernel reads from or writes to them until the operation completes."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

from .base import Buffer


def address_of(buffer: memoryview) -> int:
    """The address of *buffer*'s first byte (0 if it is empty); it must be writable."""
    if not buffer.nbytes:
        return 0
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def bytes_address(data: bytes) -> int:
    """The address of the first byte of *data* (read-only, so not through from_buffer)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


@contextlib.contextmanager
def write_source(data: Buffer) -> Iterator[int]:
    """The address the kernel may read *data* from, held in place for the block."""
    if isinstance(data, bytes):
        yield bytes_address(data)  # immutable: our reference keeps the bytes in place
        return
    pin = memoryview(data)  # holds a bytearray's bytes in place (no resize) meanwhile
    if pin.readonly:  # e.g. a view of bytes: ctypes cannot take its address
        copy = pin.tobytes()
        pin.release()
        yield bytes_address(copy)
        return
    try:
        yield address_of(pin)
    finally:
        pin.release()
