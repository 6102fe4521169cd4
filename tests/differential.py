"""Helpers to run the same operation on the mount and on a plain directory and compare."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

Outcome = tuple[str, object]


def outcome(fn: Callable[[], object]) -> Outcome:
    """("ok", result) or ("error", errno name): comparable across the two trees."""
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("error", errno.errorcode.get(exc.errno or 0, exc.errno))


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(
        sorted(
            (n, os.getxattr(path, n, follow_symlinks=False)) for n in names if n.startswith("user.")
        )
    )


def describe(path: str, st: os.stat_result) -> tuple[object, ...]:
    """What must be equal about one node in both trees (not times, not inode numbers)."""
    kind = stat.S_IFMT(st.st_mode)
    content: object = None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size
    return (
        kind,
        oct(stat.S_IMODE(st.st_mode)),
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        size,
        st.st_rdev,
        content,
        _xattrs(path),
    )


def snapshot(root: Path) -> dict[str, object]:
    """Every node under *root*, described, plus which paths are hard links of each other."""
    nodes: dict[str, object] = {}
    by_inode: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            nodes[rel] = describe(path, st)
            if not stat.S_ISDIR(st.st_mode):
                by_inode.setdefault(st.st_ino, []).append(rel)
    links = sorted(sorted(paths) for paths in by_inode.values() if len(paths) > 1)
    nodes["<hard links>"] = links
    return nodes
