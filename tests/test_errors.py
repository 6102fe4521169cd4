"""A bug in a handler is logged with its traceback, answered with EIO, and survived."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from .conftest import MountFactory
from .faulty_daemon import POISONED_OFFSET


def test_unexpected_exception_is_eio_and_the_daemon_keeps_serving(
    mount_factory: MountFactory,
) -> None:
    mnt = mount_factory(engine="faulty", command=[sys.executable, "-m", "tests.faulty_daemon"])
    mnt.expect_errors = True
    data = os.urandom(POISONED_OFFSET + 8192)
    (mnt.backing / "f").write_bytes(data)
    fd = os.open(mnt.mountpoint / "f", os.O_RDONLY | os.O_DIRECT)  # every read reaches us
    try:
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, POISONED_OFFSET)
        assert info.value.errno == errno.EIO
        assert os.pread(fd, 4096, 0) == data[:4096]  # the same file still works
    finally:
        os.close(fd)
    assert (mnt.mountpoint / "g").write_bytes(b"alive") == 5
    assert (mnt.backing / "g").read_bytes() == b"alive"
    log = mnt.log_text()
    assert "unexpected error in read" in log
    assert "Traceback" in log and "RuntimeError: injected engine bug" in log
    assert mnt.counters()["unexpected_errors"] == 1
