"""Real programs on the mount: what they leave must be what they leave on a plain directory."""

from __future__ import annotations

import mmap
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from .conftest import Mount
from .differential import snapshot

REPO = Path(__file__).resolve().parent.parent


def run(*command: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def test_shared_mmap_writes_reach_the_backing_file(mnt: Mount) -> None:
    path = mnt.mountpoint / "mapped"
    path.write_bytes(bytes(3 * mmap.PAGESIZE))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapping:
        mapping[10:15] = b"hello"
        mapping[2 * mmap.PAGESIZE : 2 * mmap.PAGESIZE + 5] = b"world"
        mapping.flush()
    data = (mnt.backing / "mapped").read_bytes()
    assert data[10:15] == b"hello"
    assert data[2 * mmap.PAGESIZE : 2 * mmap.PAGESIZE + 5] == b"world"


def test_sqlite_database_stays_consistent(mnt: Mount) -> None:
    db = sqlite3.connect(mnt.mountpoint / "app.db")
    try:
        db.execute("pragma journal_mode=wal")
        db.execute("create table t (k integer primary key, v blob)")
        for batch in range(20):
            with db:
                db.executemany(
                    "insert into t (v) values (?)", [(os.urandom(300),) for _ in range(50)]
                )
            if batch % 5 == 0:
                db.execute("delete from t where k % 3 = 0")
        db.execute("pragma wal_checkpoint(truncate)")
    finally:
        db.close()
    check = sqlite3.connect(mnt.backing / "app.db")
    try:
        assert check.execute("pragma integrity_check").fetchone() == ("ok",)
        assert check.execute("select count(*) from t").fetchone()[0] > 600
    finally:
        check.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_repository(mnt: Mount) -> None:
    repo = mnt.mountpoint / "repo"
    run("git", "init", "-q", str(repo), cwd=mnt.mountpoint)
    shutil.copytree(REPO / "iofs", repo / "iofs", ignore=shutil.ignore_patterns("__pycache__"))
    identity = ("-c", "user.name=iofs", "-c", "user.email=iofs@example.invalid")
    run("git", "add", "-A", cwd=repo)
    run("git", *identity, "commit", "-qm", "one", cwd=repo)
    run("git", "mv", "iofs", "moved", cwd=repo)
    run("git", *identity, "commit", "-qm", "two", cwd=repo)
    run("git", "gc", "-q", cwd=repo)
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""


def _make_tree(root: Path) -> None:
    """A tree with what archives carry: hard links, symlinks, a FIFO, modes, xattrs."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(os.urandom(100_000))
    os.link(root / "dir" / "file", root / "dir" / "sub" / "hardlink")
    os.symlink("../file", root / "dir" / "sub" / "symlink")
    os.mkfifo(root / "dir" / "fifo")
    (root / "dir" / "private").write_text("secret")
    (root / "dir" / "private").chmod(0o600)
    os.setxattr(root / "dir" / "file", "user.origin", b"archive")
    (root / "dir" / "empty").touch()
    with open(root / "dir" / "sparse", "wb") as sparse:
        sparse.truncate(10_000_000)


def test_tar_and_cp_give_the_same_tree(mnt: Mount, plain: Path) -> None:
    source = plain / "source"
    source.mkdir()
    _make_tree(source)
    archive = plain / "tree.tar"
    run("tar", "--xattrs", "--sparse", "-cf", str(archive), "-C", str(source), ".", cwd=plain)
    for target in (mnt.mountpoint / "untarred", plain / "untarred"):
        target.mkdir()
        run("tar", "--xattrs", "-xpf", str(archive), "-C", str(target), cwd=plain)
    assert snapshot(mnt.mountpoint / "untarred") == snapshot(plain / "untarred")
    # cp -a from the mount to a plain directory and back again
    run("cp", "-a", str(mnt.mountpoint / "untarred"), str(plain / "copied"), cwd=plain)
    run("cp", "-a", str(plain / "copied"), str(mnt.mountpoint / "copied"), cwd=plain)
    assert snapshot(mnt.mountpoint / "copied") == snapshot(source)
    # cp -a keeps times: every one of them must have made the round trip exactly.
    for path in (source / "dir").rglob("*"):
        copied = mnt.mountpoint / "copied" / path.relative_to(source)
        assert os.lstat(copied).st_mtime_ns == os.lstat(path).st_mtime_ns, path
