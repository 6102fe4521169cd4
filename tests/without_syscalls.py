"""Run a command with some system calls refused, as a seccomp filter on a locked-down host would.

``python -m tests.without_syscalls io_uring_setup,io_setup -- COMMAND...`` makes the named
calls fail with ENOSYS in COMMAND and its children, and nowhere else: a per-process way
to test what iofs does when io_uring or Linux AIO is missing, without touching the
machine-wide ``kernel.io_uring_disabled`` sysctl that other processes depend on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

#: x86_64 system call numbers of the calls tests may take away.
SYSCALLS = {"io_uring_setup": 425, "io_setup": 206}

_AUDIT_ARCH_X86_64 = 0xC000003E
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06


def _filter(numbers: list[int]) -> bytes:
    """A classic-BPF program: the listed calls return ENOSYS, everything else runs."""
    # seccomp_data: nr at offset 0, arch at offset 4.
    program = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64), (_RET_K, 0, 0, _RET_ALLOW)]
    program.append((_LD_W_ABS, 0, 0, 0))
    for index, number in enumerate(numbers):
        remaining = len(numbers) - index - 1
        # Match: jump over the remaining tests and the ALLOW to the ERRNO return.
        program.append((_JEQ_K, remaining + 1, 0, number))
    program += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


def install(names: list[str]) -> None:
    if platform.machine() != "x86_64":
        raise OSError(errno.ENOTSUP, "only written for x86_64")
    code = _filter([SYSCALLS[name] for name in names])
    buffer = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def main() -> None:
    names, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: python -m tests.without_syscalls CALL[,CALL...] -- COMMAND...")
    install(names.split(","))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
