"""``iofs demo``: a short, fixed set of fio runs that shows each I/O strategy's signature.

About two to three minutes on a small machine. The runs (`DEMO_RUNS`):

- the ``mixed`` job (heavy writes plus a steady file-create job) natively and in
  ``blocking`` and ``xfs`` mode: does metadata wait behind data on the event loop?
- ``rand-read-4k-direct`` (every read a FUSE request, one at a time) natively and in
  ``blocking``, ``btrfs`` (thread pool) and ``nonblocking`` (RWF_NOWAIT first) mode: what
  a thread hand-off costs per request, and how many reads RWF_NOWAIT served inline;
- ``rand-read-4k-direct-qd16`` (a 256 MiB file read cold, 16 reads in flight) natively,
  in ``nonblocking`` mode (its hit ratio when cold) and in ``xfs`` mode on buffered
  backing files with io_uring and with Linux AIO: which of the two stays asynchronous;
- ``rand-write-4k-direct-qd16`` and ``fdatasync-write-4k`` natively on fresh XFS and
  Btrfs images (root only; skipped with the reason otherwise), or on existing XFS and
  Btrfs filesystems (``--xfs DIR``, ``--btrfs DIR``).
- ``transport-4k-direct-qd16`` (4 KiB O_DIRECT reads, then writes, at queue depth 16,
  1 s each) in ``blocking`` mode over each transport (pyfuse3, dev, uring) and in
  ``passthrough`` mode: what the way requests reach the daemon costs, and what leaving
  the daemon out of the data path gains (`TRANSPORT_RUNS`; a transport that cannot run
  here is skipped with the reason).
- a live switch (`SWITCH_SCHEDULE`, ``iofs switch``): ``rand-read-4k-direct-qd16``
  through one mount switched blocking → xfs → btrfs → nonblocking while it runs, kept
  in ``switch/`` of the demo's results directory with its timeline chart.

Every mount goes over iofs's default transport (``dev``, or ``$IOFS_TRANSPORT``) but the
transport comparison's, which names each. `iofs.findings` turns a demo's `Results` into
one plain sentence per experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from .bench import Interrupted, run_plan
from .bench_plan import Plan, PlannedRun, check_filesystems, check_paths
from .errors import IofsError
from .findings import (
    AIO_BUFFERED,
    PASSTHROUGH_PATH,
    TRANSPORT_PATHS,
    URING_BUFFERED,
    findings,
)
from .fiojobs import load_job, with_overrides
from .loopfs import interrupts_deferred
from .report import NATIVE
from .results import render_results
from .switch import SwitchPlan, run_switch, switch_plan
from .switch_report import render_switch

#: The live-switch experiment: the modes in order, on this job, through one mount.
SWITCH_SCHEDULE = ("blocking", "xfs", "btrfs", "nonblocking")
SWITCH_JOB = "rand-read-4k-direct-qd16"

#: Seconds each time-based demo job runs.
DEMO_RUNTIME = 5.0

#: The transport comparison: one job natively, in blocking mode over each transport, and
#: in passthrough mode (on the dev transport: pyfuse3 cannot hand files to the kernel).
TRANSPORT_JOB = "transport-4k-direct-qd16"
TRANSPORT_RUNS = tuple(
    PlannedRun("dir", path, TRANSPORT_JOB) for path in (NATIVE, *TRANSPORT_PATHS, PASSTHROUGH_PATH)
)
#: The transport job's two timed sections each run this share of the demo's runtime (1 s
#: of 5, IOPS sampled every 100 ms): five runs, each mostly mount, lay-out and cache-drop
#: time, about half a minute in all.
TRANSPORT_SHARE = 0.2

DEMO_RUNS = (
    PlannedRun("dir", NATIVE, "mixed"),
    PlannedRun("dir", "blocking", "mixed"),
    PlannedRun("dir", "xfs", "mixed"),
    PlannedRun("dir", NATIVE, "rand-read-4k-direct"),
    PlannedRun("dir", "blocking", "rand-read-4k-direct"),
    PlannedRun("dir", "btrfs", "rand-read-4k-direct"),
    PlannedRun("dir", "nonblocking", "rand-read-4k-direct"),
    PlannedRun("dir", NATIVE, "rand-read-4k-direct-qd16"),
    PlannedRun("dir", "nonblocking", "rand-read-4k-direct-qd16"),
    PlannedRun("dir", URING_BUFFERED, "rand-read-4k-direct-qd16"),
    PlannedRun("dir", AIO_BUFFERED, "rand-read-4k-direct-qd16"),
    *TRANSPORT_RUNS,
    PlannedRun("xfs", NATIVE, "rand-write-4k-direct-qd16"),
    PlannedRun("btrfs", NATIVE, "rand-write-4k-direct-qd16"),
    PlannedRun("xfs", NATIVE, "fdatasync-write-4k"),
    PlannedRun("btrfs", NATIVE, "fdatasync-write-4k"),
)


# -- running -------------------------------------------------------------------------------
def demo_plan(
    *,
    runtime: float = DEMO_RUNTIME,
    results: Path = Path("results"),
    directory: Path | None = None,
    existing: Mapping[str, Path] | None = None,
    drop_caches: bool = True,
) -> Plan:
    """The demo's runs that can run here; the others are skipped with the reason.

    *existing* (as for `bench_plan`) puts the xfs and btrfs runs on mounted filesystems.
    """
    existing = dict(existing or {})
    filesystems, skipped = check_filesystems(
        list(dict.fromkeys(r.filesystem for r in DEMO_RUNS)), existing
    )
    paths, skipped_paths = check_paths(list(dict.fromkeys(r.path for r in DEMO_RUNS)))
    runs = tuple(r for r in DEMO_RUNS if r.filesystem in filesystems and r.path in paths)
    jobs = {}
    for name in dict.fromkeys(r.job for r in runs):
        job = load_job(name)
        seconds = max(1.0, round(runtime * TRANSPORT_SHARE)) if name == TRANSPORT_JOB else runtime
        jobs[name] = type(job)(name, with_overrides(job.text, seconds))
    return Plan(
        kind="demo",
        runs=runs,
        jobs=jobs,
        skipped=(*skipped, *skipped_paths),
        results=results,
        directory=directory,
        existing=existing,
        drop_caches=drop_caches,
        settings={"runtime": runtime},
    )


def switch_demo_plan(
    *, runtime: float = DEMO_RUNTIME, directory: Path | None = None
) -> SwitchPlan | str:
    """The live-switch experiment: `SWITCH_SCHEDULE`, each mode for 0.6 x *runtime*
    (3 s by default); modes that cannot run here are left out. Why not, if it cannot run.
    """
    seconds = max(1.0, round(0.6 * runtime, 1))
    try:
        return switch_plan(
            [f"{mode}:{seconds:g}s" for mode in SWITCH_SCHEDULE],
            job=SWITCH_JOB,
            directory=directory,
            skip_unavailable=True,
        )
    except IofsError as exc:
        return str(exc)


def run_demo(plan: Plan, switch: SwitchPlan | str, console: Console | None = None) -> int:
    """Run the demo's fio runs, then the live-switch experiment into ``switch/`` of the
    same results directory (*switch* is why not, if it cannot run); print both summaries."""
    console = console or Console(stderr=True)
    try:
        out = run_plan(plan, console)
    except Interrupted as interrupted:
        with interrupts_deferred():
            render_results(interrupted.results, findings=findings)
        raise
    switched = False
    if isinstance(switch, str):
        console.print(f"[yellow]skipping the live-switch experiment: {switch}[/]")
    else:
        try:
            run_switch(switch, out / "switch", console)
            switched = True
        except IofsError as exc:
            console.print(f"[yellow]the live-switch experiment failed: {exc}[/]")
        except KeyboardInterrupt:
            with interrupts_deferred():
                render_results(out, findings=findings)
            raise
    render_results(out, findings=findings)
    if switched:
        render_switch(out / "switch")
    return 0
