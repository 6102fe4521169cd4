"""``iofs engines --bench --quick``, run for real into a temporary results directory.

Checks what the run keeps and that every engine that can run here served every
workload; not the timings, which depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iofs.backends import ENGINES
from iofs.engine_bench_results import TARGETS, Target, evaluate_targets
from iofs.engine_workloads import WORKLOADS
from iofs.errors import ExitStatus

IOFS = [sys.executable, "-m", "iofs"]
RUNNABLE = sorted(name for name, cls in ENGINES.items() if cls.probe() is None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scratch = tmp_path_factory.mktemp("bench-engines")
    results = scratch / "results"
    command = [
        *IOFS,
        "engines",
        "--bench",
        "--quick",
        "--dir",
        str(scratch),
        "--results",
        str(results),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    (found,) = results.iterdir()
    assert not list(scratch.glob("iofs-bench-engines-*")), "the scratch data file was left"
    return found


def _results(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    return data


def test_quick_run_keeps_results_for_every_engine_and_workload(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} == {
        "results.json",
        "environment.json",
        "summary.txt",
    }
    results = _results(run_dir)
    workloads = [w.key for w in WORKLOADS]
    assert [w["key"] for w in results["workloads"]] == workloads
    assert sorted(results["engines"]) == sorted(ENGINES)
    served = {(r["workload"], r["engine"]) for r in results["runs"] if r["error"] is None}
    assert served == {(w, e) for w in workloads for e in RUNNABLE}
    for run in results["runs"]:
        assert run["ops"] > 0 and run["latency_us"]["count"] == run["ops"]
        assert run["statistics"]["engine"] == run["engine"]
    summary = (run_dir / "summary.txt").read_text()
    for name in RUNNABLE:
        assert name in summary
    for workload in WORKLOADS:
        assert workload.title in summary
    assert "Targets" in summary
    assert {v["target"] for v in results["targets"]} == {t.text for t in TARGETS}


def test_environment_says_where_and_how_it_ran(run_dir: Path) -> None:
    env = json.loads((run_dir / "environment.json").read_text())
    assert "--quick" in env["command"] and env["command"].startswith("iofs engines --bench")
    for key in ("kernel", "cpu", "cpus", "python", "trio", "iofs_commit"):
        assert env[key]
    assert env["filesystem"]["type"]


@pytest.mark.parametrize("command", [["engines", "--render"], ["report"]])
def test_summary_is_rendered_again_from_results_alone(run_dir: Path, command: list[str]) -> None:
    run = subprocess.run(
        [*IOFS, *command, str(run_dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == (run_dir / "summary.txt").read_text()


def test_targets_are_judged_from_the_data(run_dir: Path) -> None:
    results: Any = _results(run_dir)
    engine = RUNNABLE[0]
    target = Target
    verdicts = evaluate_targets(
        results,
        [
            target("met", "hot-4k-c1", engine, engine, "throughput", 1.0),
            target("missed", "hot-4k-c1", engine, engine, "throughput", 1e9),
            target("lively", "cold-4k-c16", engine, engine, "heartbeat", 0.0),
            target("absent", "hot-4k-c1", "no-such-engine", engine, "throughput", 1.0),
        ],
    )
    assert [v["status"] for v in verdicts] == ["PASS", "FAIL", "PASS", "SKIP"]
    assert "not registered" in verdicts[3]["detail"]


@pytest.mark.parametrize(
    ("arguments", "status", "says"),
    [
        (["--bench", "--engines", "blocking,warp"], ExitStatus.USAGE, "unknown engine: warp"),
        (["--bench", "--workloads", "hot-9k"], ExitStatus.USAGE, "unknown workload: hot-9k"),
        (["--render", "/nonexistent"], ExitStatus.BAD_PATH, "no results.json"),
        (["--bench", "--rounds", "0"], ExitStatus.USAGE, "must be at least 1"),
        (["--quick", "--seconds", "2"], ExitStatus.USAGE, "--seconds, --quick: only with --bench"),
    ],
)
def test_bad_requests_are_one_line_and_a_status(
    tmp_path: Path, arguments: list[str], status: int, says: str
) -> None:
    command = [*IOFS, "engines", *arguments, "--dir", str(tmp_path), "--results", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == status, run.stderr
    assert says in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir()), "nothing is made for a refused request"
