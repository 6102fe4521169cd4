"""``scripts/bench_engines.py --quick``, run for real into a temporary results directory.

Checks what the run keeps and that every engine that can run here served every
workload; not the timings, which depend on the machine.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iofs.backends import ENGINES

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_engines.py"
RUNNABLE = sorted(name for name, cls in ENGINES.items() if cls.probe() is None)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engines", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scratch = tmp_path_factory.mktemp("bench-engines")
    results = scratch / "results"
    command = [
        sys.executable,
        str(SCRIPT),
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


def test_quick_run_keeps_results_for_every_engine_and_workload(
    run_dir: Path, bench: ModuleType
) -> None:
    assert {p.name for p in run_dir.iterdir()} == {
        "results.json",
        "environment.json",
        "summary.txt",
    }
    results = _results(run_dir)
    workloads = [w.key for w in bench.WORKLOADS]
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
    for workload in bench.WORKLOADS:
        assert workload.title in summary
    assert "Targets" in summary
    assert {v["target"] for v in results["targets"]} == {t.text for t in bench.TARGETS}


def test_environment_says_where_and_how_it_ran(run_dir: Path) -> None:
    env = json.loads((run_dir / "environment.json").read_text())
    assert "--quick" in env["command"] and str(SCRIPT) in env["command"]
    for key in ("kernel", "cpu", "cpus", "python", "trio", "iofs_commit"):
        assert env[key]
    assert env["filesystem"]["type"]


def test_summary_is_rendered_again_from_results_alone(run_dir: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--render", str(run_dir)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (run_dir / "summary.txt").read_text()


def test_targets_are_judged_from_the_data(run_dir: Path, bench: ModuleType) -> None:
    results = _results(run_dir)
    engine = RUNNABLE[0]
    target = bench.Target
    verdicts = bench.evaluate_targets(
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
