"""The mount table parser: any name the kernel accepts, including non-UTF-8 bytes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofs import mounttable

# Latin-1 'é' (not UTF-8), and every byte the kernel escapes in the table.
AWKWARD = b"caf\xe9 tab\there new\nline back\\slash"


@pytest.fixture
def awkward_mount(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    point = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + AWKWARD))
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "iofs-test", point], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", point], check=True)


def test_a_non_utf8_mount_point_is_found_as_its_path(awkward_mount: Path) -> None:
    entry = mounttable.find(awkward_mount)
    assert entry is not None
    assert entry.fstype == "tmpfs" and entry.source == "iofs-test"
    assert os.fsencode(entry.mountpoint) == os.fsencode(awkward_mount)
    assert entry.options.split(",")[0] == "rw" and "size=1024k" in entry.options
    inside = awkward_mount / "sub"
    inside.mkdir()
    assert mounttable.containing(inside) == entry


def test_every_entry_is_a_mount_point() -> None:
    entries = mounttable.entries()
    assert any(entry.mountpoint == "/" for entry in entries)
    for entry in entries:
        assert os.path.isabs(entry.mountpoint)
        major, minor = entry.device.split(":")
        assert major.isdigit() and minor.isdigit()
