"""The documentation's commands run and say what the docs say (``scripts/check_docs.py``).

- The extractor, without running anything: prompts, annotations, skip reasons, output
  patterns, the bash script a block becomes.
- The statistics reference in docs/statistics.md names every field of a real snapshot.
- Every relative link between README.md, docs/*.md and vagrant/README.md leads to a file
  that exists, and every ``#anchor`` to a heading of it.
- The docs check itself on README.md, docs/*.md and vagrant/README.md: the fast blocks
  in the default run (~40 s), every block (with the documented shortened runtimes) under
  ``-m slow`` (~2.5 min); and every block of vagrant/README.md must be annotated, since
  none of it runs outside the VM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iofs.backends import ENGINES, EngineConfig, create_engine
from iofs.fs import Filesystem
from iofs.live_mounts import runtime_dir, unescaped_mountpoint
from iofs.modes import resolve

from .conftest import FUSE_UNAVAILABLE, ROOT

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_docs.py"
README = REPO / "README.md"
STATISTICS = REPO / "docs" / "statistics.md"
VAGRANT_README = REPO / "vagrant" / "README.md"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


docs = _load_script()


def extract(text: str) -> list[Any]:
    blocks: list[Any] = docs.extract(text, "doc.md")
    return blocks


# -- extraction ------------------------------------------------------------------------
def test_sh_blocks_one_command_per_line_comments_and_blanks_left_out() -> None:
    (block,) = extract("# Title\n\n```sh\n# a comment\nmkdir -p /tmp/x   # why\n\nls /tmp/x\n```\n")
    assert block.section == "Title"
    assert block.fence == "sh"
    assert [c.text for c in block.commands] == ["mkdir -p /tmp/x   # why", "ls /tmp/x"]
    assert all(c.expected_exit == 0 and c.output == () for c in block.commands)


def test_sh_blocks_keep_what_bash_reads_as_one_command_together() -> None:
    text = (
        "```bash\n"
        "fio --name=x \\\n    --size=1m\n"
        "for f in a b; do\n  echo $f\ndone\n"
        "cat <<'EOF'\nline\nEOF\n"
        "python -c 'print(1)\nprint(2)'\n"
        "echo last\n"
        "```\n"
    )
    (block,) = extract(text)
    assert [c.text for c in block.commands] == [
        "fio --name=x \\\n    --size=1m",
        "for f in a b; do\n  echo $f\ndone",
        "cat <<'EOF'\nline\nEOF",
        "python -c 'print(1)\nprint(2)'",
        "echo last",
    ]


def test_console_blocks_prompts_continuations_and_output() -> None:
    text = "## S\n```console\n$ echo one \\\n> two\none two\n# id -u\n0\n\n$ true\n```\n"
    (block,) = extract(text)
    assert [(c.text, c.output) for c in block.commands] == [
        ("echo one two", ("one two",)),
        ("id -u", ("0", "")),
        ("true", ()),
    ]


def test_console_output_before_a_prompt_is_an_error() -> None:
    with pytest.raises(docs.DocsError, match="before any"):
        extract("```console\noutput\n$ true\n```\n")


def test_other_fences_are_never_commands() -> None:
    assert extract("```\n$ rm -rf /\n```\n\n```text\nrm -rf /\n```\n\n```python\nx\n```\n") == []


def test_annotations_apply_to_the_next_block_only() -> None:
    text = (
        "<!-- docs-check: skip: needs a VM -->\n"
        "```sh\nvagrant up\n```\n\n"
        "<!-- docs-check: slow -->\n"
        "<!-- docs-check: quick: --runtime 5 => --runtime 1 -->\n\n"
        "<!-- docs-check: timeout: 30 -->\n"
        "```sh\niofs bench --runtime 5\n```\n"
        "```sh\ntrue\n```\n"
    )
    skipped, slow, plain = extract(text)
    assert skipped.skip == "needs a VM"
    assert (slow.slow, slow.substitutions, slow.timeout) == (
        True,
        (("--runtime 5", "--runtime 1"),),
        30.0,
    )
    assert (plain.skip, plain.slow, plain.substitutions, plain.timeout) == (
        None,
        False,
        (),
        docs.DEFAULT_TIMEOUT,
    )


def test_expected_exit_statuses() -> None:
    text = (
        '<!-- docs-check: exit 2 for "ls /gone" -->\n'
        "<!-- docs-check: exit 7 -->\n"
        "```console\n$ ls /gone\n$ ls /gone again\n$ iofs mount a b\n```\n"
    )
    (block,) = extract(text)
    assert [c.expected_exit for c in block.commands] == [2, 0, 7]
    with pytest.raises(docs.DocsError, match="matches no command"):
        extract('<!-- docs-check: exit 1 for "nope" -->\n```sh\ntrue\n```\n')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- docs-check: skip -->\n```sh\ntrue\n```\n", "needs a reason"),
        ("<!-- docs-check: skip: -->\n```sh\ntrue\n```\n", "needs a reason"),
        ("<!-- docs-check: frobnicate -->\n```sh\ntrue\n```\n", "unknown"),
        ("<!-- docs-check: quick: no arrow -->\n```sh\ntrue\n```\n", "OLD => NEW"),
        ("<!-- docs-check: timeout: soon -->\n```sh\ntrue\n```\n", "seconds"),
        ("<!-- docs-check: ignore-output -->\n```sh\ntrue\n```\n", "needs a reason"),
        ("<!-- docs-check: slow -->\nSome prose.\n```sh\ntrue\n```\n", "not followed"),
        ("<!-- docs-check: slow -->\n```text\nout\n```\n", "never run"),
        ("text\n<!-- docs-check: slow -->\n", "end of the file"),
    ],
)
def test_bad_annotations_are_errors(text: str, message: str) -> None:
    with pytest.raises(docs.DocsError, match=message):
        extract(text)


def test_annotations_quoted_in_prose_are_not_annotations() -> None:
    (block,) = extract(
        "Write `<!-- docs-check: skip: REASON -->` before a block.\n\n```sh\ntrue\n```\n"
    )
    assert block.skip is None


def test_documented_output_lines_match_with_numbers_as_wildcards() -> None:
    documented = ["poll(): ready (POLLIN) in 12µs", "", "...", "total 1,234 ops"]
    actual = "header\npoll():   ready (POLLIN) in 3.5ms\nnoise\ntotal 99 ops\n"
    assert docs.missing_output(documented, actual) is None
    assert docs.missing_output(["total 1 ops", "poll(): ready (POLLIN) in 1µs"], actual) == (
        "poll(): ready (POLLIN) in 1µs"  # in order: poll comes before total
    )
    assert docs.missing_output(["EPERM: refused"], "EINVAL: refused") == "EPERM: refused"
    assert docs.line_pattern("error: ... (try --lazy)").fullmatch(
        "error: busy, really (try --lazy)"
    )


def test_block_script_substitutes_scratch_and_quick_runtimes(tmp_path: Path) -> None:
    (block,) = extract(
        "<!-- docs-check: quick: --runtime 5 => --runtime 1 -->\n"
        "<!-- docs-check: exit 3 -->\n"
        "```sh\nmkdir -p /tmp/iofs-demo/mnt\niofs bench --runtime 5\n```\n"
    )
    scratch = docs.Scratch(tmp_path)
    try:
        script = docs.block_script(block, scratch, as_written=False)
        assert f"mkdir -p {scratch.docs_dir}/mnt" in script
        assert "iofs bench --runtime 1" in script
        assert "-eq 3 ] || exit 97" in script
        assert "iofs bench --runtime 5" in docs.block_script(block, scratch, as_written=True)
        assert scratch.unsubstitute(f"see {scratch.docs_dir}/mnt") == "see /tmp/iofs-demo/mnt"
    finally:
        scratch.remove()
    assert not scratch.path.exists()


def test_a_block_runs_and_reports_each_status(tmp_path: Path) -> None:
    """No mounts: plain shell commands through the real runner."""
    (good,) = extract(
        '<!-- docs-check: exit 3 for "sh -c" -->\n'
        "```console\n$ echo 42 apples\n41 apples\n$ sh -c 'exit 3'\n"
        "$ cd /tmp/iofs-demo || true\n```\n"
    )
    (bad,) = extract("```console\n$ echo pears\napples\n$ echo never\n```\n")
    (failing,) = extract("```sh\ntrue\nfalse\necho never\n```\n")
    scratch = docs.Scratch(tmp_path)
    try:
        result = docs.run_block(good, scratch, as_written=False)
        assert (result.status, result.commands_run) == ("passed", 3), result.reason
        result = docs.run_block(bad, scratch, as_written=False)
        assert result.status == "failed"
        assert "lacks the documented line" in result.reason
        result = docs.run_block(failing, scratch, as_written=False)
        assert (result.status, result.commands_run) == ("failed", 2)
        assert "`false` exited 1, expected 0" in result.reason
    finally:
        scratch.remove()


def test_the_default_files_are_the_readme_then_docs_then_vagrant() -> None:
    names = [str(path.relative_to(REPO)) for path in docs.default_paths()]
    assert names[0] == "README.md"
    assert "docs/statistics.md" in names and "docs/troubleshooting.md" in names
    assert names[1:-1] == sorted(names[1:-1])
    assert names[-1] == "vagrant/README.md" or not VAGRANT_README.exists()


def test_the_docs_parse_and_every_skip_says_why() -> None:
    blocks = [
        block
        for path in docs.default_paths()
        for block in docs.extract(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert len(blocks) >= 20
    assert any(block.path == "README.md" and not block.skip for block in blocks)
    for block in blocks:
        if block.skip is not None:
            assert len(block.skip) > 10, f"{block.where}: a skip reason says why"
    # Every experiment of the cookbook has a command block, and every bench command in
    # the docs is shortened or skipped for the fast run.
    sections = {block.section for block in blocks}
    assert sum(section.startswith("Experiment ") for section in sections) >= 5
    for block in blocks:
        for command in block.commands:
            if "iofs bench" in command.text or "demo.sh" in command.text:
                assert block.slow or block.skip, f"{block.where}: slow or skipped"
                assert block.skip or block.substitutions, f"{block.where}: shortened"


@pytest.mark.skipif(not VAGRANT_README.exists(), reason="no vagrant/README.md")
def test_every_vagrant_readme_block_is_annotated() -> None:
    """Nothing in vagrant/README.md runs on the host: each block says how it is checked
    (``skip: needs the Vagrant VM``), or the check would run ``vagrant up`` or
    ``sudo mkdir /scratch/...`` on the machine running the tests."""
    text = VAGRANT_README.read_text()
    blocks = docs.extract(text, "vagrant/README.md")
    unannotated = [
        block.where
        for block in blocks
        if block.skip is None and not block.slow and not block.substitutions
    ]
    assert not unannotated, (
        "add <!-- docs-check: skip: needs the Vagrant VM --> (or another annotation) "
        f"before the blocks at {', '.join(unannotated)}"
    )


# -- links between the documents ----------------------------------------------------------
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _outside_code(text: str) -> list[str]:
    """The lines of a markdown document that are not inside a fenced code block."""
    lines, fence = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if fence:
            if stripped.startswith(fence):
                fence = ""
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        lines.append(line)
    return lines


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in _outside_code(path.read_text()):
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            anchor = base = heading_anchor(match[1])
            number = 0
            while anchor in found:  # GitHub numbers repeated headings
                number += 1
                anchor = f"{base}-{number}"
            found.add(anchor)
    return found


def test_heading_anchors_as_github_makes_them() -> None:
    assert heading_anchor("Statistics reference (`iofs stats --json`, format `x/1`)") == (
        "statistics-reference-iofs-stats---json-format-x1"
    )
    assert heading_anchor("Experiment 2: O_DIRECT, or not") == "experiment-2-o_direct-or-not"
    assert heading_anchor('A dead mount: "Transport endpoint"') == "a-dead-mount-transport-endpoint"


def test_every_link_between_the_documents_resolves() -> None:
    broken = []
    for path in docs.default_paths():
        for line in _outside_code(path.read_text()):
            for match in _LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = match["target"]
                if re.match(r"^[a-z]+:", target):
                    continue  # https:, mailto:
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(REPO)}: {target}"
                if not linked.exists():
                    broken.append(f"{where}: no such file")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


# -- the statistics reference ------------------------------------------------------------
def _leaf_names(document: Any, into: set[str]) -> None:
    """Every key of a snapshot document, except the maps whose keys are data (operation
    names, histogram buckets, percentile names), whose own fields are still visited."""
    if isinstance(document, list):
        for item in document:
            _leaf_names(item, into)
    elif isinstance(document, dict):
        for key, value in document.items():
            into.add(key)
            if key in ("buckets", "percentiles_us"):
                continue
            if key == "operations" and isinstance(value, dict):
                for per_operation in value.values():
                    _leaf_names(per_operation, into)
                continue
            _leaf_names(value, into)


@pytest.fixture
def snapshots(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """One snapshot per engine that runs here, with one operation recorded, and (if
    fault injection exists) with faults switched on once."""
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    documents = []
    try:
        for name, cls in sorted(ENGINES.items()):
            if cls.probe() is not None:
                continue
            fs = Filesystem(root_fd, create_engine(name, EngineConfig()), setting=resolve("btrfs"))
            try:
                fs.recorder.end("getattr", fs.recorder.begin("getattr"), error=False)
                fs.recorder.switch_began("xfs", "btrfs", 0.0, fs.engine.statistics())
                if hasattr(fs, "set_faults"):
                    from iofs.faults import parse_faults

                    fs.set_faults(parse_faults("eio=0.5"))
                documents.append(json.loads(fs.statistics().to_json()))
            finally:
                fs.close()
        yield documents
    finally:
        os.close(root_fd)


def test_the_statistics_reference_names_every_field(snapshots: list[dict[str, Any]]) -> None:
    text = STATISTICS.read_text()
    start = text.index("## Statistics reference")
    section = text[start : text.index("\n## ", start + 1)]
    documented = set()
    for code in re.findall(r"`([^`]+)`", section):
        for part in re.split(r"[.\s,]+", code):
            documented.add(part.removesuffix("[]").strip("<>"))
    fields: set[str] = set()
    for document in snapshots:
        _leaf_names(document, fields)
    missing = sorted(fields - documented)
    assert not missing, f"fields missing from docs/statistics.md's reference: {missing}"


# -- the check itself --------------------------------------------------------------------
def _run_check(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


needs_root_and_fuse = pytest.mark.skipif(
    not ROOT or FUSE_UNAVAILABLE is not None,
    reason=str(FUSE_UNAVAILABLE or "the documented commands run as root"),
)


@needs_root_and_fuse
def test_documented_commands_fast_blocks() -> None:
    """README.md, docs/*.md and vagrant/README.md, the blocks not marked slow."""
    daemon_files = set(runtime_dir().iterdir())
    result = _run_check(timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
    assert not re.search(r"^\s+cleanup: unmounted", result.stdout, re.MULTILINE), (
        "a block left a mount behind: " + result.stdout
    )
    # The background daemons' logs go with the scratch directory they were named after
    # (this check's own: another check running on the machine has a scratch of its own).
    scratch = re.search(r"^scratch directory: (\S+)$", result.stdout, re.MULTILINE)
    assert scratch is not None, result.stdout
    assert not [
        path
        for path in set(runtime_dir().iterdir()) - daemon_files
        if str(unescaped_mountpoint(path.stem)).startswith(scratch[1] + "/")
    ]


@pytest.mark.slow
@needs_root_and_fuse
def test_documented_commands_all_blocks() -> None:
    """Every block, bench experiments and the demo included, with 1 s runs (~2.5 min)."""
    result = _run_check("--slow", timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
