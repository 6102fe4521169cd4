"""An iofs daemon whose engines corrupt fio's data on purpose: a soak must notice.

Run as ``python -m tests.corrupting_daemon mount ...`` (same arguments as ``iofs``).
Every registered engine is replaced by a subclass whose `write` flips one byte in the
middle of every `CORRUPT_EVERY`-th block that fio writes with a verification header
(it starts with fio's magic, 0xacca little-endian) and reports success: silent
corruption, in every mode. Other writes (the soak's own checked workloads) are left
alone, so that the test knows which check must catch it.
"""

from __future__ import annotations

import sys

from iofs.backends import ENGINES, Buffer, Engine
from iofs.cli import main

#: One fio block in this many (per engine instance) is corrupted.
CORRUPT_EVERY = 50

#: How every block fio writes with ``verify=`` begins (struct verify_header's magic).
FIO_VERIFY_MAGIC = b"\xca\xac"


async def _corrupting_write(self: Engine, fd: int, offset: int, data: Buffer) -> int:
    if bytes(data[:2]) == FIO_VERIFY_MAGIC:
        seen = getattr(self, "_fio_blocks_seen", 0) + 1
        self._fio_blocks_seen = seen  # type: ignore[attr-defined]
        if seen % CORRUPT_EVERY == 0:
            corrupted = bytearray(data)
            corrupted[len(corrupted) // 2] ^= 0xFF
            data = corrupted
    return await Engine.write(self, fd, offset, data)


def corrupting(cls: type[Engine]) -> type[Engine]:
    """*cls* with a `write` that silently corrupts (see the module docstring)."""
    return type(f"Corrupting{cls.__name__}", (cls,), {"write": _corrupting_write})


if __name__ == "__main__":
    for name, cls in list(ENGINES.items()):
        ENGINES[name] = corrupting(cls)
    sys.exit(main())
