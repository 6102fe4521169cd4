"""Where figures were measured: the machine, kernel, versions and how caches were dropped,
saved as ``environment.json`` next to every run's results (``iofs bench``, ``demo``,
``switch``, ``soak`` and the engine benchmark alike, with the same keys)."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from . import mounttable
from .backends import ENGINES

CACHE_DROPS = {
    "drop_caches": "sync, then echo 1 > /proc/sys/vm/drop_caches (root): the whole page "
    "cache, before every measured run",
    "fadvise": "fdatasync and posix_fadvise(POSIX_FADV_DONTNEED) on every file in the run's "
    "directories (not root, so other cached pages stay)",
    "none": "not dropped (--no-drop-caches)",
}


def first_line(command: Sequence[str]) -> str:
    """The first line *command* prints, or "" if it fails or cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if result.returncode == 0 and lines else ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _commit() -> str:
    """The git commit of the iofs checkout running, marked if it has local changes."""
    here = str(Path(__file__).parent)
    commit = first_line(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    if not commit:
        return "not a git checkout"
    changed = subprocess.run(
        ["git", "-C", here, "diff", "--quiet", "HEAD", "--", "."], check=False
    ).returncode
    return commit + (" with local changes" if changed else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> dict[str, str]:
    """Type, source, mount point and options of the filesystem holding *path*, from the
    kernel's mount table (`iofs.mounttable`)."""
    info = {"path": str(path)}
    entry = mounttable.containing(path)
    if entry is not None:
        info.update(
            type=entry.fstype,
            source=entry.source,
            mountpoint=entry.mountpoint,
            options=entry.options,
        )
    return info


def block_device_of(source: str) -> dict[str, str]:
    """Queue settings of the block device *source* (or of its parent disk), if it is one."""
    if not source.startswith("/dev/"):
        return {}
    node = Path("/sys/class/block") / Path(os.path.realpath(source)).name
    for queue in (node / "queue", node.resolve().parent / "queue"):
        if queue.is_dir():
            found = {}
            for name in ("rotational", "scheduler", "logical_block_size", "nr_requests"):
                with contextlib.suppress(OSError):
                    found[name] = (queue / name).read_text().strip()
            return found
    return {}


def machine(command: Sequence[str]) -> dict[str, Any]:
    """What every harness records: when, the exact *command*, the machine, kernel and
    versions, and which engines can run here."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(command),
        "kernel": f"{platform.release()} ({platform.version()})",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "root": os.geteuid() == 0,
        "python": sys.version.split()[0],
        "iofs": _version("iofs"),
        "iofs_commit": _commit(),
        "pyfuse3": _version("pyfuse3"),
        "trio": _version("trio"),
        "engines": {name: cls.probe() or "available" for name, cls in sorted(ENGINES.items())},
    }


def environment(fio: str, cache_drop: str) -> dict[str, Any]:
    """Where fio's figures were measured: `machine`, fio and mkfs versions, how caches
    were dropped (the filesystems are added as they are made)."""
    return {
        **machine(["iofs", *sys.argv[1:]]),
        "cache_drop": CACHE_DROPS[cache_drop],
        "fio": first_line([fio, "--version"]),
        "mkfs.xfs": first_line(["mkfs.xfs", "-V"]),
        "mkfs.btrfs": first_line(["mkfs.btrfs", "--version"]),
        "filesystems": {},
    }
