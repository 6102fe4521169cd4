"""The FUSE wire protocol (7.x) as the dev transport speaks it: opcodes, flags, layouts.

Layouts follow libfuse's ``include/fuse_kernel.h`` (protocol 7.45) and the kernel's
``fs/fuse``; all little-endian on the machines iofs runs on (native byte order, as the
kernel writes them). Each layout is one precompiled `struct.Struct`.
"""

from __future__ import annotations

import struct
from typing import Final

KERNEL_VERSION: Final = 7
#: The newest minor version whose layouts and rules this module follows.
KERNEL_MINOR_VERSION: Final = 45
#: The oldest kernel protocol the dev transport serves (7.31: Linux 5.4).
OLDEST_MINOR_VERSION: Final = 31
ROOT_ID: Final = 1
#: The kernel refuses reads into smaller buffers (FUSE_MIN_READ_BUFFER).
MIN_READ_BUFFER: Final = 8192

# -- opcodes ------------------------------------------------------------------------------
LOOKUP: Final = 1
FORGET: Final = 2
GETATTR: Final = 3
SETATTR: Final = 4
READLINK: Final = 5
SYMLINK: Final = 6
MKNOD: Final = 8
MKDIR: Final = 9
UNLINK: Final = 10
RMDIR: Final = 11
RENAME: Final = 12
LINK: Final = 13
OPEN: Final = 14
READ: Final = 15
WRITE: Final = 16
STATFS: Final = 17
RELEASE: Final = 18
FSYNC: Final = 20
SETXATTR: Final = 21
GETXATTR: Final = 22
LISTXATTR: Final = 23
REMOVEXATTR: Final = 24
FLUSH: Final = 25
INIT: Final = 26
OPENDIR: Final = 27
READDIR: Final = 28
RELEASEDIR: Final = 29
FSYNCDIR: Final = 30
GETLK: Final = 31
SETLK: Final = 32
SETLKW: Final = 33
ACCESS: Final = 34
CREATE: Final = 35
INTERRUPT: Final = 36
BMAP: Final = 37
DESTROY: Final = 38
IOCTL: Final = 39
POLL: Final = 40
NOTIFY_REPLY: Final = 41
BATCH_FORGET: Final = 42
FALLOCATE: Final = 43
READDIRPLUS: Final = 44
RENAME2: Final = 45
LSEEK: Final = 46
COPY_FILE_RANGE: Final = 47
SYNCFS: Final = 50
TMPFILE: Final = 51
STATX: Final = 52

#: Opcode -> name, for logs.
OPCODE_NAMES: Final = {
    LOOKUP: "lookup",
    FORGET: "forget",
    GETATTR: "getattr",
    SETATTR: "setattr",
    READLINK: "readlink",
    SYMLINK: "symlink",
    MKNOD: "mknod",
    MKDIR: "mkdir",
    UNLINK: "unlink",
    RMDIR: "rmdir",
    RENAME: "rename",
    LINK: "link",
    OPEN: "open",
    READ: "read",
    WRITE: "write",
    STATFS: "statfs",
    RELEASE: "release",
    FSYNC: "fsync",
    SETXATTR: "setxattr",
    GETXATTR: "getxattr",
    LISTXATTR: "listxattr",
    REMOVEXATTR: "removexattr",
    FLUSH: "flush",
    INIT: "init",
    OPENDIR: "opendir",
    READDIR: "readdir",
    RELEASEDIR: "releasedir",
    FSYNCDIR: "fsyncdir",
    GETLK: "getlk",
    SETLK: "setlk",
    SETLKW: "setlkw",
    ACCESS: "access",
    CREATE: "create",
    INTERRUPT: "interrupt",
    BMAP: "bmap",
    DESTROY: "destroy",
    IOCTL: "ioctl",
    POLL: "poll",
    NOTIFY_REPLY: "notify_reply",
    BATCH_FORGET: "batch_forget",
    FALLOCATE: "fallocate",
    READDIRPLUS: "readdirplus",
    RENAME2: "rename2",
    LSEEK: "lseek",
    COPY_FILE_RANGE: "copy_file_range",
    SYNCFS: "syncfs",
    TMPFILE: "tmpfile",
    STATX: "statx",
}

# -- INIT flags (fuse_init_in/out.flags, flags2 << 32) -------------------------------------
ASYNC_READ: Final = 1 << 0
POSIX_LOCKS: Final = 1 << 1
ATOMIC_O_TRUNC: Final = 1 << 3
EXPORT_SUPPORT: Final = 1 << 4
BIG_WRITES: Final = 1 << 5
DONT_MASK: Final = 1 << 6
FLOCK_LOCKS: Final = 1 << 10
AUTO_INVAL_DATA: Final = 1 << 12
DO_READDIRPLUS: Final = 1 << 13
READDIRPLUS_AUTO: Final = 1 << 14
ASYNC_DIO: Final = 1 << 15
WRITEBACK_CACHE: Final = 1 << 16
PARALLEL_DIROPS: Final = 1 << 18
HANDLE_KILLPRIV: Final = 1 << 19
POSIX_ACL: Final = 1 << 20
MAX_PAGES: Final = 1 << 22
HANDLE_KILLPRIV_V2: Final = 1 << 28
SETXATTR_EXT: Final = 1 << 29
INIT_EXT: Final = 1 << 30
DIRECT_IO_ALLOW_MMAP: Final = 1 << 36
PASSTHROUGH: Final = 1 << 37
OVER_IO_URING: Final = 1 << 41

#: Names of the capabilities iofs may negotiate, for statistics and logs.
CAPABILITY_NAMES: Final = {
    ASYNC_READ: "async_read",
    ATOMIC_O_TRUNC: "atomic_o_trunc",
    EXPORT_SUPPORT: "export_support",
    BIG_WRITES: "big_writes",
    AUTO_INVAL_DATA: "auto_inval_data",
    DO_READDIRPLUS: "readdirplus",
    ASYNC_DIO: "async_dio",
    WRITEBACK_CACHE: "writeback_cache",
    PARALLEL_DIROPS: "parallel_dirops",
    MAX_PAGES: "max_pages",
    HANDLE_KILLPRIV_V2: "handle_killpriv_v2",
    DIRECT_IO_ALLOW_MMAP: "direct_io_allow_mmap",
    PASSTHROUGH: "passthrough",
}

# -- other flags --------------------------------------------------------------------------
FATTR_MODE: Final = 1 << 0
FATTR_UID: Final = 1 << 1
FATTR_GID: Final = 1 << 2
FATTR_SIZE: Final = 1 << 3
FATTR_ATIME: Final = 1 << 4
FATTR_MTIME: Final = 1 << 5
FATTR_FH: Final = 1 << 6
FATTR_ATIME_NOW: Final = 1 << 7
FATTR_MTIME_NOW: Final = 1 << 8
FATTR_CTIME: Final = 1 << 10
FATTR_KILL_SUIDGID: Final = 1 << 11

FOPEN_DIRECT_IO: Final = 1 << 0
FOPEN_KEEP_CACHE: Final = 1 << 1
FOPEN_NONSEEKABLE: Final = 1 << 2
FOPEN_PARALLEL_DIRECT_WRITES: Final = 1 << 6
#: Reads and writes of this open file go to the backing file named by backing_id.
FOPEN_PASSTHROUGH: Final = 1 << 7

WRITE_KILL_SUIDGID: Final = 1 << 2  # fuse_write_in.write_flags
OPEN_KILL_SUIDGID: Final = 1 << 0  # fuse_open_in/fuse_create_in.open_flags
FSYNC_FDATASYNC: Final = 1 << 0
#: The bit of fuse_out_header.unique that marks the reply to an INTERRUPT.
INT_REQ_BIT: Final = 1 << 0

# -- layouts ------------------------------------------------------------------------------
#: fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER: Final = struct.Struct("<IIQQIIIHH")
#: fuse_out_header: len, error (negative errno), unique
OUT_HEADER: Final = struct.Struct("<IiQ")
#: fuse_attr: ino size blocks atime mtime ctime, their nsec, mode nlink uid gid rdev
#: blksize flags (times signed: the kernel reads them as time64_t)
ATTR: Final = "QQQqqqIIIIIIIIII"
ENTRY_OUT: Final = struct.Struct("<QQQQII" + ATTR)
ATTR_OUT: Final = struct.Struct("<QII" + ATTR)
OPEN_OUT: Final = struct.Struct("<QIi")
WRITE_OUT: Final = struct.Struct("<II")
STATFS_OUT: Final = struct.Struct("<QQQQQIIII24x")
GETXATTR_OUT: Final = struct.Struct("<II")
INIT_IN: Final = struct.Struct("<IIII")  # major minor max_readahead flags
INIT_IN_FLAGS2: Final = struct.Struct("<I")  # after the above, from 7.36
#: fuse_init_out: major minor max_readahead flags max_background congestion_threshold
#: max_write time_gran max_pages map_alignment flags2 max_stack_depth request_timeout
INIT_OUT: Final = struct.Struct("<IIIIHHIIHHIIH22x")
FORGET_IN: Final = struct.Struct("<Q")
BATCH_FORGET_IN: Final = struct.Struct("<II")
FORGET_ONE: Final = struct.Struct("<QQ")
GETATTR_IN: Final = struct.Struct("<IIQ")
#: fuse_setattr_in: valid padding fh size lock_owner atime mtime ctime atimensec
#: mtimensec ctimensec mode unused uid gid unused
SETATTR_IN: Final = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN: Final = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN: Final = struct.Struct("<II")  # mode umask
RENAME_IN: Final = struct.Struct("<Q")
RENAME2_IN: Final = struct.Struct("<QII")
LINK_IN: Final = struct.Struct("<Q")
OPEN_IN: Final = struct.Struct("<II")  # flags open_flags
CREATE_IN: Final = struct.Struct("<IIII")  # flags mode umask open_flags
RELEASE_IN: Final = struct.Struct("<QIIQ")
FLUSH_IN: Final = struct.Struct("<QIIQ")
READ_IN: Final = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN: Final = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags pad
FSYNC_IN: Final = struct.Struct("<QII")
SETXATTR_IN: Final = struct.Struct("<II")  # size flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN: Final = struct.Struct("<II")  # size padding
ACCESS_IN: Final = struct.Struct("<II")
INTERRUPT_IN: Final = struct.Struct("<Q")
FALLOCATE_IN: Final = struct.Struct("<QQQII")  # fh offset length mode padding
DIRENT: Final = struct.Struct("<QQII")  # ino off namelen type, then the name, 8-aligned
#: fuse_backing_map: fd flags padding (FUSE_DEV_IOC_BACKING_OPEN's argument)
BACKING_MAP: Final = struct.Struct("<iIQ")
BACKING_ID: Final = struct.Struct("<I")  # FUSE_DEV_IOC_BACKING_CLOSE's argument

# -- /dev/fuse ioctls (_IOW(229, nr, size): direction 1 << 30, size << 16) ----------------
_IOC_WRITE: Final = 1 << 30
FUSE_DEV_IOC_MAGIC: Final = 229
#: Register a backing file (CAP_SYS_ADMIN): returns its id for fuse_open_out.backing_id.
FUSE_DEV_IOC_BACKING_OPEN: Final = _IOC_WRITE | BACKING_MAP.size << 16 | FUSE_DEV_IOC_MAGIC << 8 | 1
FUSE_DEV_IOC_BACKING_CLOSE: Final = _IOC_WRITE | BACKING_ID.size << 16 | FUSE_DEV_IOC_MAGIC << 8 | 2
#: How deep filesystems may stack on the mount's backing files: 1, they are on plain
#: filesystems (not on another FUSE passthrough mount or overlayfs).
MAX_STACK_DEPTH: Final = 1
