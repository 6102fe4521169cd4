"""Loop lag, the one definition every figure named "loop lag" uses.

**Loop lag** is how late the trio event loop wakes a task that sleeps until a deadline:
``trio.current_time()`` on waking minus the deadline, in nanoseconds. It is time the
loop spent on other work (or blocked in a system call, or waiting for a CPU) when it
should have been scheduling, and every FUSE request waits through the same lag before
its handler starts. It includes the loop's own timer resolution, up to 1 ms: epoll
waits in whole milliseconds, rounded up.

**Net loop lag** is the loop lag less the time the loop's thread waited for a CPU
meanwhile (``run_delay`` in /proc/thread-self/schedstat): on a shared machine other
processes delay the wake-up too, and that part says nothing about the code on the loop.

The daemon's statistics (``loop_lag`` in `iofs.stats`, ``iofs stats``/``top``, the
``daemon`` figures of ``iofs bench``) and the engine benchmark (``iofs engines --bench``,
`iofs.engine_bench`) both record it with `heartbeat`; only the interval differs (the
daemon's 10 ms, the benchmark's ``--heartbeat-ms``, 1 ms), and each says which it uses.
This docstring is the definition (docs/engine-bench.md points here).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

#: Where Linux reports the calling thread's CPU wait (its second field, in ns).
_SCHEDSTAT = "/proc/thread-self/schedstat"


def _run_delay(fd: int) -> int:
    return int(os.pread(fd, 128, 0).split()[1])


async def heartbeat(
    record: Callable[[int], object],
    interval: float,
    record_net: Callable[[int], object] | None = None,
) -> None:
    """Sleep until a deadline *interval* seconds ahead, forever; pass each wake-up's loop
    lag (ns) to *record*, and its net loop lag to *record_net* where the kernel reports
    CPU waits (see the module docstring)."""
    schedstat = -1
    if record_net is not None:
        try:  # opened on the loop thread, so it describes that thread
            schedstat = os.open(_SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            schedstat = -1
    try:
        while True:
            waited = _run_delay(schedstat) if schedstat >= 0 else 0
            deadline = trio.current_time() + interval
            await trio.sleep_until(deadline)
            lag = round((trio.current_time() - deadline) * 1e9)
            record(lag)
            if schedstat >= 0 and record_net is not None:
                record_net(max(0, lag - (_run_delay(schedstat) - waited)))
    finally:
        if schedstat >= 0:
            os.close(schedstat)
