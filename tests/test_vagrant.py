"""The Vagrant lab (``vagrant/``): its provisioning run for real, its Vagrantfile checked.

There is no VM here. ``vagrant/provision.sh`` is run as the VM would run it, except that
its two scratch disks are loop devices on sparse files, and its fstab, mount root and
``bin`` directory are temporary; the install step (scripts/setup.sh, which every other
test relies on already) is skipped. Then ``iofs bench`` runs on the two mounts exactly
as vagrant/README.md says to run it in the VM. Everything is unmounted and detached
afterwards, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iofs import loopfs
from iofs.bench_plan import bench_plan
from iofs.demo import demo_plan
from iofs.errors import ExitStatus
from iofs.report import NATIVE
from iofs.results import load_results

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "vagrant"
PROVISION = LAB / "provision.sh"

#: Each scratch disk: XFS wants at least 300 MiB. Sparse, so it costs what is written.
DISK_BYTES = 512 * 2**20


def _lab_unavailable() -> str | None:
    reasons = [loopfs.unavailable(kind) for kind in loopfs.KINDS]
    return next((reason for reason in reasons if reason), None)


LAB_UNAVAILABLE = _lab_unavailable()
needs_lab = pytest.mark.skipif(LAB_UNAVAILABLE is not None, reason=str(LAB_UNAVAILABLE))


def run(
    *command: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def blkid(device: str, tag: str) -> str:
    return run("blkid", "-p", "-o", "value", "-s", tag, device).stdout.strip()


def mount_of(mountpoint: Path) -> tuple[str, str] | None:
    """(source, type) of the filesystem mounted exactly at *mountpoint*, or None."""
    found = run("findmnt", "-rnv", "-o", "SOURCE,FSTYPE", "--mountpoint", mountpoint)
    return (found.stdout.split()[0], found.stdout.split()[1]) if found.returncode == 0 else None


# -- the scripts, statically ---------------------------------------------------------------
def test_provision_script_parses() -> None:
    result = run("bash", "-n", PROVISION)
    assert result.returncode == 0, result.stderr
    assert os.access(PROVISION, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_provision_script_passes_shellcheck() -> None:
    result = run("shellcheck", PROVISION)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (for ruby -c)")
def test_vagrantfile_is_valid_ruby() -> None:
    result = run("ruby", "-c", LAB / "Vagrantfile")
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    """`vagrant validate`: the common settings, and the libvirt provider's if it is here.

    (VirtualBox's settings need VirtualBox itself installed to be validated.)
    """
    env = {
        "VAGRANT_CWD": str(LAB),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),  # not vagrant/.vagrant
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    result = run("vagrant", "validate", "--ignore-provider", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    plugins = run("vagrant", "plugin", "list", env=env).stdout
    if "vagrant-libvirt" in plugins:
        libvirt = run("vagrant", "validate", env={**env, "VAGRANT_DEFAULT_PROVIDER": "libvirt"})
        assert libvirt.returncode == 0, libvirt.stdout + libvirt.stderr


# -- provisioning, for real ------------------------------------------------------------------
@dataclass
class Lab:
    """Two loop devices provisioned as the VM's scratch disks, and where they went."""

    base: Path
    disks: dict[str, str]  # "xfs"/"btrfs" -> /dev/loopN
    scratch: Path
    fstab: Path
    bin: Path
    first_run: subprocess.CompletedProcess[str] | None = None

    def provision(self, *extra: str | Path) -> subprocess.CompletedProcess[str]:
        return run(PROVISION, *self.arguments(), *extra)

    def arguments(self) -> list[str | Path]:
        return [
            *("--xfs", self.disks["xfs"], "--btrfs", self.disks["btrfs"]),
            *("--scratch", self.scratch, "--fstab", self.fstab, "--bin", self.bin),
            "--no-setup",
        ]


def unresponsive_fuse_mounts() -> list[str]:
    """FUSE mounts whose root does not answer stat(2) within 2 s.

    mkfs.xfs stats every mount point to tell whether its block device is mounted, so one
    stalled FUSE daemon anywhere on the machine (another test's, on a shared machine)
    hangs it. The VM has none when it formats its disks.
    """
    listing = run("findmnt", "-rn", "-t", "fuse,fuse.iofs,fuseblk", "-o", "TARGET").stdout
    hung = []
    for target in listing.split():
        try:
            subprocess.run(["stat", target], capture_output=True, timeout=2, check=False)
        except subprocess.TimeoutExpired:
            hung.append(target)
    return hung


def _tear_down(base: Path, devices: list[str]) -> list[str]:
    """Unmount everything under *base* and detach *devices*; what could not be undone."""
    problems = []
    listing = run("findmnt", "-rn", "-o", "TARGET").stdout.split()
    for target in sorted((t for t in listing if t.startswith(f"{base}/")), reverse=True):
        result = run("umount", target)
        if result.returncode != 0:
            problems.append(f"umount {target}: {result.stderr.strip()}")
    for device in devices:
        result = run("losetup", "-d", device)
        if result.returncode != 0:
            problems.append(f"losetup -d {device}: {result.stderr.strip()}")
    return problems


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    hung = unresponsive_fuse_mounts()
    if hung:
        pytest.skip(f"mkfs.xfs would hang: FUSE mounts here do not answer stat: {hung}")
    base = tmp_path_factory.mktemp("lab")
    devices: list[str] = []
    try:
        for kind in loopfs.KINDS:
            image = base / f"{kind}.img"
            with open(image, "wb") as file:
                file.truncate(DISK_BYTES)
            attached = run("losetup", "--find", "--show", image)
            assert attached.returncode == 0, attached.stderr
            devices.append(attached.stdout.strip())
        fstab = base / "fstab"
        fstab.write_text("# an fstab with an entry of its own\nproc /proc proc defaults 0 0\n")
        lab = Lab(
            base=base,
            disks=dict(zip(loopfs.KINDS, devices, strict=True)),
            scratch=base / "scratch",
            fstab=fstab,
            bin=base / "bin",
        )
        lab.first_run = lab.provision()
        yield lab
    finally:
        problems = _tear_down(base, devices)
        assert not problems, problems


@needs_lab
def test_provision_formats_and_mounts_the_disks(lab: Lab) -> None:
    assert lab.first_run is not None
    assert lab.first_run.returncode == 0, lab.first_run.stderr
    fstab = lab.fstab.read_text().splitlines()
    assert fstab[:2] == ["# an fstab with an entry of its own", "proc /proc proc defaults 0 0"]
    for kind, device in lab.disks.items():
        assert f"formatting {device} as {kind}" in lab.first_run.stdout
        assert blkid(device, "TYPE") == kind
        assert blkid(device, "LABEL") == f"iofs-{kind}"
        mountpoint = lab.scratch / kind
        assert mount_of(mountpoint) == (device, kind)
        assert mountpoint.stat().st_mode & 0o7777 == 0o1777
        entries = [line.split() for line in fstab if f" {mountpoint} " in line]
        uuid = blkid(device, "UUID")
        assert entries == [[f"UUID={uuid}", str(mountpoint), kind, "defaults,nofail", "0", "0"]]
    if (REPO / ".venv" / "bin" / "iofs").exists():
        assert (lab.bin / "iofs").resolve() == (REPO / ".venv" / "bin" / "iofs").resolve()


@needs_lab
def test_provisioning_again_keeps_everything(lab: Lab) -> None:
    markers = {kind: lab.scratch / kind / "result-to-keep" for kind in lab.disks}
    for kind, marker in markers.items():
        marker.write_text(kind)
    fstab = lab.fstab.read_text()
    again = lab.provision()
    assert again.returncode == 0, again.stderr
    assert "formatting" not in again.stdout
    for kind, marker in markers.items():
        assert f"already holds {kind}: kept as it is" in again.stdout
        assert marker.read_text() == kind
        assert mount_of(lab.scratch / kind) == (lab.disks[kind], kind)
    assert lab.fstab.read_text() == fstab


@needs_lab
def test_provision_finds_its_disks_again_by_label(lab: Lab) -> None:
    """Re-provisioning in the VM names no disks: the labels of the first run find them."""
    others = run("blkid", "-c", "/dev/null", "-o", "device", "-t", "LABEL=iofs-xfs").stdout
    if others.split() != [lab.disks["xfs"]]:
        pytest.skip(f"other devices are labelled iofs-xfs here: {others.split()}")
    # btrfs is named, so that nothing but the label can find the xfs disk.
    found = run(PROVISION, "--find", env={"IOFS_BTRFS_DISK": lab.disks["btrfs"]})
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [f"xfs {lab.disks['xfs']}", f"btrfs {lab.disks['btrfs']}"]


@needs_lab
def test_provision_refuses_to_format_a_disk_holding_something_else(lab: Lab) -> None:
    elsewhere = lab.base / "elsewhere"
    harmless = ("--scratch", elsewhere, "--no-fstab", "--bin", elsewhere / "bin", "--no-setup")
    swapped = run(PROVISION, "--xfs", lab.disks["btrfs"], "--btrfs", lab.disks["xfs"], *harmless)
    assert swapped.returncode == 1
    assert "already holds a btrfs filesystem; not formatting it" in swapped.stderr
    same = run(PROVISION, "--xfs", lab.disks["xfs"], "--btrfs", lab.disks["xfs"], *harmless)
    assert same.returncode == 1
    assert "the same device" in same.stderr
    for kind, device in lab.disks.items():
        assert blkid(device, "TYPE") == kind
        assert mount_of(elsewhere / kind) is None


# -- iofs on the scratch filesystems, as vagrant/README.md runs it ----------------------------
def iofs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "iofs", *args)


@needs_lab
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_bench_runs_on_the_scratch_filesystems(lab: Lab, tmp_path: Path) -> None:
    xfs, btrfs = lab.scratch / "xfs", lab.scratch / "btrfs"
    before = {kind: sorted(os.listdir(lab.scratch / kind)) for kind in lab.disks}
    bench = iofs(
        "bench",
        *("--xfs", xfs, "--btrfs", btrfs, "--targets", "xfs", "btrfs"),
        *("--modes", "native", "--jobs", "rand-write-4k", "--runtime", "1", "--size", "4m"),
        *("--results", tmp_path / "results", "--dir", tmp_path),
    )
    assert bench.returncode == 0, bench.stderr
    (out,) = (tmp_path / "results").iterdir()
    results = load_results(out)
    assert {(r.filesystem, r.path, r.status) for r in results.runs} == {
        ("xfs", NATIVE, "ok"),
        ("btrfs", NATIVE, "ok"),
    }
    filesystems = json.loads((out / "environment.json").read_text())["filesystems"]
    for kind, device in lab.disks.items():
        assert filesystems[kind]["type"] == kind
        assert filesystems[kind]["source"] == device
        assert Path(filesystems[kind]["path"]).parent == lab.scratch / kind
        # The run's directory is gone again; what was on the disk stays.
        assert sorted(os.listdir(lab.scratch / kind)) == before[kind]


@needs_lab
def test_plans_put_the_xfs_and_btrfs_targets_on_the_scratch_filesystems(lab: Lab) -> None:
    existing = {kind: lab.scratch / kind for kind in lab.disks}
    bench = bench_plan(existing=existing, modes=[NATIVE], jobs=["rand-read-4k"])
    assert [r.filesystem for r in bench.runs] == ["dir", "xfs", "btrfs"]
    assert bench.existing == existing
    demo = demo_plan(existing=existing)
    assert {"xfs", "btrfs"} <= {r.filesystem for r in demo.runs}
    assert not [what for what, _ in demo.skipped if what.startswith("target")]


@needs_lab
def test_a_scratch_directory_of_the_wrong_type_is_one_line(lab: Lab) -> None:
    wrong = iofs("bench", "--xfs", lab.scratch / "btrfs", "--modes", NATIVE)
    assert wrong.returncode == ExitStatus.BAD_PATH
    assert wrong.stderr.splitlines() == [
        f"iofs: error: --xfs {lab.scratch / 'btrfs'}: on a btrfs filesystem, not xfs"
    ]
