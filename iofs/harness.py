"""What the harnesses (``iofs bench``, ``switch``, ``soak``) share around the programs
they run: fio's command line, fio's exit checked and fio stopped, and the errors a
daemon logged.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import IofsError
from .loopfs import interrupts_deferred


def log_errors(log: Path) -> int:
    """Errors and tracebacks in a daemon log (anything unexpected is logged loudly)."""
    if not log.is_file():
        return 0
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line or line.startswith("Traceback")
    )


def fio_command(
    fio: str, job: Path, directory: Path, output: Path, extra: Sequence[str] = ()
) -> list[str]:
    """fio running *job* on files in *directory*, its JSON report written to *output*."""
    return [
        fio,
        *extra,
        "--output-format=json",
        f"--output={output.absolute()}",
        f"--directory={directory}",
        str(job.absolute()),
    ]


def check_fio(process: subprocess.Popen[bytes], out: Path, stem: str) -> None:
    """`IofsError` with the last line fio logged (OUT/STEM.log) if it exited non-zero."""
    if process.returncode != 0:
        text = (out / f"{stem}.log").read_text(errors="replace").strip()
        reason = (text.splitlines() or ["no message"])[-1]
        raise IofsError(f"fio {stem} failed (status {process.returncode}): {reason}")


def stop_fio(process: subprocess.Popen[bytes]) -> None:
    """Stop fio (SIGINT lets it end its jobs and close its files), then reap it."""
    with interrupts_deferred():
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_child(
    start: Callable[[], subprocess.Popen[bytes]],
    stop: Callable[[subprocess.Popen[bytes]], None],
) -> subprocess.Popen[bytes]:
    """The child *start* makes (a `subprocess.Popen`), never left running by a SIGINT.

    SIGINT raises KeyboardInterrupt wherever the main thread is, also inside Popen after
    the fork while it waits for the exec; Popen then lets go of the child it made, which
    runs on unknown to its caller (a daemon serving a mount nobody unmounts, fio on it).
    So SIGINT is held off while *start* runs; if one came, the child is stopped (*stop*)
    first and the KeyboardInterrupt raised then.
    """
    process: subprocess.Popen[bytes] | None = None
    try:
        with interrupts_deferred():
            process = start()
    except KeyboardInterrupt:
        if process is not None:
            with interrupts_deferred():
                stop(process)
        raise
    return process
