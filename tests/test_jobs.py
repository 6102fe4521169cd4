"""The built-in fio job files, and how iofs bench reads and adjusts them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from iofs.bench_plan import DEFAULT_JOBS
from iofs.errors import IofsError
from iofs.fiojobs import (
    JobFile,
    builtin_jobs,
    estimate_seconds,
    load_job,
    parse_sections,
    parse_size,
    prepare_text,
    with_overrides,
)

needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")

#: What the issue asks the job files to cover, as (job, section) pairs.
COVERAGE = {
    ("seq-read-1m", "seq-read-1m"),
    ("seq-write-1m", "seq-write-1m"),
    ("rand-read-4k", "rand-read-4k"),
    ("rand-write-4k", "rand-write-4k"),
    ("rand-read-4k-direct", "rand-read-4k-direct"),
    ("rand-read-4k-direct-qd16", "rand-read-4k-direct-qd16"),
    ("rand-write-4k-direct-qd16", "rand-write-4k-direct-qd16"),
    ("seq-1m-direct-qd16", "seq-write-1m-direct-qd16"),
    ("seq-1m-direct-qd16", "seq-read-1m-direct-qd16"),
    ("fdatasync-write-4k", "fdatasync-write-4k"),
    ("fragmentation", "overwrite"),
    ("fragmentation", "read-after"),
    ("metadata", "create"),
    ("metadata", "stat"),
    ("metadata", "delete"),
    ("mixed", "data"),
    ("mixed", "metadata"),
}


def test_every_job_starts_with_its_intent() -> None:
    jobs = builtin_jobs()
    assert set(DEFAULT_JOBS) <= set(jobs)
    for name, path in jobs.items():
        first = path.read_text().splitlines()[0]
        assert first.startswith("; "), f"{name}: the first line must say what it measures"
        assert len(load_job(name).intent) > 40, name


def test_jobs_cover_what_the_issue_asks_for() -> None:
    present = {(name, s.name) for name in builtin_jobs() for s in load_job(name).sections}
    assert present >= COVERAGE
    engines = {s.engine for name in builtin_jobs() for s in load_job(name).sections}
    assert {"filecreate", "filestat", "filedelete", "libaio", "psync"} <= engines
    mixed = load_job("mixed").sections
    assert not any("stonewall" in s.options for s in mixed), "the mixed job's sections overlap"
    direct = {s.get("direct") for name in builtin_jobs() for s in load_job(name).sections}
    assert {"1", ""} <= direct  # O_DIRECT and buffered
    assert {s.get("iodepth", "1") for n in builtin_jobs() for s in load_job(n).sections} >= {
        "1",
        "16",
    }


@needs_fio
@pytest.mark.parametrize("name", sorted(builtin_jobs()))
def test_job_files_parse(name: str, tmp_path: Path) -> None:
    """fio --parse-only accepts each job file as shipped, as iofs bench adjusts it, and
    its lay-out variant (one fio call for the three: fio takes seconds to start)."""
    text = load_job(name).text
    variants = {"shipped": text, "adjusted": with_overrides(text, 1.5, "4m")}
    prepare = prepare_text(text)
    if prepare is not None:
        variants["prepare"] = prepare
    paths = []
    for variant, job_text in variants.items():
        paths.append(tmp_path / f"{variant}.fio")
        paths[-1].write_text(job_text)
    result = subprocess.run(
        ["fio", "--parse-only", *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{name} ({', '.join(variants)}): {result.stdout}{result.stderr}"


def test_overrides_are_written_into_the_job() -> None:
    assert with_overrides("[global]\nruntime=4\n[a]\nruntime=9\nrw=read\n", 1.5) == (
        "[global]\nruntime=1.5\n[a]\nruntime=1.5\nrw=read\n"
    )
    assert with_overrides("; intent\n[global]\nbs=4k\n[a]\n", 2) == (
        "; intent\n[global]\nruntime=2\ntime_based=1\nbs=4k\n[a]\n"
    )
    assert (
        with_overrides("[a]\nrw=read\n", 3) == "[global]\nruntime=3\ntime_based=1\n[a]\nrw=read\n"
    )
    # A runtime that caps work-bound blocks stays; size only where the job has one.
    text = "[global]\nsize=64m\n[a]\ntime_based=0\nruntime=60\n[b]\ntime_based=1\nruntime=5\n"
    assert with_overrides(text, 1, "4m") == (
        "[global]\nsize=4m\n[a]\ntime_based=0\nruntime=60\n[b]\ntime_based=1\nruntime=1\n"
    )
    assert (
        with_overrides("[global]\nnrfiles=10\n[a]\n", None, "4m") == "[global]\nnrfiles=10\n[a]\n"
    )


def test_sections_and_their_options() -> None:
    text = (
        "; x\n[global]\nioengine=libaio\nsize=1m\n[a]\nrw=read\ntime_based\n# c\n[b]\nstonewall\n"
    )
    a, b = parse_sections(text)
    assert (a.name, a.engine, a.get("size"), a.time_based) == ("a", "libaio", "1m", True)
    assert (b.name, b.time_based, "stonewall" in b.options) == ("b", False, True)


def test_the_lay_out_pass_leaves_out_file_creation() -> None:
    """Laid-out files would turn the creates a job measures into opens."""
    metadata = prepare_text(load_job("metadata").text)
    assert metadata is not None
    assert [s.name for s in parse_sections(metadata)] == ["stat", "delete"]
    mixed = prepare_text(load_job("mixed").text)
    assert mixed is not None and [s.name for s in parse_sections(mixed)] == ["data"]
    assert prepare_text("[c]\nioengine=filecreate\n") is None
    assert prepare_text(load_job("rand-read-4k").text) == load_job("rand-read-4k").text


def test_estimates_follow_stonewalls() -> None:
    job = JobFile("j", "[global]\nruntime=3\ntime_based=1\n[a]\n[b]\n[c]\nstonewall\n")
    assert estimate_seconds(job) == 6.0
    assert estimate_seconds(JobFile("m", with_overrides(load_job("mixed").text, 2))) == 2.0


def test_sizes_and_job_lookup(tmp_path: Path) -> None:
    assert parse_size("4k") == 4096
    assert parse_size("64m") == 64 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("512") == 512
    with pytest.raises(ValueError):
        parse_size("lots")
    with pytest.raises(IofsError, match="unknown job 'nope'"):
        load_job("nope")
    with pytest.raises(IofsError, match="not found"):
        load_job(tmp_path / "missing.fio")
    own = tmp_path / "own.fio"
    own.write_text("; mine\n[own]\nrw=read\n")
    assert load_job(own) == JobFile("own", "; mine\n[own]\nrw=read\n")
