"""What the kernel-async engines (aio, io_uring) share: buffer addresses for the kernel,
and the lifecycle of their completion reaper task."""

from __future__ import annotations

import abc
import contextlib
import ctypes
from collections.abc import Iterator

import trio

from .base import Buffer, Engine, EngineConfig


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


class ReapedEngine(Engine):
    """An engine whose completions are collected by one background task.

    `start` runs `_reap_completions` (named *reaper_name*) in the caller's nursery,
    inside ``self._reaper_scope``; the reaper sets ``self._reaper_done`` when it leaves.
    Until it runs, ``self._reaper_running`` is False and waiting tasks must not park.
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._reaper_scope: trio.CancelScope | None = None
        self._reaper_running = False
        self._reaper_done = trio.Event()

    @abc.abstractmethod
    async def _reap_completions(self) -> None: ...

    def start(self, nursery: trio.Nursery) -> None:
        if self._reaper_scope is not None:
            raise RuntimeError(f"engine {self.name} is already started")
        self._reaper_scope = trio.CancelScope()
        try:
            nursery.start_soon(self._reap_completions, name=f"iofs-{self.name}-reaper")
        except BaseException:
            self._reaper_scope = None
            raise
        self._reaper_running = True  # from now on, waiting tasks park for the reaper

    async def _stop_reaper(self) -> None:
        """Stop the reaper (from `_shutdown`, when nothing is in flight) and wait for it."""
        if self._reaper_scope is not None:
            self._reaper_scope.cancel()
            with trio.CancelScope(shield=True):  # it leaves at once: nothing is in flight
                await self._reaper_done.wait()
