"""fio job files: the built-in jobs, parsing their sections, overriding runtime and size,
the lay-out pass (``--create_only``) and a run's estimated duration.

Pure text and file reading: no fio run, no mount (see `iofs.bench`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ExitStatus, IofsError


@dataclass(frozen=True)
class Section:
    """One ``[name]`` of a job file: its own options, and [global]'s."""

    name: str
    options: Mapping[str, str]
    defaults: Mapping[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.options.get(key, self.defaults.get(key, default))

    @property
    def time_based(self) -> bool:
        return self.get("time_based", "0") not in ("0", "false")

    @property
    def engine(self) -> str:
        return self.get("ioengine", "psync")


def parse_sections(text: str) -> list[Section]:
    """The job sections of a fio job file (not [global]), with their options.

    A subset of fio's syntax, enough for iofs's own decisions (lay-out, estimates):
    ``;`` and ``#`` comments, ``[name]`` headers, ``key=value`` and bare ``key``.
    fio itself parses the file for real.
    """
    defaults: dict[str, str] = {}
    sections: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if name == "global":
                current = defaults
            else:
                current = {}
                sections.append((name, current))
            continue
        key, _, value = line.partition("=")
        if current is not None:
            current[key.strip()] = value.strip() if _ else "1"
    return [Section(name, options, defaults) for name, options in sections]


@dataclass(frozen=True)
class JobFile:
    """A fio job file by name, with the text that runs (overrides already applied)."""

    name: str
    text: str

    @property
    def intent(self) -> str:
        """The leading ``;`` lines: what the job measures and which path it exercises."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith(";"):
                break
            lines.append(line.lstrip("; ").rstrip())
        return " ".join(lines)

    @property
    def sections(self) -> list[Section]:
        return parse_sections(self.text)


def builtin_jobs() -> dict[str, Path]:
    """The job files that come with iofs, by name (file name without ``.fio``)."""
    directory = Path(str(resources.files("iofs") / "jobs"))
    return {path.stem: path for path in sorted(directory.glob("*.fio"))}


def load_job(spec: str | Path) -> JobFile:
    """A built-in job by name, or a job file by path. Raises `IofsError` if neither."""
    text_spec = str(spec)
    builtin = builtin_jobs()
    if isinstance(spec, str) and "/" not in spec and not spec.endswith(".fio"):
        if spec not in builtin:
            raise IofsError(
                f"unknown job {spec!r} (built-in: {', '.join(builtin)})", ExitStatus.BAD_SETTING
            )
        return JobFile(spec, builtin[spec].read_text())
    path = Path(text_spec)
    if not path.is_file():
        raise IofsError(f"job file {path}: not found", ExitStatus.BAD_PATH)
    return JobFile(path.stem, path.read_text())


def with_overrides(text: str, runtime: float | None = None, size: str | None = None) -> str:
    """The job text with its ``runtime=`` (and ``size=``) lines set to the overrides.

    fio lets a job file's own options win over the command line's, so an override has
    to be written into the job itself. ``runtime`` is replaced in every block (``[global]``
    or a section) except those that say ``time_based=0``: there it caps a job that ends
    when its work is done (creating N files, reading a file once), and stays. A job
    without any ``runtime=`` gets one in [global] (created if missing), with
    ``time_based=1``. ``size`` is only replaced where the job sets it.
    """
    lines = text.splitlines()
    blocks: list[list[int]] = [[]]  # line numbers per block; the first is before any header
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            blocks.append([])
        blocks[-1].append(index)
    had_runtime = False
    for block in blocks:
        options = {
            lines[i].strip().partition("=")[0].strip(): lines[i].strip().partition("=")[2].strip()
            for i in block
        }
        work_bound = options.get("time_based") in ("0", "false")
        for i in block:
            key, sep, _ = lines[i].strip().partition("=")
            key = key.strip()
            if not sep:
                continue
            if key == "runtime":
                had_runtime = True
                if runtime is not None and not work_bound:
                    lines[i] = f"runtime={runtime:g}"
            elif key == "size" and size is not None:
                lines[i] = f"size={size}"
    if runtime is not None and not had_runtime:
        added = [f"runtime={runtime:g}", "time_based=1"]
        at = next((i for i, line in enumerate(lines) if line.strip() == "[global]"), None)
        if at is None:
            first = next((i for i, line in enumerate(lines) if line.strip().startswith("[")), 0)
            lines[first:first] = ["[global]", *added]
        else:
            lines[at + 1 : at + 1] = added
    return "\n".join(lines) + "\n"


def prepare_text(text: str) -> str | None:
    """The job for fio's lay-out pass (``--create_only=1``), or None if it needs none.

    Sections whose engine is ``filecreate`` are left out: laying out their files first
    would turn the creates they measure into opens of existing files.
    """
    sections = parse_sections(text)
    creating = {s.name for s in sections if s.engine == "filecreate"}
    if len(creating) == len(sections):
        return None
    kept: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            skipping = stripped[1:-1].strip() in creating
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def estimate_seconds(job: JobFile) -> float:
    """Roughly how long fio runs *job*: stonewalled groups one after another."""
    total, group = 0.0, 0.0
    for index, section in enumerate(job.sections):
        runtime = float(section.get("runtime", "0") or 0)
        seconds = runtime if section.time_based else min(runtime or 2.0, 2.0)
        if index and ("stonewall" in section.options or "wait_for_previous" in section.options):
            total, group = total + group, 0.0
        group = max(group, seconds)
    return total + group


#: A fio size: a number with an optional k, m, g or t (powers of 1024) and "b"/"ib".
FIO_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A fio size (``64m``, ``1g``, ``4096``; powers of 1024) in bytes; ValueError if not."""
    match = FIO_SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 64m, 1g)")
    number, unit = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024**power)
