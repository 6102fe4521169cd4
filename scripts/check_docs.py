#!/usr/bin/env python3
"""Run every command the documentation shows, so that the docs cannot silently rot.

What is a command. In README.md, docs/*.md and vagrant/README.md (or the files named),
every fenced block whose info string is ``sh``, ``bash``, ``shell`` or ``console``:

- ``sh``/``bash``/``shell``: each line is a command, except blank lines and ``#`` comment
  lines; lines that bash reads as one command (after a trailing ``\\``, inside a loop,
  a here-document or a quoted string) are one command;
- ``console``: lines starting with a ``$ `` or ``# `` prompt are commands (continued by
  a trailing ``\\``, the next line optionally starting with ``> ``); the lines after a
  command, up to the next prompt, are its documented output.

Other fences (``text``, none, ``python``...) are never run: they show captured output.

How they run. The files run in that order (docs/*.md alphabetically), the blocks of a
file in document order, each as one bash script from
the repository root, as the user running this script (the docs assume root). Blocks
under the same heading share one scratch state: what a block mounts stays mounted for
the next block of its section. Each command must exit 0 (or as annotated); the first one
that does not fails the block, and the rest of the block is not run. Where a console
block shows output, each documented line must appear in the command's output, in order
(other lines may come between): a word that contains a digit matches any word, ``...``
matches anything, runs of spaces match any whitespace.

Scratch and cleanup. ``/tmp/iofs-demo`` in a command (the docs' working directory) is
replaced by a fresh scratch directory, ``$TMPDIR`` points into it, and output is
compared with the scratch path turned back into ``/tmp/iofs-demo``. After each block its
leftover processes (its process group) are stopped; at the end of each section, and
whatever happens (failure, timeout, Ctrl-C), everything mounted under the scratch
directory is unmounted (FUSE mounts lazily through fusermount3), processes whose command
line names the scratch directory (the daemons it started) are stopped, loop devices
backed by files in it are detached; at the end the scratch directory is removed.

Annotations: an HTML comment on a line of its own right before a block (blank lines may
come between), one per comment, any number::

    <!-- docs-check: skip: REASON -->         not run; reported as skipped with REASON
    <!-- docs-check: slow -->                  run only with --slow (else skipped as slow)
    <!-- docs-check: quick: OLD => NEW -->     replace OLD by NEW in the block's commands,
                                               unless --as-written (shortens runtimes)
    <!-- docs-check: exit N -->                the block's last command must exit N
    <!-- docs-check: exit N for "PREFIX" -->   the first command starting with PREFIX must
                                               exit N
    <!-- docs-check: ignore-output: REASON --> do not compare the console block's output
    <!-- docs-check: timeout: SECONDS -->      the block's time limit (default 600)

An annotation that is not followed by a command block, or that does not parse, is an
error. Exit status: 0 if every block that ran passed, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from iofs import mounttable
from iofs.live_mounts import runtime_dir, unescaped_mountpoint

ROOT = Path(__file__).resolve().parent.parent
#: The documentation checked by default, in this order (patterns are globbed, sorted).
DEFAULT_FILES = ("README.md", "docs/*.md", "vagrant/README.md")
#: The working directory the docs use; replaced by the scratch directory when run.
DOCS_DIR = "/tmp/iofs-demo"
COMMAND_FENCES = frozenset({"sh", "bash", "shell", "console"})
DEFAULT_TIMEOUT = 600.0
#: Separates the output of consecutive commands in a block's output stream.
_MARK = "\x1edocs-check-status"


class DocsError(Exception):
    """The markdown cannot be checked as written (a bad or dangling annotation)."""


# -- extraction ------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    text: str
    #: The output the docs show for it (console blocks), line by line.
    output: tuple[str, ...] = ()
    expected_exit: int = 0


@dataclass(frozen=True)
class Block:
    path: str
    line: int
    section: str
    fence: str
    commands: tuple[Command, ...]
    skip: str | None = None
    slow: bool = False
    substitutions: tuple[tuple[str, str], ...] = ()
    ignore_output: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class _Annotations:
    line: int = 0
    skip: str | None = None
    slow: bool = False
    substitutions: list[tuple[str, str]] = field(default_factory=list)
    exits: list[tuple[int, str | None]] = field(default_factory=list)
    ignore_output: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    count: int = 0


_ANNOTATION = re.compile(r"<!--\s*docs-check:\s*(?P<body>.*?)\s*-->")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_EXIT = re.compile(r'^exit\s+(?P<status>\d+)(?:\s+for\s+"(?P<prefix>[^"]+)")?$')


def _annotate(annotations: _Annotations, body: str, where: str) -> None:
    keyword, _, rest = body.partition(":")
    keyword, rest = keyword.strip(), rest.strip()
    annotations.count += 1
    if keyword == "skip":
        if not rest:
            raise DocsError(f"{where}: 'skip' needs a reason: <!-- docs-check: skip: REASON -->")
        annotations.skip = rest
    elif keyword == "slow" and not rest:
        annotations.slow = True
    elif keyword == "quick":
        old, arrow, new = rest.partition("=>")
        if not arrow or not old.strip():
            raise DocsError(f"{where}: 'quick' takes OLD => NEW, not {rest!r}")
        annotations.substitutions.append((old.strip(), new.strip()))
    elif keyword == "ignore-output":
        if not rest:
            raise DocsError(f"{where}: 'ignore-output' needs a reason")
        annotations.ignore_output = rest
    elif keyword == "timeout":
        try:
            annotations.timeout = float(rest)
        except ValueError:
            raise DocsError(f"{where}: 'timeout' takes seconds, not {rest!r}") from None
    elif match := _EXIT.match(body.strip()):
        annotations.exits.append((int(match["status"]), match["prefix"]))
    else:
        raise DocsError(f"{where}: unknown docs-check annotation {body!r}")


def _complete(text: str) -> bool:
    """Whether bash reads *text* as whole commands (no open loop, quote or here-document)."""
    if text.rstrip().endswith("\\"):
        return False
    result = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "here-document" not in result.stderr


def _shell_commands(lines: Sequence[str]) -> list[Command]:
    """One command per line, or per group of lines that bash reads as one (a loop,
    a here-document, a quoted string over several lines, a trailing backslash)."""
    commands = []
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending.append(line.rstrip())
        text = "\n".join(pending)
        if _complete(text):
            commands.append(Command(text.strip()))
            pending = []
    if pending:  # bash will say what is wrong with it
        commands.append(Command("\n".join(pending).strip()))
    return commands


def _console_commands(lines: Sequence[str], where: str) -> list[Command]:
    commands: list[Command] = []
    text: list[str] = []
    output: list[str] = []
    continuing = False

    def finish() -> None:
        if text:
            commands.append(Command(" ".join(text), tuple(output)))

    for line in lines:
        if continuing:
            part = line[2:] if line.startswith("> ") else line.strip()
            continuing = part.rstrip().endswith("\\")
            text.append(part.rstrip()[:-1].rstrip() if continuing else part.strip())
            continue
        if line.startswith(("$ ", "# ")):
            finish()
            text, output = [], []
            part = line[2:].strip()
            continuing = part.endswith("\\")
            text.append(part[:-1].rstrip() if continuing else part)
        elif text:
            output.append(line.rstrip())
        elif line.strip():
            raise DocsError(f"{where}: console block output before any '$ ' or '# ' prompt")
    finish()
    return commands


def _apply_exits(
    commands: list[Command], exits: Sequence[tuple[int, str | None]], where: str
) -> list[Command]:
    commands = list(commands)
    for status, prefix in exits:
        if prefix is None:
            if not commands:
                raise DocsError(f"{where}: 'exit {status}' on a block without commands")
            index = len(commands) - 1
        else:
            matching = [i for i, c in enumerate(commands) if c.text.startswith(prefix)]
            if not matching:
                raise DocsError(f"{where}: 'exit {status} for \"{prefix}\"' matches no command")
            index = matching[0]
        command = commands[index]
        commands[index] = Command(command.text, command.output, status)
    return commands


def extract(text: str, path: str = "<markdown>") -> list[Block]:
    """Every command block of a markdown document, with its annotations applied."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = ""
    annotations: _Annotations | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        where = f"{path}:{index + 1}"
        fence = _FENCE.match(line)
        if fence:
            marker, info = fence["fence"], fence["info"].lower()
            body: list[str] = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith(marker):
                body.append(lines[index][len(fence["indent"]) :])
                index += 1
            index += 1  # the closing fence
            if info not in COMMAND_FENCES:
                if annotations is not None:
                    raise DocsError(
                        f"{path}:{annotations.line}: annotation before a ```{info} block, "
                        "which is never run"
                    )
                continue
            found = annotations or _Annotations()
            if info == "console":
                commands = _console_commands(body, where)
            else:
                commands = _shell_commands(body)
            commands = _apply_exits(commands, found.exits, where)
            blocks.append(
                Block(
                    path=path,
                    line=int(where.rpartition(":")[2]),
                    section=section,
                    fence=info,
                    commands=tuple(commands),
                    skip=found.skip,
                    slow=found.slow,
                    substitutions=tuple(found.substitutions),
                    ignore_output=found.ignore_output,
                    timeout=found.timeout,
                )
            )
            annotations = None
            continue
        # An annotation is a line of its own; one quoted in prose or code is not one.
        comments = list(_ANNOTATION.finditer(line)) if line.lstrip().startswith("<!--") else []
        if comments:
            if annotations is None:
                annotations = _Annotations(line=index + 1)
            for comment in comments:
                _annotate(annotations, comment["body"], where)
        elif line.strip():
            if annotations is not None:
                raise DocsError(
                    f"{path}:{annotations.line}: docs-check annotation not followed by a "
                    "command block"
                )
            heading = _HEADING.match(line)
            if heading:
                section = heading["title"]
        index += 1
    if annotations is not None:
        raise DocsError(f"{path}:{annotations.line}: docs-check annotation at the end of the file")
    return blocks


# -- output matching ---------------------------------------------------------------------
def line_pattern(documented: str) -> re.Pattern[str]:
    """The regular expression a documented output line stands for (see the module doc)."""
    parts = []
    for word in documented.split():
        if word in ("...", "…"):
            parts.append(".*")
        elif any(character.isdigit() for character in word):
            parts.append(r"\S+")
        else:
            parts.append(re.escape(word))
    return re.compile(r"\s+".join(parts) if parts else "")


def missing_output(documented: Sequence[str], actual: str) -> str | None:
    """The first documented line not found in *actual* (in order), or None."""
    lines = [line.strip() for line in actual.splitlines()]
    position = 0
    for expected in documented:
        if not expected.strip() or expected.strip() in ("...", "…"):
            continue
        pattern = line_pattern(expected.strip())
        while position < len(lines) and not pattern.fullmatch(lines[position]):
            position += 1
        if position == len(lines):
            return expected
        position += 1
    return None


# -- running -----------------------------------------------------------------------------
@dataclass
class Result:
    block: Block
    status: str  # "passed", "failed", "skipped"
    reason: str = ""
    seconds: float = 0.0
    commands_run: int = 0
    transcript: str = ""


class Scratch:
    """The check's scratch directory and everything started or mounted under it."""

    def __init__(self, base: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="iofs-docs-", dir=base or "/tmp"))
        self.path.chmod(0o755)  # commands run as other users (setpriv) must get through
        (self.path / "tmp").mkdir()

    @property
    def docs_dir(self) -> str:
        return str(self.path / "iofs-demo")

    def substitute(self, command: str) -> str:
        return command.replace(DOCS_DIR, self.docs_dir)

    def unsubstitute(self, output: str) -> str:
        return output.replace(self.docs_dir, DOCS_DIR)

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(self.path / "tmp"),
            "COLUMNS": "120",  # rich's tables as wide as in a terminal
        }

    def mounts(self) -> list[tuple[str, str]]:
        """(mountpoint, fstype) of every mount under the scratch directory, deepest first."""
        found = [
            (entry.mountpoint, entry.fstype)
            for entry in mounttable.entries()
            if Path(entry.mountpoint).is_relative_to(self.path)
        ]
        return sorted(found, key=lambda entry: entry[0].count("/"), reverse=True)

    def processes(self) -> list[int]:
        """Processes whose command line names the scratch directory (not this one)."""
        needle = str(self.path).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
        return pids

    def loop_devices(self) -> list[str]:
        result = subprocess.run(
            ["losetup", "--list", "--noheadings", "--raw", "--output", "NAME,BACK-FILE"],
            capture_output=True,
            text=True,
            check=False,
        )
        devices = []
        for line in result.stdout.splitlines():
            name, _, back = line.partition(" ")
            if back and Path(back.strip().removesuffix(" (deleted)")).is_relative_to(self.path):
                devices.append(name)
        return devices

    def clean(self) -> list[str]:
        """Unmount, stop and detach everything left under the scratch directory.

        Returns what had to be cleaned up (for the report).
        """
        cleaned = []
        for pid in self.processes():  # fio and friends first: they keep mounts busy
            if _is_daemon(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                cleaned.append(f"stopped process {pid}")
        for point, fstype in self.mounts():
            if fstype.startswith("fuse"):
                command = ["fusermount3", "-u", "-z", point]
            else:
                command = ["umount", "-l", point]
            subprocess.run(command, capture_output=True, check=False)
            cleaned.append(f"unmounted {point} ({fstype})")
        deadline = time.monotonic() + 10
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                cleaned.append(f"killed process {pid}")
        for device in self.loop_devices():
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
            cleaned.append(f"detached {device}")
        return cleaned

    def remove(self) -> None:
        if not self.mounts():
            shutil.rmtree(self.path, ignore_errors=True)
            self.remove_daemon_files()

    def remove_daemon_files(self) -> None:
        """The logs (and any state files) that background daemons of the documented
        commands left in the runtime directory, named after their mountpoints."""
        with contextlib.suppress(OSError):
            for entry in runtime_dir().iterdir():
                mountpoint = unescaped_mountpoint(entry.stem)
                if mountpoint.is_relative_to(self.path):
                    entry.unlink(missing_ok=True)


def _is_daemon(pid: int) -> bool:
    """An iofs daemon: stopped by unmounting it, not by a signal to it."""
    with contextlib.suppress(OSError):
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"iofs" in b" ".join(arguments[:3]) and b"mount" in arguments
    return False


def block_script(block: Block, scratch: Scratch, as_written: bool) -> str:
    """The bash script that runs *block*'s commands and reports each exit status."""
    lines = [
        "exec 2>&1",
        f"cd {shlex.quote(str(ROOT))}",
        f"mkdir -p {shlex.quote(str(scratch.path / 'tmp'))}",
    ]
    for number, command in enumerate(block.commands, 1):
        text = command.text
        if not as_written:
            for old, new in block.substitutions:
                text = text.replace(old, new)
        lines.append(scratch.substitute(text))
        lines.append(
            f"__status=$?; printf '\\n{_MARK} {number} %d\\n' \"$__status\"; "
            f'[ "$__status" -eq {command.expected_exit} ] || exit 97'
        )
    return "\n".join(lines) + "\n"


def split_transcript(transcript: str) -> list[tuple[str, int]]:
    """The output and exit status of each command that ran, from the block's output."""
    results = []
    pending: list[str] = []
    for line in transcript.split("\n"):
        if line.startswith(_MARK + " "):
            _, _, status = line[len(_MARK) + 1 :].partition(" ")
            results.append(("\n".join(pending).removesuffix("\n"), int(status)))
            pending = []
        else:
            pending.append(line)
    return results


def run_block(block: Block, scratch: Scratch, as_written: bool) -> Result:
    start = time.monotonic()
    script = block_script(block, scratch, as_written)
    # Output goes to a file, not a pipe: a command left running in the background
    # (stopped below) would keep a pipe open, and reading it would wait for it.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", script],
            stdout=log,
            stdin=subprocess.DEVNULL,
            env=scratch.environment(),
            start_new_session=True,
        )
        timed_out = False
        try:
            process.wait(timeout=block.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _stop_group(process.pid)
            process.wait()
        log.seek(0)
        raw = log.read()
    transcript = scratch.unsubstitute(raw.decode(errors="replace"))
    results = split_transcript(transcript)
    seconds = time.monotonic() - start
    result = Result(block, "passed", seconds=seconds, commands_run=len(results))
    result.transcript = transcript
    for command, (output, status) in zip(block.commands, results, strict=False):
        if status != command.expected_exit:
            result.status = "failed"
            result.reason = (
                f"`{command.text}` exited {status}, expected {command.expected_exit}\n"
                + _indent(output)
            )
            return result
        if command.output and block.ignore_output is None:
            missing = missing_output(command.output, output)
            if missing is not None:
                result.status = "failed"
                result.reason = (
                    f"`{command.text}`: its output lacks the documented line\n"
                    f"    {missing}\n  output was:\n{_indent(output)}"
                )
                return result
    if timed_out or len(results) < len(block.commands):
        result.status = "failed"
        command = block.commands[len(results)]
        what = f"timed out after {block.timeout:.0f} s" if timed_out else "did not finish"
        rest = transcript.rpartition(_MARK)[2].partition("\n")[2]
        result.reason = f"`{command.text}` {what}\n" + _indent(rest)
    return result


def _stop_group(pgid: int) -> None:
    """Stop what is left of a block's process group: TERM, then KILL after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _indent(text: str, limit: int = 40) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) > limit:
        lines = [*lines[: limit // 2], "    [...]", *lines[-limit // 2 :]]
    return "\n".join(f"    | {line}" for line in lines)


def check(
    paths: Sequence[Path],
    *,
    slow: bool = False,
    as_written: bool = False,
    select: str | None = None,
    verbose: bool = False,
) -> list[Result]:
    """Run every block of *paths*; print a line per block and a summary; return results."""
    blocks = [block for path in paths for block in extract(path.read_text(), _shown(path))]
    scratch = Scratch()
    print(f"scratch directory: {scratch.path}", flush=True)
    results: list[Result] = []
    previous: tuple[str, str] | None = None

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old_handler = signal.signal(signal.SIGTERM, interrupted)
    try:
        for block in blocks:
            if previous is not None and previous != (block.path, block.section):
                _report_cleanup(scratch.clean())
            previous = (block.path, block.section)
            reason = _skip_reason(block, slow, select)
            if reason is not None:
                results.append(Result(block, "skipped", reason))
                print(f"skipped  {block.where} [{block.section}]: {reason}", flush=True)
                continue
            result = run_block(block, scratch, as_written)
            results.append(result)
            print(
                f"{result.status:8} {block.where} [{block.section}]: "
                f"{result.commands_run}/{len(block.commands)} commands, {result.seconds:.1f} s",
                flush=True,
            )
            if result.status == "failed":
                print(result.reason, flush=True)
            elif verbose:
                print(_indent(result.transcript, limit=200), flush=True)
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        _report_cleanup(scratch.clean())
        scratch.remove()
    _summary(results)
    return results


def default_paths() -> list[Path]:
    """The files of DEFAULT_FILES that exist, patterns expanded in sorted order."""
    return [path for pattern in DEFAULT_FILES for path in sorted(ROOT.glob(pattern))]


def _shown(path: Path) -> str:
    path = path.absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _skip_reason(block: Block, slow: bool, select: str | None) -> str | None:
    if block.skip is not None:
        return block.skip
    if block.slow and not slow:
        return "slow: runs with --slow"
    if select is not None and select.lower() not in block.section.lower():
        return f"not in the selected sections ({select!r})"
    if not block.commands:
        return "no commands"
    return None


def _report_cleanup(cleaned: list[str]) -> None:
    for what in cleaned:
        print(f"  cleanup: {what}", flush=True)


def _summary(results: Sequence[Result]) -> None:
    counts = {status: 0 for status in ("passed", "failed", "skipped")}
    for result in results:
        counts[result.status] += 1
    commands = sum(result.commands_run for result in results)
    seconds = sum(result.seconds for result in results)
    print(
        f"docs check: {counts['passed']} blocks passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped; {commands} commands run in {seconds:.0f} s",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run every command in the documentation (see the module docstring)."
    )
    parser.add_argument(
        "files", nargs="*", type=Path, help=f"markdown files (default: {' '.join(DEFAULT_FILES)})"
    )
    parser.add_argument("--slow", action="store_true", help="also run blocks marked slow")
    parser.add_argument(
        "--as-written",
        action="store_true",
        help="ignore 'quick' substitutions: run the commands exactly as documented",
    )
    parser.add_argument(
        "--section", metavar="TEXT", help="run only blocks under headings containing TEXT"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the blocks and their commands; run nothing"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    args = parser.parse_args(argv)
    paths = args.files or default_paths()
    try:
        if args.list:
            for path in paths:
                for block in extract(path.read_text(), _shown(path)):
                    reason = _skip_reason(block, args.slow, args.section)
                    state = f"skip ({reason})" if reason else "run"
                    print(f"{block.where} [{block.section}] {block.fence}: {state}")
                    for command in block.commands:
                        exit_note = f"  (exit {command.expected_exit})" * bool(
                            command.expected_exit
                        )
                        text = command.text.replace("\n", "\n      ")
                        print(f"    $ {text}{exit_note}")
            return 0
        if os.geteuid() != 0:
            print("check_docs: the documented commands assume root", file=sys.stderr)
        results = check(
            paths,
            slow=args.slow,
            as_written=args.as_written,
            select=args.section,
            verbose=args.verbose,
        )
    except DocsError as exc:
        print(f"check_docs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("check_docs: interrupted", file=sys.stderr)
        return 130
    return 1 if any(result.status == "failed" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
