"""``iofs switch``: sampling on one clock, the timeline, its rendering, and a real run.

The rendering tests use ``tests/data/switch-run``, recorded from a real run on the
development VM (``iofs switch --schedule blocking:1.5s xfs:1.5s btrfs:1.5s --size 16m``;
the statistics samples without their ``percentiles_us``, which the loader ignores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofs.backends.base import EngineStatistics
from iofs.errors import ExitStatus
from iofs.schedule import parse_schedule
from iofs.stats import ProcessSnapshot, Recorder, Snapshot, SwitchRecord
from iofs.switch import Sampler
from iofs.switch_jobs import layout_text, run_text, verify_result, verify_text
from iofs.switch_report import load_timeline, render_switch
from iofs.timeline import (
    FIO_PLAT_NR,
    Request,
    Sample,
    build,
    fio_bucket_value,
    hist_percentile,
    phase_figures,
    switch_costs,
)
from iofs.timeline_render import findings
from iofs.units import format_count, format_ns

from .conftest import needs_fuse, scratch_dir
from .test_bench import left_behind, needs_fio

RECORDED = Path(__file__).parent / "data" / "switch-run"


# -- one clock ---------------------------------------------------------------------------------
class FakeClock:
    """CLOCK_MONOTONIC for a test: it moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(clock: FakeClock) -> Recorder:
    return Recorder(
        "blocking",
        wall_clock=lambda: 1_700_000_000.0 + clock.now,
        monotonic=clock,
        process=lambda: ProcessSnapshot(clock.now / 10, 0.0, 0, 0, 1 << 20, 1),
    )


def test_the_sampler_keeps_to_its_grid_and_skips_the_slots_it_missed() -> None:
    clock = FakeClock(500.0)
    daemon = recorder(clock)
    costs = iter([0.01, 0.01, 0.45, 0.01, 0.01])  # the third read takes 450 ms
    taken: list[tuple[float, float, Snapshot]] = []

    def read() -> Snapshot:
        clock.now += next(costs)
        return daemon.snapshot([])

    def wait(seconds: float) -> bool:
        assert seconds > 0
        clock.now += seconds
        return len(taken) == 5

    sampler = Sampler(
        read, lambda *sample: taken.append(sample), interval=0.2, clock=clock, wait=wait
    )
    sampler.run(start=500.0)
    assert sampler.error is None
    befores = [round(before, 6) for before, _, _ in taken]
    # On the grid 500.0 + k * 0.2; the slow read at 500.4 ended at 500.85, past the
    # slots of 500.6 and 500.8: they were skipped, not taken late or bunched.
    assert befores == [500.0, 500.2, 500.4, 501.0, 501.2]
    # Each sample carries the clock readings around its read, and the daemon's own
    # monotonic clock (its uptime) agrees with them.
    for before, after, snapshot in taken:
        assert after > before
        assert before - 500.0 < snapshot.uptime <= after - 500.0 + 1e-9


def test_a_failing_read_ends_sampling_and_is_kept() -> None:
    clock = FakeClock(0.0)

    def read() -> Snapshot:
        raise OSError(107, "Transport endpoint is not connected")

    sampler = Sampler(read, lambda *sample: None, clock=clock, wait=lambda s: False)
    sampler.run(start=0.0)
    assert isinstance(sampler.error, OSError)


def engine(reads: int, in_flight: int) -> EngineStatistics:
    return EngineStatistics(
        engine="blocking",
        direct=False,
        queue_depth=64,
        reads=reads,
        writes=0,
        fsyncs=0,
        fdatasyncs=0,
        bytes_read=reads * 4096,
        bytes_written=0,
        errors=0,
        in_flight=in_flight,
        max_in_flight=in_flight,
        submits=reads,
        completions=reads,
        max_batch=1,
        direct_ops=0,
        bounced=0,
        buffered=0,
        fallbacks=0,
    )


def test_the_daemon_records_each_switch_on_the_monotonic_clock() -> None:
    clock = FakeClock(100.0)
    daemon = recorder(clock)
    clock.now = 101.5
    number = daemon.switch_began("xfs", "blocking", 101.499, engine(reads=40, in_flight=3))
    clock.now = 101.504
    daemon.switch_drained(number, engine(reads=43, in_flight=0))
    clock.now = 102.0
    daemon.switch_began("uncached", "blocking", 102.0, None)  # same engine: nothing drains
    snapshot = daemon.snapshot([])
    assert snapshot.switches == (
        SwitchRecord("xfs", "blocking", 101.499, 101.5, 101.504, 3, 3),
        SwitchRecord("uncached", "blocking", 102.0, 102.0, 102.0, 0, 0),
    )
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def iops_log(rows: list[tuple[float, float]]) -> str:
    return "".join(f"{round(t * 1000)}, {value:g}, 0, 4096, 0\n" for t, value in rows)


def hist_log(rows: list[tuple[float, int, int]]) -> str:
    """Lines of a coarseness-2 histogram log: *count* completions in bin *index*."""
    lines = []
    for t, index, count in rows:
        bins = [0] * (FIO_PLAT_NR // 4)
        bins[index] = count
        lines.append(f"{round(t * 1000)}, 0, 4096, " + ", ".join(map(str, bins)))
    return "\n".join(lines) + "\n"


def test_fio_log_times_samples_and_switches_meet_on_one_axis() -> None:
    start = 2000.0  # CLOCK_MONOTONIC seconds when fio's first request arrived
    clock = FakeClock(start)
    daemon = recorder(clock)
    samples = []
    for k in range(0, 21):  # a sample every 200 ms for 4 s
        clock.now = start + k * 0.2
        samples.append(Sample(clock.now - 0.001, clock.now + 0.001, daemon.snapshot([])))
    phases = parse_schedule(["blocking:2s", "xfs:2s"])
    # fio: 1000 IOPS in blocking mode, 3000 in xfs mode; p99 in bin 200 then bin 180.
    times = [round(start + k * 0.2, 3) for k in range(1, 21)]
    iops = [(t, 1000.0 if t <= start + 2.0 else 3000.0) for t in times]
    hist = [(t, 200 if t <= start + 2.0 else 180, 100) for t in times]
    record = SwitchRecord("xfs", "blocking", start + 2.0, start + 2.0005, start + 2.003, 1, 1)
    timeline = build(
        start=start,
        end=start + 4.0,
        interval=0.2,
        phases=phases,
        iops_logs=[iops_log(iops)],
        hist_logs=[hist_log(hist)],
        samples=samples,
        requests=[Request("xfs", start + 1.999, start + 2.004)],
        records=[record],
        settle=0.5,
    )
    assert timeline.bounds == pytest.approx((0.0, 2.0, 4.0))
    assert [p.t for p in timeline.iops] == pytest.approx([k * 0.2 for k in range(1, 21)])
    assert len(timeline.loop_lag) == 20 and timeline.loop_lag[0].t == pytest.approx(0.2)
    blocking, xfs = phase_figures(timeline)
    assert blocking.median_iops == 1000.0 and xfs.median_iops == 3000.0
    # Steady: the 200 ms windows wholly in the 1.5 s after the 0.5 s of settling.
    assert (len(blocking.iops), len(xfs.iops)) == (7, 7)
    assert blocking.p99_ns == fio_bucket_value(200, 2) and xfs.p99_ns == fio_bucket_value(180, 2)
    (cost,) = switch_costs(timeline, [blocking, xfs])
    assert cost.at == pytest.approx(2.0)
    assert cost.round_trip == pytest.approx(0.005)
    assert cost.setup == pytest.approx(0.0005) and cost.drain == pytest.approx(0.003)
    assert cost.engine_changed and cost.finished_on_old == 1
    assert cost.to_steady == pytest.approx(0.2)
    assert cost.peak_p99_ns == fio_bucket_value(180, 2)


def test_fio_histogram_bins_and_percentiles() -> None:
    # fio's plat_idx_to_val: exact below 128, then 64 bins per power of two.
    assert fio_bucket_value(100, 0) == 100.5
    assert fio_bucket_value(128, 0) == 128 + 1.0  # [128, 130) in the first grouped range
    assert fio_bucket_value(32, 2) == (128 + 136) / 2  # bins 128..131 merged: [128, 136)
    bins = [0] * (FIO_PLAT_NR // 4)
    bins[10], bins[300] = 99, 1
    assert hist_percentile(bins, 99.0) == fio_bucket_value(10, 2)
    assert hist_percentile(bins, 99.5) == fio_bucket_value(300, 2)
    assert hist_percentile([0] * len(bins), 99.0) == 0.0


# -- rendering a recorded run -----------------------------------------------------------------
@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(RECORDED, copy)
    return copy


def test_the_recorded_run_renders_from_its_files_alone(recorded: Path) -> None:
    sentences = render_switch(recorded)
    timeline, plan, verify = load_timeline(recorded)
    figures = phase_figures(timeline)
    costs = switch_costs(timeline, figures)
    assert [f.phase.setting.spec for f in figures] == ["blocking", "xfs", "btrfs"]
    assert len(costs) == 2 and all(c.drain is not None for c in costs)

    svg = (recorded / "timeline.svg").read_text()
    root = ET.fromstring(svg)
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for title in ("IOPS", "p99 completion latency", "loop lag p99", "in flight"):
        assert any(text.startswith(title) or title in text for text in texts), title
    for spec in ("blocking", "xfs", "btrfs"):
        assert spec in texts
    switch_lines = [
        e for e in root.iter("{http://www.w3.org/2000/svg}line") if e.get("class") == "s"
    ]
    assert len(switch_lines) == 2
    polylines = list(root.iter("{http://www.w3.org/2000/svg}polyline"))
    assert len(polylines) == 4  # one series per panel

    summary = (recorded / "summary.txt").read_text()
    for f in figures:
        assert format_count(f.median_iops) in summary and format_ns(f.p99_ns) in summary
    # One comparison and one cost per switch, and the verification.
    assert len(sentences) == 2 * len(costs) + 1
    assert sentences == findings(figures, costs, verify, timeline.settle, timeline.interval)
    assert "found no errors" in sentences[-1] and "4,096 blocks" in sentences[-1]
    for cost, sentence in zip(costs, sentences[1::2], strict=True):
        assert f"Switch {cost.number} ({cost.previous} to {cost.mode})" in sentence
        assert format_ns(cost.peak_p99_ns) in sentence
    rows = (recorded / "timeline.csv").read_text().splitlines()
    assert rows[0].startswith("t_s,mode,fio_iops,fio_p99_ns,")
    assert len(rows) - 1 >= len(timeline.iops)
    assert {row.split(",")[1] for row in rows[1:]} == {"blocking", "xfs", "btrfs"}
    page = (recorded / "timeline.html").read_text()
    assert "<svg" in page and "<script" not in page and sentences[0].split(",")[0] in page
    assert plan["job"] in page


def test_iofs_report_renders_a_switch_run_again_identically(recorded: Path) -> None:
    render_switch(recorded)
    first = {name: (recorded / name).read_text() for name in ("summary.txt", "timeline.svg")}
    report = subprocess.run(
        [sys.executable, "-m", "iofs", "report", str(recorded)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "Phases" in report.stdout and "Findings" in report.stdout
    for name, text in first.items():
        assert (recorded / name).read_text() == text


def test_a_verification_error_is_a_finding(recorded: Path) -> None:
    result = json.loads((recorded / "verify-result.json").read_text())
    result.update(status="failed", errors=2, first_error="verify: bad magic header 2298")
    (recorded / "verify-result.json").write_text(json.dumps(result))
    sentences = render_switch(recorded)
    assert sentences[-1].endswith("found 2 errors (first: verify: bad magic header 2298).")


# -- job texts ------------------------------------------------------------------------------------
JOB = """; reads and writes
[global]
ioengine=libaio
size=8m

[reader]
rw=randread
bs=4k

[writer]
rw=randwrite
bs=4k

[creates]
ioengine=filecreate
nrfiles=10
"""


WRITER = """; random 4 KiB reads and writes at queue depth 4, O_DIRECT
[global]
ioengine=libaio
iodepth=4
direct=1
size=8m
bs=4k

[mixed]
rw=randrw
"""


def sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            found[current] = []
        elif current and line and not line.startswith(";"):
            found[current].append(line)
    return found


def test_the_job_as_run_logs_every_section_and_marks_what_it_writes() -> None:
    run = sections(run_text(JOB))
    for name in ("reader", "writer", "creates"):
        assert "log_avg_msec=200" in run[name] and "log_alternate_epoch_clock_id=1" in run[name]
    assert "verify=crc32c" in run["writer"] and "do_verify=0" in run["writer"]
    # A read-only section with verify would stop after one pass: it gets none.
    assert not any(line.startswith("verify") for line in run["reader"])
    layout = layout_text(run_text(JOB))
    verify = verify_text(run_text(JOB))
    assert layout is not None and verify is not None
    for text in (layout, verify):
        passes = sections(text)
        assert set(passes) == {"global", "reader", "writer"}  # file creation left out
        for name in ("reader", "writer"):
            assert "bs=1m" in passes[name] and "verify_interval=4096" in passes[name]
            assert not any(line.startswith("write_") for line in passes[name])
    assert "rw=write" in sections(layout)["reader"]
    assert "continue_on_error=verify" in sections(verify)["writer"]


@needs_fio
def test_the_read_back_finds_every_corrupted_block(tmp_path: Path) -> None:
    """The lay-out and read-back passes natively (no mount needed): intact, then with two
    4 KiB blocks overwritten behind fio's back."""
    job = run_text(WRITER)
    layout, verify = layout_text(job), verify_text(job)
    assert layout is not None and verify is not None
    for name, text in (("layout.fio", layout), ("verify.fio", verify)):
        (tmp_path / name).write_text(text)

    def fio(name: str) -> dict[str, object]:
        report = tmp_path / f"{name}.json"
        run = subprocess.run(
            [
                "fio",
                "--output-format=json",
                f"--output={report}",
                f"--directory={tmp_path}",
                str(tmp_path / f"{name}.fio"),
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )
        return verify_result(
            verify, run.stdout + run.stderr, json.loads(report.read_text()), run.returncode
        )

    fio("layout")
    intact = fio("verify")
    assert intact["status"] == "ok" and intact["errors"] == 0 and intact["blocks"] == 2048
    (data,) = (p for p in tmp_path.iterdir() if p.name.startswith("mixed"))
    with open(data, "r+b") as file:
        for block in (7, 1500):
            file.seek(block * 4096 + 100)
            file.write(b"not what fio wrote")
    broken = fio("verify")
    assert broken["status"] == "failed" and broken["errors"] == 2
    assert f"offset {7 * 4096}" in str(broken["first_error"])


# -- the command ----------------------------------------------------------------------------------
def iofs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iofs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--schedule", "zfs:3s", "xfs:3s"], ExitStatus.BAD_SETTING, "unknown mode 'zfs'"),
        (["--schedule", "xfs:three"], ExitStatus.BAD_SETTING, "not a duration"),
        (["--schedule", "xfs:3s", "--target", "ntfs"], ExitStatus.BAD_SETTING, "unknown target"),
        (["--schedule", "xfs:3s", "--job", "nope"], ExitStatus.BAD_SETTING, "unknown job"),
    ],
)
def test_mistakes_are_one_line_and_a_status(args: list[str], status: int, message: str) -> None:
    result = iofs("switch", *args)
    assert result.returncode == status
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = scratch_dir("iofs-switch-test-")
    try:
        yield path
    finally:
        leftovers = left_behind(path)
        for line in leftovers:
            if line.startswith("mounted: "):
                subprocess.run(["umount", "-l", line.removeprefix("mounted: ")], check=False)
        shutil.rmtree(path, ignore_errors=True)
        assert not leftovers, leftovers


@needs_fuse
@needs_fio
def test_a_real_switch_run(tmp_path: Path, scratch: Path) -> None:
    job = tmp_path / "writer.fio"
    job.write_text(WRITER)
    results = tmp_path / "results"
    run = iofs(
        *("switch", "--schedule", "blocking:1s", "xfs:1s", "nonblocking:1s"),
        *("--job", str(job), "--results", str(results), "--dir", str(scratch)),
    )
    assert run.returncode == 0, run.stderr
    (out,) = results.iterdir()
    kept = {p.name for p in out.iterdir()}
    assert {
        "plan.json",
        "environment.json",
        "jobs",
        "fio.command",
        "fio.json",
        "fio-logs",
        "stats.jsonl",
        "stats-final.json",
        "switches.json",
        "verify-result.json",
        "run.json",
        "summary.txt",
        "timeline.svg",
        "timeline.html",
    } <= kept
    assert json.loads((out / "run.json").read_text())["daemon_log_errors"] == 0
    # Everything fio wrote through three modes and two live switches reads back intact.
    verify = json.loads((out / "verify-result.json").read_text())
    assert verify["status"] == "ok" and verify["errors"] == 0
    assert verify["blocks"] == 2048 and verify["switches"] == 2
    report = json.loads((out / "fio.json").read_text())
    assert report["jobs"][0]["write"]["total_ios"] > 0

    timeline, _, _ = load_timeline(out)
    assert [r.mode for r in timeline.requests] == ["xfs", "nonblocking"]
    for record, request in zip(timeline.switches, timeline.requests, strict=True):
        assert record.mode == request.mode
        # The daemon took each switch between the runner's write and its return.
        assert request.requested - timeline.start <= record.requested + 1e-6
        assert record.requested <= record.serving
        assert record.drained is not None and record.serving <= record.drained
        assert record.requested + timeline.start <= request.acknowledged + 1e-6
    assert timeline.iops and timeline.p99 and timeline.loop_lag and timeline.in_flight
    befores = [s.before for s in timeline.samples]
    assert befores == sorted(befores)
    assert "found no errors" in run.stdout
