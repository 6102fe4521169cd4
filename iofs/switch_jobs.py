"""The fio job texts of ``iofs switch``: the job as run, the lay-out and the read-back.

- `run_text`: the user's job with per-interval logs in every section, stamped with
  CLOCK_MONOTONIC, and crc32c headers in what its writing sections write (a read-only
  section gets no ``verify``: fio would end it after one pass over its files);
- `layout_text`: a native write pass laying every data file out with a crc32c header in
  every block;
- `verify_text`: one O_DIRECT read pass through the mount checking every header.

Both passes read and write 1 MiB at a time with a header every job block
(``verify_interval``) where the job's block size divides 1 MiB: the same headers, far
fewer requests through FUSE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .fiojobs import parse_sections, parse_size, prepare_text
from .report import METADATA_ENGINES

#: fio's log averaging window and the statistics sampling interval, in seconds.
INTERVAL = 0.2


#: fio options added to every section of the job as run: per-interval logs on
#: CLOCK_MONOTONIC (``log_alternate_epoch_clock_id=1``).
LOG_OPTIONS = (
    "write_iops_log=fio",
    "write_bw_log=fio",
    "write_lat_log=fio",
    "write_hist_log=fio",
    f"log_avg_msec={round(INTERVAL * 1000)}",
    f"log_hist_msec={round(INTERVAL * 1000)}",
    "log_hist_coarseness=2",
    "log_unix_epoch=1",
    "log_alternate_epoch_clock_id=1",
)

_WRITING = frozenset({"write", "randwrite", "rw", "readwrite", "randrw", "trimwrite"})


def _append_to_sections(text: str, options: Callable[[str], Sequence[str] | None]) -> str:
    """The job with *options(section name)* appended to each section (not [global]);
    a section for which it returns None is left out."""
    out: list[str] = []
    block: list[str] = []
    name: str | None = None

    def close() -> None:
        if name is None or name == "global":
            out.extend(block)
            return
        added = options(name)
        if added is not None:
            while block and not block[-1].strip():
                block.pop()
            out.extend([*block, *added, ""])

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            close()
            block, name = [], stripped[1:-1].strip()
        block.append(line)
    close()
    return "\n".join(out).rstrip("\n") + "\n"


def _is_data(text: str, name: str) -> bool:
    section = next(s for s in parse_sections(text) if s.name == name)
    return section.engine not in METADATA_ENGINES


def _writes(text: str, name: str) -> bool:
    section = next(s for s in parse_sections(text) if s.name == name)
    return _is_data(text, name) and section.get("rw", "read") in _WRITING


def run_text(text: str) -> str:
    """The job as `iofs switch` runs it: per-interval logs in every section, and crc32c
    headers (not checked during the run) on what the writing sections write."""

    def added(name: str) -> list[str]:
        lines = ["; added by iofs switch: per-interval logs on CLOCK_MONOTONIC", *LOG_OPTIONS]
        if _writes(text, name):
            lines += ["verify=crc32c", "do_verify=0"]
        return lines

    return _append_to_sections(text, added)


_ONE_PASS = ("time_based=0", "runtime=0", "ioengine=psync", "iodepth=1", "verify_state_save=0")


def prepare_pass(text: str) -> str | None:
    """bench's lay-out pass (``--create_only=1``) for sections that need files but
    read and write no data (e.g. ``filestat``); the layout pass makes the others'."""
    sections = parse_sections(text)
    if all(_is_data(text, s.name) or s.engine == "filecreate" for s in sections):
        return None
    return prepare_text(_without_logs(text))


def _large_blocks(text: str, name: str) -> list[str]:
    """Read or write a whole pass in 1 MiB requests with a crc32c header every job block
    (``verify_interval``), if the job's block size divides 1 MiB: far faster through
    FUSE than one request per 4 KiB block, and the same headers."""
    section = next(s for s in parse_sections(text) if s.name == name)
    try:
        block = parse_size(section.get("bs", "4k"))
    except ValueError:
        return []
    if block <= 0 or 2**20 % block:
        return []
    return ["bs=1m", f"verify_interval={block}"]


def _pass_text(text: str, why: str, options: Sequence[str]) -> str | None:
    """One pass over every data section's files with *options*; None without any."""
    if not any(_is_data(text, s.name) for s in parse_sections(text)):
        return None
    return _append_to_sections(
        _without_logs(text),
        lambda name: (
            [f"; added by iofs switch: {why}", *options, *_ONE_PASS, *_large_blocks(text, name)]
            if _is_data(text, name)
            else None
        ),
    )


def layout_text(text: str) -> str | None:
    """A native write pass over the data sections' files, a crc32c header in every
    block; None if no section reads or writes data."""
    options = ("rw=write", "direct=0", "verify=crc32c", "do_verify=0")
    return _pass_text(text, "lay the files out with crc32c headers", options)


def verify_text(text: str) -> str | None:
    """One O_DIRECT read pass over the data sections' files, checking every crc32c
    header (every error counted, none fatal); None if there is no data section."""
    options = (
        "rw=read",
        "direct=1",
        "verify=crc32c",
        "do_verify=1",
        "verify_fatal=0",
        "continue_on_error=verify",
    )
    return _pass_text(text, "read everything back, checking crc32c", options)


def _without_logs(text: str) -> str:
    """*text* without the lines `run_text` added."""
    added = {*LOG_OPTIONS, "verify=crc32c", "do_verify=0"}
    lines = text.splitlines()
    kept = []
    skipping = False
    for line in lines:
        if line.startswith("; added by iofs switch"):
            skipping = True
            continue
        if skipping and line.strip() in added:
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept) + "\n"


def verify_result(text: str, log: str, report: Any, returncode: int | None) -> dict[str, Any]:
    """What the read-back pass of job *text* found, from fio's *log* (stderr and stdout,
    where it names each bad block), its JSON *report* and its exit status (None: it was
    stopped): status ``ok`` or ``failed``, blocks and bytes checked, errors, the first."""
    errors = [line.strip() for line in log.splitlines() if "verify" in line.lower()]
    jobs = report.get("jobs", []) if isinstance(report, dict) else []
    counted = sum(int(j.get("total_err", 0)) for j in jobs)
    failed = returncode != 0 or bool(errors) or counted > 0 or not jobs
    return {
        "status": "failed" if failed else "ok",
        "blocks": verified_blocks(text, jobs),
        "bytes": sum(int(j["read"]["io_bytes"]) for j in jobs),
        "errors": max(counted, len(errors), 1 if failed else 0),
        "first_error": errors[0] if errors else "",
        "fio_status": returncode,
    }


def verified_blocks(text: str, jobs: Sequence[Mapping[str, Any]]) -> int:
    """Blocks of the job's own size fio checked, from its report of the verify pass."""
    intervals = {
        s.name: parse_size(s.get("verify_interval") or s.get("bs", "4k") or "4k")
        for s in parse_sections(text)
    }
    return sum(
        int(j["read"]["io_bytes"]) // max(intervals.get(str(j.get("jobname")), 4096), 1)
        for j in jobs
    )


def reads_or_writes_data(job: Path) -> bool:
    """Whether the job file at *job* reads or writes file data."""
    text = job.read_text()
    return any(_is_data(text, section.name) for section in parse_sections(text))
