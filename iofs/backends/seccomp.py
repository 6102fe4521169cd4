"""Whether a seccomp filter restricts this process: engines name it when the kernel
refuses a system call they probe (io_setup, io_uring_setup) with ENOSYS or EPERM."""

from __future__ import annotations

import contextlib


def seccomp_filtered() -> bool:
    """True if a seccomp filter restricts this process's system calls."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Seccomp:"):
                return line.split()[1] == "2"
    return False
