"""Workloads that check their own results, for ``iofs soak``.

Each runs on any directory (an iofs mount, or a plain directory in the tests), one
operation at a time on the calling thread. System call failures propagate as `OSError`;
a read that differs from what was written raises `CheckFailed` with one line.

- `MetadataChurn` creates, renames, links, unlinks, makes and removes directories, sets
  and removes extended attributes, truncates and reads back files below a directory,
  keeping a model of what the tree must hold; `MetadataChurn.check` compares a tree
  (the mount, or its backing directory) with the model: names, contents, link counts,
  hard-link groups and ``user.`` attributes.
- `Journal` writes 4 KiB records into the slots of one file, an fsync or fdatasync after
  each batch, and remembers the batches that were acknowledged; `Journal.verify` checks
  that a file (the mount's, or the backing file after unmounting) holds each slot's last
  acknowledged record.
- `MappedWriter` writes into one file through a MAP_SHARED mapping (what SQLite's WAL
  index and LMDB do), msyncs, and checks the file through read() and through the
  mapping against a model of its bytes; it unmaps and maps again now and then, so that
  new opens meet whatever setting the mount has. `MappedWriter.verify` checks a file.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class CheckFailed(Exception):
    """What was read back differs from what was written (one line)."""


# -- metadata churn ----------------------------------------------------------------------
@dataclass
class _File:
    """One file (an inode) of the model: its bytes and its ``user.`` attributes."""

    content: bytes
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class _Tree:
    """What a directory tree holds, in the terms `MetadataChurn.check` compares."""

    dirs: frozenset[str]
    #: relative path -> (sha256 of the content, link count, sorted ``user.`` attributes)
    files: dict[str, tuple[str, int, tuple[tuple[str, bytes], ...]]]
    #: names that are hard links of one another, each group as a set
    groups: frozenset[frozenset[str]]


#: Relative weights of the operations `MetadataChurn.step` picks from.
CHURN_WEIGHTS: dict[str, int] = {
    "create": 20,
    "rename": 12,
    "rename_dir": 2,
    "link": 6,
    "unlink": 14,
    "mkdir": 4,
    "rmdir": 3,
    "setxattr": 8,
    "removexattr": 2,
    "truncate": 8,
    "read": 20,
}

_XATTR_NAMES = tuple(f"user.soak.{i}" for i in range(4))


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


class MetadataChurn:
    """Random metadata operations below *root*, checked against a model of the tree.

    Names are never reused (``f<n>``, ``d<n>``), except by renames that replace a file
    on purpose. *max_files* and *max_dirs* bound the tree: at the bound, creates and
    mkdirs give way to unlinks and rmdirs.
    """

    def __init__(self, root: Path, seed: int, max_files: int = 200, max_dirs: int = 30) -> None:
        self.root = root
        self.max_files, self.max_dirs = max_files, max_dirs
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._files: dict[int, _File] = {}
        self._names: dict[str, int] = {}  # relative path -> key of `_files`
        self._dirs: set[str] = {""}  # relative paths; "" is the root
        self._next = 0

    @property
    def operations(self) -> int:
        return sum(self.counts.values())

    def _new_name(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next}"

    def _path(self, relative: str) -> Path:
        return self.root / relative if relative else self.root

    def _join(self, directory: str, name: str) -> str:
        return f"{directory}/{name}" if directory else name

    def _links(self, key: int) -> list[str]:
        return [name for name, k in self._names.items() if k == key]

    def _content(self) -> bytes:
        size = self._random.choice((0, 1, 100, 4096, 5000, 65536, self._random.randrange(70000)))
        return self._random.randbytes(size)

    # -- one operation -------------------------------------------------------------------
    def step(self) -> str:
        """Do one operation the model allows; return its name."""
        while True:
            (operation,) = self._random.choices(
                list(CHURN_WEIGHTS), weights=list(CHURN_WEIGHTS.values())
            )
            if getattr(self, f"_{operation}")():
                self.counts[operation] += 1
                return operation

    def _create(self) -> bool:
        if len(self._names) >= self.max_files:
            return False
        name = self._join(self._random.choice(sorted(self._dirs)), self._new_name("f"))
        content = self._content()
        fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        key = self._next
        self._files[key] = _File(content)
        self._names[name] = key
        return True

    def _rename(self) -> bool:
        if not self._names:
            return False
        source = self._random.choice(sorted(self._names))
        key = self._names[source]
        others = [n for n, k in self._names.items() if k != key]
        if others and self._random.random() < 0.25:
            target = self._random.choice(sorted(others))  # replaces another file
        else:
            target = self._join(self._random.choice(sorted(self._dirs)), self._new_name("f"))
        os.rename(self._path(source), self._path(target))
        replaced = self._names.pop(target, None)
        del self._names[source]
        self._names[target] = key
        if replaced is not None and not self._links(replaced):
            del self._files[replaced]
        return True

    def _rename_dir(self) -> bool:
        candidates = sorted(self._dirs - {""})
        if not candidates:
            return False
        source = self._random.choice(candidates)
        parents = [d for d in sorted(self._dirs) if d != source and not _under(d, source)]
        target = self._join(self._random.choice(parents), self._new_name("d"))
        os.rename(self._path(source), self._path(target))

        def moved(path: str) -> str:
            return target + path[len(source) :] if path == source or _under(path, source) else path

        self._dirs = {moved(d) for d in self._dirs}
        self._names = {moved(n): k for n, k in self._names.items()}
        return True

    def _link(self) -> bool:
        if not self._names or len(self._names) >= self.max_files:
            return False
        source = self._random.choice(sorted(self._names))
        target = self._join(self._random.choice(sorted(self._dirs)), self._new_name("f"))
        os.link(self._path(source), self._path(target))
        self._names[target] = self._names[source]
        return True

    def _unlink(self) -> bool:
        if not self._names:
            return False
        name = self._random.choice(sorted(self._names))
        os.unlink(self._path(name))
        key = self._names.pop(name)
        if not self._links(key):
            del self._files[key]
        return True

    def _mkdir(self) -> bool:
        parents = [d for d in sorted(self._dirs) if d.count("/") < 3]
        if len(self._dirs) >= self.max_dirs or not parents:
            return False
        name = self._join(self._random.choice(parents), self._new_name("d"))
        os.mkdir(self._path(name))
        self._dirs.add(name)
        return True

    def _rmdir(self) -> bool:
        occupied = {_parent(path) for path in [*self._names, *self._dirs]}
        empty = sorted(self._dirs - occupied - {""})
        if not empty:
            return False
        name = self._random.choice(empty)
        os.rmdir(self._path(name))
        self._dirs.remove(name)
        return True

    def _setxattr(self) -> bool:
        if not self._names:
            return False
        name = self._random.choice(sorted(self._names))
        attribute = self._random.choice(_XATTR_NAMES)
        value = self._random.randbytes(self._random.randrange(1, 200))
        os.setxattr(self._path(name), attribute, value)
        self._files[self._names[name]].xattrs[attribute] = value
        return True

    def _removexattr(self) -> bool:
        carrying = sorted(n for n, k in self._names.items() if self._files[k].xattrs)
        if not carrying:
            return False
        name = self._random.choice(carrying)
        xattrs = self._files[self._names[name]].xattrs
        attribute = self._random.choice(sorted(xattrs))
        os.removexattr(self._path(name), attribute)
        del xattrs[attribute]
        return True

    def _truncate(self) -> bool:
        if not self._names:
            return False
        name = self._random.choice(sorted(self._names))
        file = self._files[self._names[name]]
        size = self._random.randrange(len(file.content) + 8192)
        os.truncate(self._path(name), size)
        file.content = file.content[:size] + bytes(max(0, size - len(file.content)))
        return True

    def _read(self) -> bool:
        if not self._names:
            return False
        name = self._random.choice(sorted(self._names))
        key = self._names[name]
        path = self._path(name)
        data = path.read_bytes()
        expected = self._files[key].content
        if data != expected:
            raise CheckFailed(
                f"{path}: read {len(data)} bytes (sha256 {_sha(data)[:12]}) instead of the "
                f"{len(expected)} written (sha256 {_sha(expected)[:12]})"
            )
        links = os.stat(path).st_nlink
        if links != len(self._links(key)):
            raise CheckFailed(f"{path}: {links} links instead of {len(self._links(key))}")
        return True

    # -- the whole tree ------------------------------------------------------------------
    def expected(self) -> _Tree:
        """What the tree must hold according to the model."""
        files = {}
        groups = []
        for key, file in self._files.items():
            links = self._links(key)
            groups.append(frozenset(links))
            for name in links:
                files[name] = (_sha(file.content), len(links), tuple(sorted(file.xattrs.items())))
        return _Tree(frozenset(self._dirs), files, frozenset(groups))

    def check(self, tree: Path | None = None) -> int:
        """Compare the tree under *tree* (default: the root) with the model; return the
        number of files compared. Raises `CheckFailed` naming the first differences."""
        tree = self.root if tree is None else tree
        found, expected = scan(tree), self.expected()
        problems = []
        for name in sorted(found.dirs - expected.dirs):
            problems.append(f"unexpected directory {name}")
        for name in sorted(expected.dirs - found.dirs):
            problems.append(f"missing directory {name}")
        for name in sorted(found.files.keys() | expected.files.keys()):
            have, want = found.files.get(name), expected.files.get(name)
            if have is None:
                problems.append(f"missing file {name}")
            elif want is None:
                problems.append(f"unexpected file {name}")
            elif have[0] != want[0]:
                problems.append(f"{name}: content differs from what was written")
            elif have[1] != want[1]:
                problems.append(f"{name}: {have[1]} links instead of {want[1]}")
            elif have[2] != want[2]:
                problems.append(f"{name}: extended attributes differ")
        if not problems and found.groups != expected.groups:
            problems.append("hard-link groups differ")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise CheckFailed(f"{tree} differs from the model: {'; '.join(problems[:3])}{more}")
        return len(found.files)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raise(exc: OSError) -> None:
    raise exc


def scan(tree: Path) -> _Tree:
    """What the directory tree under *tree* holds (see `_Tree`)."""
    dirs: set[str] = set()
    files: dict[str, tuple[str, int, tuple[tuple[str, bytes], ...]]] = {}
    inodes: dict[int, set[str]] = {}
    for directory, _subdirs, names in os.walk(tree, onerror=_raise):
        relative = os.path.relpath(directory, tree)
        relative = "" if relative == "." else relative
        dirs.add(relative)
        for name in names:
            path = os.path.join(directory, name)
            key = os.path.join(relative, name)
            status = os.lstat(path)
            data = Path(path).read_bytes()
            attributes = tuple(
                sorted(
                    (a, os.getxattr(path, a, follow_symlinks=False))
                    for a in os.listxattr(path, follow_symlinks=False)
                    if a.startswith("user.")
                )
            )
            files[key] = (_sha(data), status.st_nlink, attributes)
            inodes.setdefault(status.st_ino, set()).add(key)
    groups = frozenset(frozenset(names) for names in inodes.values())
    return _Tree(frozenset(dirs), files, groups)


# -- fsync-acknowledged writes -------------------------------------------------------------
RECORD = 4096


def record(slot: int, generation: int) -> bytes:
    """A 4 KiB record that says which slot and generation it is, with its own digest."""
    body = struct.pack("<QQ", slot, generation) * ((RECORD - 32) // 16)
    return body + hashlib.sha256(body).digest()


class Journal:
    """Batches of records written into the slots of *path*, each batch acknowledged by
    an fsync (odd batches) or fdatasync (even ones) before it counts.

    `open` before `step`, `close` after; `verify` works on any path.
    """

    def __init__(self, path: Path, seed: int, slots: int = 256, batch: int = 16) -> None:
        self.path, self.slots, self.batch = path, slots, batch
        #: slot -> generation of the last record acknowledged there
        self.acknowledged: dict[int, int] = {}
        #: records written and acknowledged, and the fsync/fdatasync calls that did it
        self.records = 0
        self.syncs = 0
        self._random = random.Random(seed)
        self._generation = 0
        self._fd = -1

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def step(self) -> None:
        """Write one batch, sync it, count it as acknowledged, read part of it back."""
        self._generation += 1
        slots = self._random.sample(range(self.slots), self.batch)
        for slot in slots:
            os.pwrite(self._fd, record(slot, self._generation), slot * RECORD)
        if self._generation % 2:
            os.fsync(self._fd)
        else:
            os.fdatasync(self._fd)
        self.syncs += 1
        self.records += len(slots)
        self.acknowledged.update(dict.fromkeys(slots, self._generation))
        for slot in slots[:4]:
            data = os.pread(self._fd, RECORD, slot * RECORD)
            if data != record(slot, self._generation):
                raise CheckFailed(
                    f"{self.path}: slot {slot} read back differs right after its fsync"
                )

    def verify(self, path: Path) -> int:
        """Check that *path* holds each slot's last acknowledged record; return the
        number of slots checked. Raises `CheckFailed` naming the first bad slots."""
        data = path.read_bytes()
        bad = [
            slot
            for slot, generation in sorted(self.acknowledged.items())
            if data[slot * RECORD : (slot + 1) * RECORD] != record(slot, generation)
        ]
        if bad:
            listed = ", ".join(str(slot) for slot in bad[:5])
            raise CheckFailed(
                f"{path}: {len(bad)} of {len(self.acknowledged)} acknowledged slots do not "
                f"hold their last fsynced record (slots {listed})"
            )
        return len(self.acknowledged)


# -- shared mappings ---------------------------------------------------------------------------
class MappedWriter:
    """Writes through a MAP_SHARED mapping of *path*, msyncs, and checks it.

    Where the mount's setting cannot map files shared (cache=none on a transport
    without FUSE_DIRECT_IO_ALLOW_MMAP), mmap answers ENODEV: that is what the setting
    documents, so it is counted (``refused_maps``) and the step writes with pwrite
    instead; *mappable* says whether the mount says it maps files shared now, and an
    ENODEV while it says so is a failure. The caller makes sure the setting does not
    change during a step.

    `open` before `step`; `release` (also before a switch the mapping would prevent)
    and `close` after. `verify` works on any path.
    """

    def __init__(
        self,
        path: Path,
        seed: int,
        pages: int = 64,
        mappable: Callable[[], bool] = lambda: True,
        remap_every: int = 50,
        check_every: int = 8,
    ) -> None:
        self.path, self.size, self.mappable = path, pages * mmap.PAGESIZE, mappable
        self.remap_every, self.check_every = remap_every, check_every
        self.model = bytearray(self.size)
        self.steps = 0
        #: writes through the mapping, msync calls, whole-file checks, successful maps,
        #: maps refused with the documented ENODEV (and pwrites done instead)
        self.writes = self.msyncs = self.checks = self.maps = self.refused_maps = 0
        self.pwrites = 0
        self._random = random.Random(seed)
        self._fd = -1
        self._mapping: mmap.mmap | None = None

    @property
    def mapped(self) -> bool:
        return self._mapping is not None

    def open(self) -> None:
        with open(self.path, "wb") as f:
            f.write(bytes(self.size))

    def _map(self) -> None:
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._mapping = mmap.mmap(fd, self.size, mmap.MAP_SHARED)
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.ENODEV:
                raise
            if self.mappable():
                raise CheckFailed(
                    f"{self.path}: mmap MAP_SHARED failed with ENODEV although the mount "
                    "says its setting maps files shared"
                ) from None
            self.refused_maps += 1
            return
        self._fd = fd
        self.maps += 1

    def step(self) -> None:
        """One write (through the mapping if there is one), with an msync and a check of
        the whole file every `check_every` steps."""
        self.steps += 1
        if self._mapping is None and (self.steps == 1 or self.steps % self.remap_every == 1):
            self._map()
        offset = self._random.randrange(0, self.size - 1)
        length = min(self._random.randrange(1, 3 * mmap.PAGESIZE), self.size - offset)
        data = self._random.randbytes(length)
        self.model[offset : offset + length] = data
        if self._mapping is not None:
            self._mapping[offset : offset + length] = data
            self.writes += 1
        else:
            fd = os.open(self.path, os.O_RDWR)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
            self.pwrites += 1
        if self.steps % self.check_every == 0:
            self.check()
        if self._mapping is not None and self.steps % self.remap_every == 0:
            self.release()

    def check(self) -> None:
        """msync, then the file through read() and through the mapping must be the model."""
        if self._mapping is not None:
            self._mapping.flush()
            self.msyncs += 1
            if self._mapping[:] != self.model:
                raise CheckFailed(f"{self.path}: {self._differs(self._mapping[:])} in the mapping")
            data = os.pread(self._fd, self.size, 0)
        else:
            data = self.path.read_bytes()
        if data != self.model:
            raise CheckFailed(f"{self.path}: {self._differs(data)} through read() after msync")
        self.checks += 1

    def release(self) -> None:
        """Check, then unmap and close: the file holds the model."""
        if self._mapping is None:
            return
        try:
            self.check()
        finally:
            self._mapping.close()
            self._mapping = None
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.release()

    def verify(self, path: Path) -> int:
        """Check that *path* holds the model; return the bytes checked."""
        data = path.read_bytes()
        if data != self.model:
            raise CheckFailed(f"{path}: {self._differs(data)}")
        return len(data)

    def _differs(self, data: bytes) -> str:
        if len(data) != len(self.model):
            return f"{len(data)} bytes where {len(self.model)} were mapped"
        first = next(i for i, (a, b) in enumerate(zip(data, self.model, strict=True)) if a != b)
        return f"byte {first:,} differs from what was written through the mapping"
