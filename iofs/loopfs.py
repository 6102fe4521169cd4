"""Fresh XFS and Btrfs filesystems on loop-device images, always destroyed afterwards.

`LoopFilesystem` makes a sparse image file, formats it (``mkfs.xfs`` / ``mkfs.btrfs``),
mounts it with ``mount -o loop`` and, on the way out, unmounts it, makes sure no loop
device is left attached to the image and removes the image. That holds when the block
fails, when setup itself fails half way, and when SIGINT arrives during teardown (it is
held off until teardown is done). Only root can do this; `unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from . import mounttable
from .errors import IofsError

#: The filesystems a loop image can hold.
KINDS = ("xfs", "btrfs")

#: Default image size: sparse, so only what is written takes space. XFS wants at least
#: 300 MiB, Btrfs 114 MiB.
DEFAULT_SIZE = 512 * 2**20


def unavailable(kind: str) -> str | None:
    """Why a *kind* loop image cannot be made here, in one line; None if it can."""
    if kind not in KINDS:
        return f"unknown filesystem {kind!r} (known: {', '.join(KINDS)})"
    if os.geteuid() != 0:
        return f"{kind} loop images need root (mount -o loop)"
    for tool in (f"mkfs.{kind}", "mount", "umount", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT off for the block, then deliver it as KeyboardInterrupt.

    Teardown (unmounting, detaching) must not stop half way because the user pressed
    Ctrl-C again. Outside the main thread signals cannot be handled: nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def attached_devices(image: Path) -> list[str]:
    """The loop devices attached to *image* (``losetup -j``), e.g. ``["/dev/loop0"]``."""
    result = subprocess.run(
        ["losetup", "--noheadings", "--output", "NAME", "-j", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _still_attached(image: Path, patience: float = 10.0) -> list[str]:
    """The loop devices still attached to *image* once the detaching is over: the kernel
    detaches an autoclear device from a work queue after the last close, so a device
    being detached is listed (and refuses ``losetup -d``) for a moment after umount."""
    deadline = time.monotonic() + patience
    while (devices := attached_devices(image)) and time.monotonic() < deadline:
        time.sleep(0.05)
        for device in devices:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
    return devices


class LoopFilesystem:
    """A fresh *kind* filesystem on a loop device, mounted for the block.

    ``with LoopFilesystem("xfs") as root:`` yields the (empty, mode 0755) root of the
    mounted filesystem. Everything lives in a new directory under *directory* (default
    the system's temporary directory): ``image`` and the mountpoint ``mnt``.
    """

    def __init__(
        self,
        kind: str,
        mkfs: str | None = None,
        size: int = DEFAULT_SIZE,
        directory: Path | None = None,
    ) -> None:
        reason = unavailable(kind)
        if reason is not None:
            raise IofsError(reason)
        self.kind = kind
        self.mkfs = mkfs or f"mkfs.{kind}"
        self.size = size
        self._directory = directory
        #: The directory holding the image and the mountpoint (kept after `destroy`,
        #: so that callers can check that nothing refers to the image any more).
        self.base: Path | None = None
        self._live = False
        #: The loop device the mount uses, once mounted.
        self.device: str | None = None

    @property
    def image(self) -> Path:
        assert self.base is not None, "not set up"
        return self.base / "image"

    @property
    def target(self) -> Path:
        assert self.base is not None, "not set up"
        return self.base / "mnt"

    def __enter__(self) -> Path:
        self.base = Path(tempfile.mkdtemp(prefix=f"iofs-{self.kind}-", dir=self._directory))
        self._live = True
        try:
            with open(self.image, "wb") as image:
                image.truncate(self.size)
            self._run([self.mkfs, "-q", "-f", str(self.image)])
            self.target.mkdir()
            # `mount -o loop` attaches the device with autoclear: umount detaches it.
            self._run(["mount", "-o", "loop", str(self.image), str(self.target)])
            entry = mounttable.find(self.target)
            self.device = entry.source if entry is not None else None
            self.target.chmod(0o755)
        except BaseException:
            self.destroy()
            raise
        return self.target

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()

    def mount_options(self) -> str:
        """The options the kernel shows for the mounted filesystem (from /proc/mounts)."""
        entry = mounttable.find(self.target)
        return entry.options if entry else ""

    def destroy(self) -> None:
        """Unmount, detach every loop device on the image, remove it all. Idempotent.

        Raises `IofsError` if something could not be undone (it says what is left).
        """
        if not self._live:
            return
        with interrupts_deferred():
            problems = []
            if mounttable.find(self.target) is not None:
                result = subprocess.run(
                    ["umount", str(self.target)], capture_output=True, text=True, check=False
                )
                if result.returncode != 0:
                    problems.append(f"umount {self.target}: {result.stderr.strip()}")
            if self.image.exists():
                # Autoclear detaches on umount; a device attached by a mount that failed
                # half way (or killed mid-way) is detached here.
                for device in attached_devices(self.image):
                    subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
                devices = _still_attached(self.image)
                if devices:
                    problems.append(f"loop device {', '.join(devices)} still attached")
            if problems:
                left = "; ".join(problems)
                raise IofsError(f"{self.kind} image in {self.base} not cleaned up: {left}")
            shutil.rmtree(self.target.parent, ignore_errors=True)
            self._live = False

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise IofsError(f"{command[0]} failed for the {self.kind} image: {reason}")
