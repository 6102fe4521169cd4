"""The pyfuse3 transport: libfuse 3 reads /dev/fuse, pyfuse3 runs the handlers on trio."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyfuse3


class Pyfuse3Transport:
    name = "pyfuse3"

    def __init__(self) -> None:
        self._mounted = False

    def mount(self, fs: pyfuse3.Operations, mountpoint: Path, options: set[str]) -> None:
        """Raises RuntimeError; libfuse says why on stderr (see `iofs.mount`)."""
        pyfuse3.init(fs, str(mountpoint), options)
        self._mounted = True

    async def serve(self, max_tasks: int) -> None:
        await pyfuse3.main(min_tasks=1, max_tasks=max_tasks)

    def terminate(self) -> None:
        pyfuse3.terminate()

    def close(self, unmount: bool) -> None:
        if self._mounted:
            pyfuse3.close(unmount=unmount)
            self._mounted = False

    def statistics(self) -> Mapping[str, int]:
        return {}
