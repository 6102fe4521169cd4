"""Writers that remember what each successful fsync or fdatasync acknowledged.

A test runs them through a mount, disturbs the mount (switches its mode, kills its
daemon...), and afterwards checks that every acknowledged byte is still there. Records
describe themselves and carry a digest, so a check tells a stale or torn record from a
current one without trusting anything but the acknowledgements.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import random
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

RECORD = 4096

Sync = Literal["fsync", "fdatasync"]


def record(index: int, generation: int) -> bytes:
    """A 4 KiB record that says which slot and generation it is, with its own digest."""
    body = struct.pack("<QQ", index, generation) * ((RECORD - 32) // 16)
    return body + hashlib.sha256(body).digest()


def parse_record(data: bytes) -> tuple[int, int] | None:
    """(slot, generation) of a whole, intact record; None for anything else."""
    if len(data) != RECORD:
        return None
    index, generation = struct.unpack_from("<QQ", data)
    return (index, generation) if data == record(index, generation) else None


def entry(name: str, sequence: int, size: int) -> bytes:
    """The *sequence*-th log entry of the writer *name*: *size* bytes nobody else writes."""
    seed = hashlib.sha256(f"{name}:{sequence}:{size}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class AckedWriter(abc.ABC):
    """Writes one file in batches, each ended by a sync; what a sync that returned
    acknowledged is remembered. `run` may be called again (say, through a new mount) and
    goes on where it stopped; `problems` checks the file's contents afterwards."""

    def __init__(self, name: str, sync: Sync, seed: int, batch: int = 8) -> None:
        self.name, self.sync, self.batch = name, sync, batch
        self.random = random.Random(seed)
        self.syncs = 0  # batches acknowledged, over all runs
        self.error: OSError | None = None  # what ended the last run, if not the stop event

    @property
    def label(self) -> str:
        return f"{type(self).__name__} {self.name} ({self.sync})"

    def run(self, directory: Path, stop: threading.Event) -> None:
        """Write until *stop* is set or an operation fails (kept in `error`)."""
        self.error = None
        fd = os.open(directory / self.name, self._open_flags(), 0o644)
        try:
            while not stop.is_set():
                pending = [self._write(fd) for _ in range(self.batch)]
                os.fsync(fd) if self.sync == "fsync" else os.fdatasync(fd)
                self._acknowledge(pending)
                self.syncs += 1
        except OSError as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN on a dead mount
                os.close(fd)

    def thread(self, directory: Path, stop: threading.Event) -> threading.Thread:
        # A daemon thread: if a write hangs on a dead mount the test fails instead of
        # the interpreter waiting for it forever.
        return threading.Thread(
            target=self.run, args=(directory, stop), name=self.label, daemon=True
        )

    def _open_flags(self) -> int:
        return os.O_RDWR | os.O_CREAT

    @abc.abstractmethod
    def _write(self, fd: int) -> tuple[int, int]:
        """Write once; return what to remember once the next sync succeeds."""

    @abc.abstractmethod
    def _acknowledge(self, pending: Sequence[tuple[int, int]]) -> None: ...

    @abc.abstractmethod
    def problems(self, data: bytes) -> list[str]:
        """Everything acknowledged that *data* (the whole file) does not hold."""


class SlotWriter(AckedWriter):
    """Overwrites 4 KiB records in place, in its own *slots* of a file that other slot
    writers may share; every write has a new generation."""

    def __init__(
        self, name: str, sync: Sync, seed: int, slots: Sequence[int], batch: int = 8
    ) -> None:
        super().__init__(name, sync, seed, batch)
        self.slots = slots
        self.generation = 0
        self.acknowledged: dict[int, int] = {}  # slot -> generation acknowledged
        self.attempted: dict[int, int] = {}  # slot -> newest generation written

    def _write(self, fd: int) -> tuple[int, int]:
        slot = self.random.choice(self.slots)
        self.generation += 1
        self.attempted[slot] = self.generation
        os.pwrite(fd, record(slot, self.generation), slot * RECORD)
        return slot, self.generation

    def _acknowledge(self, pending: Sequence[tuple[int, int]]) -> None:
        for slot, generation in pending:
            self.acknowledged[slot] = max(self.acknowledged.get(slot, 0), generation)

    def problems(self, data: bytes) -> list[str]:
        found = []
        for slot, generation in sorted(self.acknowledged.items()):
            held = parse_record(data[slot * RECORD : (slot + 1) * RECORD])
            # A later write may have landed without being acknowledged: newer is fine.
            if (
                held is None
                or held[0] != slot
                or not (generation <= held[1] <= self.attempted[slot])
            ):
                found.append(f"{self.label}: slot {slot} holds {held}, acked {generation}")
        return found


class AppendWriter(AckedWriter):
    """Appends entries of odd sizes, through O_APPEND or by pwrite at the end."""

    def __init__(self, name: str, sync: Sync, seed: int, o_append: bool, batch: int = 8) -> None:
        super().__init__(name, sync, seed, batch)
        self.o_append = o_append
        self.sequence = 0
        self.end: int | None = None  # where the next entry goes (known after open)
        self.sizes: dict[int, int] = {}  # sequence -> size
        self.acknowledged: list[tuple[int, int]] = []  # (offset, sequence)

    def _open_flags(self) -> int:
        return super()._open_flags() | (os.O_APPEND if self.o_append else 0)

    def run(self, directory: Path, stop: threading.Event) -> None:
        self.end = None  # a failed run may have left a torn entry: go on after it
        super().run(directory, stop)

    def _write(self, fd: int) -> tuple[int, int]:
        if self.end is None:
            self.end = os.fstat(fd).st_size
        self.sequence += 1
        size = self.random.randrange(100, 40_000)
        self.sizes[self.sequence] = size
        data = memoryview(entry(self.name, self.sequence, size))
        offset, done = self.end, 0
        while done < size:  # a write cut short (the mount going away) is retried
            if self.o_append:
                done += os.write(fd, data[done:])
            else:
                done += os.pwrite(fd, data[done:], offset + done)
        self.end = offset + size
        return offset, self.sequence

    def _acknowledge(self, pending: Sequence[tuple[int, int]]) -> None:
        self.acknowledged.extend(pending)

    def problems(self, data: bytes) -> list[str]:
        found = []
        for offset, sequence in self.acknowledged:
            size = self.sizes[sequence]
            if data[offset : offset + size] != entry(self.name, sequence, size):
                found.append(f"{self.label}: entry {sequence} at {offset} is not intact")
        return found
