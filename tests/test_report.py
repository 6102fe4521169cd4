"""The renderings of bench results: pure functions of the data, deterministic."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

from rich.console import Console

from iofs.backends import EngineStatistics
from iofs.report import (
    NATIVE,
    DaemonFigures,
    Figures,
    Results,
    Run,
    daemon_figures,
    parse_fio,
    summary_tables,
    summary_text,
)
from iofs.report_chart import chart_svg, html_page
from iofs.stats import ProcessSnapshot, Recorder
from iofs.units import format_count


def figures(section: str, iops: float, p99_us: float, direction: str = "read") -> Figures:
    return Figures(
        section=section,
        direction=direction,
        ios=int(iops * 2),
        iops=iops,
        bandwidth=iops * 4096,
        p50_ns=p99_us * 500,
        p99_ns=p99_us * 1000,
        p999_ns=p99_us * 2000,
        iops_stddev=iops / 20,
        iops_samples=4,
        runtime_s=2.0,
    )


def daemon(cpu_seconds: float) -> DaemonFigures:
    return DaemonFigures(
        cpu_seconds=cpu_seconds,
        requests=1000,
        data_requests=900,
        loop_lag_p99_ns=250_000,
        engine="blocking",
    )


def sample_results() -> Results:
    return Results(
        kind="bench",
        runs=(
            Run("dir", NATIVE, "rr", "ok", figures=(figures("rr", 40_000, 50),)),
            Run(
                "dir",
                "blocking",
                "rr",
                "ok",
                figures=(figures("rr", 10_000, 200),),
                daemon=daemon(0.5),
            ),
            Run("dir", "xfs,engine=aio", "rr", "failed", reason="fio prepare failed (status 1)"),
            Run(
                "xfs",
                NATIVE,
                "rr",
                "ok",
                figures=(figures("rr", 80_000, 30),),
                extents={"rr.0.0": 5000},
            ),
            Run("xfs", "blocking", "rr", "not run", reason="interrupted before it ran"),
        ),
        jobs={"rr": "Random reads. More words."},
        environment={
            "kernel": "6.18",
            "cache_drop": "dropped",
            "filesystems": {"dir": {"path": "/tmp/x", "type": "ext4"}},
        },
        skipped=(("target btrfs", "needs root"),),
    )


def render(results: Results) -> str:
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    for table in summary_tables(results):
        console.print(table)
    return console.export_text()


def test_summary_shows_ratios_cpu_per_op_and_failures() -> None:
    text = summary_text(sample_results(), ["A finding."])
    assert "rr: Random reads" in text
    assert "dir · native" in text and "40.0k" in text
    assert "0.25x" in text  # 10k against 40k natively on the same filesystem
    assert "25.0µs" in text  # 0.5 s of daemon CPU over 20,000 operations
    assert "failed: fio prepare failed" in text
    assert "not run: interrupted" in text
    assert "xfs img · native" in text and "80.0k" in text
    assert "Skipped target btrfs: needs root." in text
    assert "dir = ext4 at /tmp/x" in text
    assert "- A finding." in text
    assert "extents of fio's files after the run (filefrag): xfs img · native 5,000" in text
    # A pure function: the same data renders the same text.
    assert text == summary_text(sample_results(), ["A finding."])
    assert render(sample_results()) == render(sample_results())


def test_chart_is_well_formed_svg_with_a_bar_per_run() -> None:
    svg = chart_svg(sample_results())
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "dir · blocking" in texts and "xfs img · native" in texts
    assert "10.0k  (0.25x)" in texts
    assert any(t.startswith("failed: fio prepare failed") for t in texts)
    rects = list(root.iter("{http://www.w3.org/2000/svg}rect"))
    assert len(rects) >= 1 + 2 * 3  # background, IOPS and p99 bars of three runs
    assert svg == chart_svg(sample_results())


def test_html_page_is_self_contained() -> None:
    page = html_page(sample_results(), ["Blocking <mode> was slower."], "summary & text")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "Blocking &lt;mode&gt; was slower." in page and "summary &amp; text" in page
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def fio_report() -> dict[str, Any]:
    def side(ios: int, iops: float) -> dict[str, Any]:
        return {
            "total_ios": ios,
            "iops": iops,
            "bw_bytes": iops * 4096,
            "iops_stddev": 5.0,
            "iops_samples": 4,
            "clat_ns": {"percentile": {"50.000000": 1000, "99.000000": 5000, "99.900000": 9000}},
        }

    empty = {"total_ios": 0, "iops": 0, "bw_bytes": 0}
    return {
        "global options": {"ioengine": "psync"},
        "jobs": [
            {
                "jobname": "data",
                "job options": {},
                "job_runtime": 2000,
                "read": empty,
                "write": side(400, 200.0),
                "trim": empty,
                "sync": {"total_ios": 0, "lat_ns": {"N": 10, "percentile": {"99.000000": 7e6}}},
            },
            {
                "jobname": "create",
                "job options": {"ioengine": "filecreate"},
                "job_runtime": 1000,
                "read": side(100, 100.0),
                "write": empty,
                "trim": empty,
                "sync": {"total_ios": 0, "lat_ns": {"N": 0}},
            },
        ],
    }


def test_fio_json_becomes_figures() -> None:
    write, sync, create = parse_fio(fio_report())
    assert (write.section, write.direction, write.ios, write.iops) == ("data", "write", 400, 200)
    assert (write.p50_ns, write.p99_ns, write.p999_ns) == (1000, 5000, 9000)
    assert (write.bandwidth, write.iops_samples, write.runtime_s) == (200 * 4096, 4, 2.0)
    assert (sync.direction, sync.ios, sync.iops, sync.p99_ns) == ("sync", 10, 5.0, 7e6)
    # Metadata engines move no data: their "bandwidth" (file sizes) is not shown.
    assert (create.section, create.ios, create.bandwidth) == ("create", 100, 0.0)
    run = Run("dir", "blocking", "j", "ok", figures=(write, sync, create), daemon=daemon(0.05))
    assert run.ops == 500  # syncs are not operations of their own
    assert run.cpu_per_op == 0.05 / 500


def engine(reads: int, **details: int) -> EngineStatistics:
    return EngineStatistics(
        engine="nowait",
        direct=False,
        queue_depth=64,
        reads=reads,
        writes=0,
        fsyncs=0,
        fdatasyncs=0,
        bytes_read=reads * 4096,
        bytes_written=0,
        errors=0,
        in_flight=0,
        max_in_flight=4,
        submits=reads,
        completions=reads,
        max_batch=1,
        direct_ops=0,
        bounced=0,
        buffered=0,
        fallbacks=details.get("nowait_would_block", 0),
        details=details,
    )


def test_daemon_figures_are_the_difference_of_two_snapshots() -> None:
    clock = [100.0]
    cpu = [ProcessSnapshot(1.0, 0.5, 0, 0, 0, 1)]
    recorder = Recorder("nonblocking", monotonic=lambda: clock[0], process=lambda: cpu[0])
    start = recorder.begin("read")
    recorder.end("read", start, error=False, nbytes=4096)
    before = recorder.snapshot([engine(10, nowait_hits=8, nowait_would_block=2)])
    for _ in range(90):
        recorder.end("read", recorder.begin("read"), error=False, nbytes=4096)
    recorder.end("lookup", recorder.begin("lookup"), error=False)
    clock[0], cpu[0] = 102.0, ProcessSnapshot(1.75, 0.75, 0, 0, 0, 1)
    after = recorder.snapshot([engine(100, nowait_hits=80, nowait_would_block=20)])
    figures = daemon_figures(before, after)
    assert figures.cpu_seconds == 1.0
    assert (figures.requests, figures.data_requests) == (91, 90)
    assert figures.engine == "nowait"
    assert figures.engine_counters["reads"] == 90
    assert figures.engine_counters["nowait_hits"] == 72
    assert figures.engine_counters["fallbacks"] == 18
    assert figures.operations["read"][0] == 90 and figures.operations["lookup"][0] == 1
    assert (figures.transport, dict(figures.transport_counters)) == ("pyfuse3", {})
    assert figures.requests_per_wakeup is None  # pyfuse3 counts no wake-ups


def test_daemon_figures_carry_the_transport_counters() -> None:
    recorder = Recorder("blocking")
    ring = {"transport_uring_requests": 100, "transport_uring_wakeups": 50, "fuse_max_write": 1}
    dev = {"transport_requests": 110, "transport_wakeups": 60, "transport_max_batch": 4}
    before = recorder.snapshot([], extra={**dev, **ring, "inodes": 3}, transport="uring")
    ring = {"transport_uring_requests": 700, "transport_uring_wakeups": 250, "fuse_max_write": 1}
    dev = {"transport_requests": 712, "transport_wakeups": 262, "transport_max_batch": 9}
    after = recorder.snapshot([], extra={**dev, **ring, "inodes": 9}, transport="uring")
    figures = daemon_figures(before, after)
    assert figures.transport == "uring"
    # Event counts over the run; sizes and settings (max batch, max write) are left out.
    assert dict(figures.transport_counters) == {
        "transport_requests": 602,
        "transport_wakeups": 202,
        "transport_uring_requests": 600,
        "transport_uring_wakeups": 200,
    }
    assert figures.requests_per_wakeup == 3.0  # the ring's: 600 / 200
    dev_only = daemon_figures(
        recorder.snapshot([], extra={"transport_requests": 0, "transport_wakeups": 0}),
        recorder.snapshot([], extra={"transport_requests": 50, "transport_wakeups": 20}),
    )
    assert dev_only.requests_per_wakeup == 2.5


def test_counts_are_short() -> None:
    assert [format_count(v) for v in (0, 5.25, 950, 12_345, 999_999, 1_234_567)] == [
        "0",
        "5.2",
        "950",
        "12.3k",
        "1.00M",
        "1.23M",
    ]
