"""The daemon's log: where its records go, and the one pyfuse3 error that is a warning."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


class AbandonedReplies(logging.Filter):
    """pyfuse3 logs an ERROR when the kernel no longer wants a reply (ENOENT): the
    caller was interrupted, or the mount is going away while a release was in flight.
    The work was done and nobody waits for the answer: that is a warning, not an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().endswith(
            "fuse_reply_* failed with No such file or directory"
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(debug: bool, log_file: Path | None) -> None:
    """Send the root logger's records to *log_file*, or to stderr when None."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(log_file)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(AbandonedReplies())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def drop_log(log_file: Path) -> None:
    """Close the logging handlers and remove *log_file*."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = [logging.StreamHandler(sys.stderr)]
    with contextlib.suppress(OSError):
        log_file.unlink()
