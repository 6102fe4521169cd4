"""An iofs daemon whose engine has a bug on purpose, to test what the daemon does with bugs.

Run as ``python -m tests.faulty_daemon mount ...`` (same arguments as ``iofs``).
A read at offset 13 * 4096 raises RuntimeError; everything else works normally.
"""

from __future__ import annotations

import sys

from iofs.backends import ENGINES, Buffer
from iofs.backends.blocking import BlockingEngine
from iofs.cli import main

POISONED_OFFSET = 13 * 4096


class FaultyEngine(BlockingEngine):
    name = "faulty"

    async def _pread(self, fd: int, size: int, offset: int) -> Buffer:
        if offset == POISONED_OFFSET:
            raise RuntimeError("injected engine bug")
        return await super()._pread(fd, size, offset)


if __name__ == "__main__":
    ENGINES[FaultyEngine.name] = FaultyEngine
    sys.exit(main())
