"""`iofs demo`: its plan, and findings computed from the numbers (never canned)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from iofs.bench_plan import check_paths, split_transport
from iofs.demo import (
    DEMO_RUNS,
    SWITCH_JOB,
    SWITCH_SCHEDULE,
    TRANSPORT_JOB,
    TRANSPORT_RUNS,
    demo_plan,
    switch_demo_plan,
)
from iofs.errors import IofsError
from iofs.findings import (
    AIO_BUFFERED,
    PASSTHROUGH_PATH,
    TRANSPORT_PATHS,
    URING_BUFFERED,
    aio_vs_uring,
    findings,
    head_of_line,
    iops_differ,
    nowait_hits,
    passthrough,
    thread_cost,
    transports,
    xfs_vs_btrfs,
)
from iofs.report import NATIVE, DaemonFigures, Figures, Results, Run
from iofs.results import load_results

from .conftest import needs_fuse


def fig(
    section: str,
    iops: float,
    p99_us: float,
    direction: str = "read",
    p50_us: float | None = None,
    stddev: float = 0.0,
) -> Figures:
    return Figures(
        section=section,
        direction=direction,
        ios=int(iops * 4),
        iops=iops,
        bandwidth=iops * 4096,
        p50_ns=(p50_us if p50_us is not None else p99_us / 2) * 1000,
        p99_ns=p99_us * 1000,
        p999_ns=p99_us * 2000,
        iops_stddev=stddev,
        iops_samples=8,
        runtime_s=4.0,
    )


def daemon(
    cpu: float,
    lag_us: float = 100.0,
    engine: str = "blocking",
    transport: Mapping[str, int] | None = None,
    requests: int = 1000,
    **counters: int,
) -> DaemonFigures:
    return DaemonFigures(
        cpu_seconds=cpu,
        requests=requests,
        data_requests=requests * 9 // 10,
        loop_lag_p99_ns=lag_us * 1000,
        engine=engine,
        engine_counters=counters,
        transport_counters=transport or {},
    )


def run(fs: str, path: str, job: str, *figures: Figures, **kw: object) -> Run:
    return Run(fs, path, job, "ok", figures=figures, **kw)  # type: ignore[arg-type]


def demo_results(metadata_p99_blocking_us: float = 20_000.0) -> Results:
    q1, q16 = "rand-read-4k-direct", "rand-read-4k-direct-qd16"
    runs = (
        run("dir", NATIVE, "mixed", fig("metadata", 200, 250)),
        run("dir", "blocking", "mixed", fig("metadata", 198, metadata_p99_blocking_us)),
        run("dir", "xfs", "mixed", fig("metadata", 198, 4000)),
        run("dir", "blocking", q1, fig(q1, 20_000, 100, p50_us=40), daemon=daemon(3.2)),
        run(
            "dir",
            "btrfs",
            q1,
            fig(q1, 5_000, 400, p50_us=180),
            daemon=daemon(3.8, engine="threads"),
        ),
        run(
            "dir",
            "nonblocking",
            q1,
            fig(q1, 19_500, 120, stddev=2000),
            daemon=daemon(3.0, engine="nowait", nowait_hits=72_000, nowait_would_block=8_000),
        ),
        run(
            "dir",
            "nonblocking",
            q16,
            fig(q16, 4_000, 900),
            daemon=daemon(1.0, engine="nowait", nowait_hits=1_000, nowait_would_block=15_000),
        ),
        run(
            "dir",
            URING_BUFFERED,
            q16,
            fig(q16, 6_000, 4000),
            daemon=daemon(1.0, 400, engine="io_uring", completions=24_000, inline_reaps=7_200),
        ),
        run(
            "dir",
            AIO_BUFFERED,
            q16,
            fig(q16, 4_500, 6000),
            daemon=daemon(1.0, 1200, engine="aio", completions=18_000, inline_reaps=18_000),
        ),
        run(
            "xfs",
            NATIVE,
            "rand-write-4k-direct-qd16",
            fig("rand-write-4k-direct-qd16", 200_000, 210, "write"),
            extents={"f": 1},
        ),
        run(
            "btrfs",
            NATIVE,
            "rand-write-4k-direct-qd16",
            fig("rand-write-4k-direct-qd16", 20_000, 2000, "write"),
            extents={"f": 16_000},
        ),
        run(
            "xfs",
            NATIVE,
            "fdatasync-write-4k",
            fig("fdatasync-write-4k", 10_000, 8, "write"),
            fig("fdatasync-write-4k", 10_000, 280, "sync"),
        ),
        run(
            "btrfs",
            NATIVE,
            "fdatasync-write-4k",
            fig("fdatasync-write-4k", 1_600, 20, "write"),
            fig("fdatasync-write-4k", 1_600, 1300, "sync"),
        ),
    )
    return Results(kind="demo", runs=runs, jobs={})


def test_head_of_line_blocking_is_computed_from_the_run() -> None:
    sentence = head_of_line(demo_results())
    assert sentence.startswith("In blocking mode, file creates under heavy writes had a p99")
    assert "20.0ms, 5.00x their p99 in xfs mode (4.00ms; natively 250µs)" in sentence
    # Other numbers, another sentence: nothing is canned.
    assert "40.0ms, 10.0x" in head_of_line(demo_results(40_000))
    close = head_of_line(demo_results(4_500))
    assert "within noise" in close and "no head-of-line blocking showed" in close


def test_nowait_hit_ratio_and_thread_cost() -> None:
    results = demo_results()
    nowait = nowait_hits(results)
    assert "RWF_NOWAIT served 90% of the 80,000 reads" in nowait
    assert "and 6% of 16,000 in rand-read-4k-direct-qd16" in nowait
    assert "differ by less than the run's noise" in nowait  # 19.5k ± 2000 vs 20k
    cost = thread_cost(results)
    assert "engine threads" in cost
    assert "cost 190µs of daemon CPU per read against 40.0µs inline" in cost
    assert "p50 latency went from 40.0µs to 180µs and IOPS to 0.25x" in cost


def test_aio_and_uring_and_native_filesystems() -> None:
    results = demo_results()
    aio = aio_vs_uring(results)
    assert "4.50k IOPS with Linux AIO vs 6.00k with io_uring" in aio and "0.75x" in aio
    assert "100% of AIO's reads completed inside the submitting system call" in aio
    assert "against 30% of io_uring's" in aio
    assert "event-loop lag p99 1.20ms vs 400µs" in aio
    writes, syncs = xfs_vs_btrfs(results)
    assert "200k IOPS on XFS and 20.0k on Btrfs: XFS 10.0x faster" in writes
    assert "1 extent on XFS and 16,000 extents on Btrfs" in writes
    assert "10.0k durable 4 KiB writes per second on XFS and 1.60k on Btrfs" in syncs
    assert "XFS was 6.25x faster" in syncs
    assert len(findings(results)) == 8


def test_missing_runs_say_why() -> None:
    results = demo_results()
    without_images = Results(
        kind="demo",
        runs=tuple(r for r in results.runs if r.filesystem == "dir"),
        jobs={},
        skipped=(("target xfs", "xfs loop images need root (mount -o loop)"),),
    )
    writes, _ = xfs_vs_btrfs(without_images)
    assert writes == (
        "Native XFS and Btrfs random writes were not compared: target xfs was skipped "
        "(xfs loop images need root (mount -o loop))."
    )
    failed = dataclasses.replace(
        results,
        runs=tuple(
            Run(r.filesystem, r.path, r.job, "failed", reason="the iofs daemon exited")
            if r.path == AIO_BUFFERED
            else r
            for r in results.runs
        ),
    )
    assert aio_vs_uring(failed) == (
        "Linux AIO and io_uring on buffered files were not compared: dir · "
        f"{AIO_BUFFERED} · rand-read-4k-direct-qd16 failed: the iofs daemon exited."
    )


def test_noise_rule() -> None:
    a, b = fig("s", 10_000, 1, stddev=100), fig("s", 10_500, 1, stddev=100)
    assert not iops_differ(a, b)  # 5%: below the 10% floor
    assert iops_differ(a, fig("s", 12_000, 1, stddev=100))
    assert not iops_differ(a, fig("s", 12_000, 1, stddev=4000))  # beyond two standard errors


def test_plan_covers_every_finding() -> None:
    plan = demo_plan(runtime=1)
    assert plan.kind == "demo" and plan.runs
    assert {r.job for r in plan.runs} == set(plan.jobs)
    assert all(
        "runtime=1\n" in job.text for job in plan.jobs.values() if "time_based=1" in job.text
    )
    skipped = {what for what, _ in plan.skipped}
    assert set(plan.runs) | {
        r for r in DEMO_RUNS if f"target {r.filesystem}" in skipped or f"mode {r.path}" in skipped
    } == set(DEMO_RUNS)


def test_the_live_switch_experiment_takes_a_share_of_the_runtime() -> None:
    plan = switch_demo_plan()
    assert not isinstance(plan, str)
    runnable = [m for m in SWITCH_SCHEDULE if f"mode {m}" not in dict(plan.skipped)]
    assert [p.setting.spec for p in plan.phases] == runnable
    assert all(p.seconds == 3.0 for p in plan.phases) and plan.job.name == SWITCH_JOB
    short = switch_demo_plan(runtime=1.0)
    assert not isinstance(short, str) and all(p.seconds == 1.0 for p in short.phases)


@needs_fuse
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_demo_end_to_end(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "iofs", "demo", "--runtime", "1"]
    command += ["--results", str(tmp_path), "--dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.glob("*-demo")
    sentences = findings(load_results(run_dir))
    assert len(sentences) == 8
    for sentence in sentences:
        assert sentence.replace("\n", " ")[:60] in result.stdout.replace("\n", " ")
    assert "Findings" in (run_dir / "summary.txt").read_text()
    # The live-switch experiment, in switch/ of the same results directory.
    switch = run_dir / "switch"
    assert {"timeline.svg", "timeline.html", "summary.txt"} <= {p.name for p in switch.iterdir()}
    verify = json.loads((switch / "verify-result.json").read_text())
    assert verify["status"] == "ok" and verify["switches"] == len(SWITCH_SCHEDULE) - 1
    assert "Switch 1 (blocking to xfs)" in result.stdout.replace("\n", " ")


# -- the transport comparison --------------------------------------------------------------
READ, WRITE = "read-4k-direct-qd16", "write-4k-direct-qd16"


def transport_results(
    uring_reads: float, uring_writes: float, skipped: tuple[tuple[str, str], ...] = ()
) -> Results:
    """The demo's transport runs with these uring IOPS (pyfuse3: 10k reads, 5k writes)."""
    pyfuse3, dev, uring = TRANSPORT_PATHS

    def transport_run(path: str, reads: float, writes: float, d: DaemonFigures | None) -> Run:
        figures = (fig(READ, reads, 900), fig(WRITE, writes, 1800, "write"))
        return run("dir", path, TRANSPORT_JOB, *figures, daemon=d)

    runs = [
        transport_run(NATIVE, 50_000, 40_000, None),
        transport_run(pyfuse3, 10_000, 5_000, daemon(1.2, requests=30_000)),
        transport_run(
            dev,
            10_400,
            10_000,
            daemon(0.8, transport={"transport_requests": 40_000, "transport_wakeups": 4_000}),
        ),
        transport_run(
            PASSTHROUGH_PATH, 48_000, 39_000, daemon(0.01, requests=20, engine="blocking")
        ),
    ]
    if not skipped:
        counters = {
            "transport_requests": 60_000,
            "transport_wakeups": 1_000,
            "transport_uring_requests": 59_990,
            "transport_uring_wakeups": 2_000,
        }
        runs.append(
            transport_run(
                uring, uring_reads, uring_writes, daemon(1.2, transport=counters, requests=60_000)
            )
        )
    return Results(kind="demo", runs=tuple(runs), jobs={}, skipped=skipped)


def test_transport_finding_is_worded_from_the_numbers() -> None:
    faster = transports(transport_results(23_000, 9_000))
    assert faster.startswith(
        "In blocking mode, 4 KiB O_DIRECT random reads and writes at queue depth 16: "
    )
    assert "dev matched pyfuse3 on reads within noise (10.4k vs 10.0k IOPS)" in faster
    assert "and served 2.00x pyfuse3's writes (10.0k vs 5.00k IOPS)" in faster
    assert "uring served 2.30x pyfuse3's reads (23.0k vs 10.0k IOPS)" in faster
    assert "and served 1.80x pyfuse3's writes (9.00k vs 5.00k IOPS)" in faster
    # CPU per request: 1.2 s over 30,000 requests; 0.8 s over 1,000; 1.2 s over 60,000.
    assert "Daemon CPU per request: pyfuse3 40.0µs, dev 800µs, uring 20.0µs" in faster
    # dev counts its /dev/fuse reads; uring its ring's wake-ups.
    assert "requests per wake-up: dev 10.0, uring 30.0." in faster
    # The other way round: a slower uring is reported as slower.
    slower = transports(transport_results(5_000, 4_000))
    assert "uring was slower than pyfuse3 on reads, 0.50x (5.00k vs 10.0k IOPS)" in slower
    assert "and was slower than pyfuse3 on writes, 0.80x (4.00k vs 5.00k IOPS)" in slower
    assert "served" not in slower.split("uring", 1)[1].split(".")[0]


def test_passthrough_finding_against_pyfuse3_and_native() -> None:
    sentence = passthrough(transport_results(23_000, 9_000))
    assert sentence.startswith(
        "In passthrough mode (the kernel reads and writes the backing file itself), the same "
        "job served 4.80x pyfuse3's reads (48.0k vs 10.0k IOPS) and served 7.80x pyfuse3's "
        "writes (39.0k vs 5.00k IOPS); natively 50.0k and 40.0k IOPS, within noise of "
        "passthrough"
    )
    assert sentence.endswith("the daemon served 18 data requests for its 348,000 I/Os.")
    results = transport_results(23_000, 9_000)
    slow = dataclasses.replace(
        results,
        runs=tuple(
            run(
                "dir",
                NATIVE,
                TRANSPORT_JOB,
                fig(READ, 100_000, 90),
                fig(WRITE, 80_000, 90, "write"),
            )
            if r.path == NATIVE
            else r
            for r in results.runs
        ),
    )
    assert "passthrough reaching 0.48x and 0.49x of that" in passthrough(slow)


def test_a_transport_that_cannot_run_is_said_in_one_line() -> None:
    why = "this kernel (6.1.0) has no FUSE over io_uring"
    uring = TRANSPORT_PATHS[2]
    results = transport_results(0, 0, skipped=((f"mode {uring}", why),))
    sentence = transports(results)
    assert sentence.endswith(f". uring was not measured: mode {uring} was skipped ({why}).")
    assert "dev matched pyfuse3 on reads" in sentence
    without = Results(kind="demo", runs=(), jobs={}, skipped=((f"mode {PASSTHROUGH_PATH}", why),))
    assert passthrough(without) == (
        f"Passthrough mode was not measured: mode {PASSTHROUGH_PATH} was skipped ({why})."
    )
    assert transports(without).startswith("The transports were not compared: dir · ")


def test_bench_paths_name_a_transport() -> None:
    assert split_transport("blocking,transport=uring") == ("blocking", "uring")
    assert split_transport("xfs,transport=dev,engine=aio") == ("xfs,engine=aio", "dev")
    assert split_transport("blocking") == ("blocking", None)
    with pytest.raises(IofsError, match="no transport 'tcp'"):
        split_transport("blocking,transport=tcp")
    paths, skipped = check_paths(["blocking,transport=dev", "passthrough,transport=pyfuse3"])
    assert paths == ["blocking,transport=dev"]
    assert skipped[0][0] == "mode passthrough,transport=pyfuse3"
    assert "pyfuse3 transport cannot use FUSE passthrough" in skipped[0][1]


def test_the_transport_runs_take_a_share_of_the_runtime() -> None:
    plan = demo_plan()
    assert set(TRANSPORT_RUNS) <= set(DEMO_RUNS)
    text = plan.jobs[TRANSPORT_JOB].text
    assert "runtime=1\n" in text and "runtime=60\n" in text  # the warm-up pass keeps its cap
    assert "runtime=5\n" in plan.jobs["mixed"].text
    assert "runtime=2\n" in demo_plan(runtime=10).jobs[TRANSPORT_JOB].text
