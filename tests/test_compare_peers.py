"""scripts/compare_peers.py: which targets it runs and how it reads issue 12's targets.

The benchmark itself needs root, fio, the peers and half an hour; these check the parts
that decide what a run compares and what its tables say, from results made up here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compare_peers", REPO / "scripts" / "compare_peers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = _load_script()


def _result(target: str, job: str, value: float) -> dict[str, object]:
    key = "mibs" if job.endswith("1m") else "iops"
    return {"target": target, "job": job, "iops": value, key: value}


def test_hp_caching_adds_a_row_per_mode_with_passthrough_hps_caching() -> None:
    found = compare.targets(None, ["blocking", "passthrough"], ("dev",), hp_caching=True)
    assert list(found) == [
        "native",
        "iofs-blocking-dev",
        "iofs-blocking-dev-hpcache",
        "iofs-passthrough",  # the writeback cache turns passthrough off: no such row
    ]
    plain, cached = found["iofs-blocking-dev"], found["iofs-blocking-dev-hpcache"]
    assert cached[: len(plain)] == plain
    assert cached[len(plain) :] == list(compare.HP_CACHING)
    assert "iofs-blocking-dev-hpcache" not in compare.targets(None, ["blocking"], ("dev",))


def test_a_before_without_transports_runs_once_per_mode(tmp_path: Path) -> None:
    old = tmp_path / "iofs"
    old.write_text("#!/bin/sh\necho 'usage: iofs mount [-h] [--mode MODE]'\n")
    old.chmod(0o755)
    found = compare.before_targets(old, ["blocking", "xfs"], ("dev", "uring"))
    assert found == {
        "iofs-blocking-before": [str(old), "mount", "--foreground", "--mode", "blocking"],
        "iofs-xfs-before": [str(old), "mount", "--foreground", "--mode", "xfs"],
    }
    new = tmp_path / "iofs-new"
    new.write_text("#!/bin/sh\necho 'usage: iofs mount [--transport NAME]'\n")
    new.chmod(0o755)
    assert list(compare.before_targets(new, ["blocking"], ("dev", "uring"))) == [
        "iofs-blocking-dev-before",
        "iofs-blocking-uring-before",
    ]


def test_targets_are_medians_over_rounds_and_said_met_or_missed() -> None:
    results = []
    for hp, blocking, xfs in ((1000, 900, 100), (1000, 700, 520), (1000, 800, 600)):
        results += [
            _result("hp-nopt", "randread-4k-qd16-direct", hp),
            _result("iofs-blocking-dev", "randread-4k-qd16-direct", blocking),
            _result("iofs-xfs-dev", "randread-4k-qd16-direct", xfs),
            _result("hp-nopt", "filedelete", 1000),
            _result("iofs-blocking-dev", "filedelete", 790),
        ]
    labels = ["hp-nopt", "iofs-blocking-dev", "iofs-xfs-dev"]
    text = compare.table(results, labels, ["randread-4k-qd16-direct", "filedelete"])
    # Medians: blocking 800 of hp's 1000, xfs 520 of blocking's 800.
    assert "| randread-4k-qd16-direct, blocking / hp-nopt | >= 0.75x | 0.80x met |" in text
    assert "| randread-4k-qd16-direct, xfs / blocking | >= 0.6x | 0.65x met |" in text
    assert "| filedelete, blocking / hp-nopt | >= 0.8x | 0.79x **missed** |" in text
    # A target whose reference did not run is left out, not guessed.
    assert "pyfuse3-example" not in text
