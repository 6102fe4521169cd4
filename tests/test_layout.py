"""Checks of the package's layout anyone can run: no import cycles, and no module so long
that it needs a reason without giving one (issue 13)."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofs import cli

PACKAGE = Path(__file__).resolve().parent.parent / "iofs"
#: A module longer than this says at the top of its docstring why it is long.
MAX_LINES = 600
#: The words that start that reason in a long module's docstring.
REASON = "Why this module is long:"
#: Modules over the limit still to be split by concern or given a reason (issue 13):
#: none left. A ratchet: no module may join it.
STILL_TO_SPLIT: frozenset[str] = frozenset()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _under_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (a lazy import in a function still ties the
    modules together), except those only for the type checker."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _under_type_checking(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module *name* (at *path*) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from x import y` imports x, and x.y if that is a module.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            # Importing a.b.c runs a and a.b too; a package's __init__ is a module here.
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in known and candidate != name:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a
    module importing itself), each as the modules in import order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


# A package's __init__ imports its submodules and they import names from it (the
# registry, the public types): that is how a package is built, not a cycle between
# concerns, so edges from a package's submodule to the package itself are left out.
def _without_parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        name: {other for other in targets if not name.startswith(other + ".")}
        for name, targets in graph.items()
    }


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(_without_parent_edges(import_graph()))
    assert found == [], "modules that import each other: " + "; ".join(
        " <-> ".join(cycle) for cycle in found
    )


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself: a made-up graph with a cycle of three and one of one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import b", {"iofs.b"}),
        ("from .b import x", {"iofs.b"}),
        ("import iofs.b", {"iofs.b"}),
        ("def f():\n    from iofs import b", {"iofs.b"}),
        ("if TYPE_CHECKING:\n    from . import b", set()),
        ("from .sub import c", {"iofs.sub", "iofs.sub.c"}),
    ],
)
def test_imports_are_resolved(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"iofs.a", "iofs.b", "iofs.sub", "iofs.sub.c"}
    assert imported("iofs.a", path, known) == expected


def long_modules_without_reason() -> dict[str, int]:
    """Modules over `MAX_LINES` lines whose docstring does not give `REASON`: lines."""
    unexplained = {}
    for name, path in modules().items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_LINES and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained[name] = lines
    return unexplained


def test_long_modules_say_why() -> None:
    unexplained = long_modules_without_reason()
    new = {name: lines for name, lines in unexplained.items() if name not in STILL_TO_SPLIT}
    assert new == {}, (
        f"modules over {MAX_LINES} lines whose docstring does not say {REASON!r}: "
        + ", ".join(f"{name} ({lines} lines)" for name, lines in new.items())
    )
    done = sorted(STILL_TO_SPLIT - set(unexplained))
    assert done == [], f"no longer long or now explained, take out of STILL_TO_SPLIT: {done}"


#: The commands that only talk to a live mount (or its state files): they are clients.
CLIENT_COMMANDS = (
    ["stats"],
    ["stats", "--json"],
    ["mode"],
    ["mode", "xfs"],
    ["faults"],
    ["faults", "eio=1"],
    ["top", "--batch", "--count", "1"],
    ["top", "--json", "--count", "1"],
    ["log"],
    ["umount"],
)


def test_client_commands_do_not_load_pyfuse3(tmp_path: Path) -> None:
    """The control protocol's client side (`iofs.control`, the client commands of
    `iofs.cli`) loads nothing of the daemon: each command runs to its error on a
    directory that is no mount, in a fresh interpreter that then has no pyfuse3."""
    program = (
        "import sys\n"
        "import iofs.cli, iofs.control, iofs.control_protocol\n"
        f"for command in {list(CLIENT_COMMANDS)!r}:\n"
        "    head, *rest = command\n"
        f"    status = iofs.cli.main([head, {str(tmp_path)!r}, *rest])\n"
        "    assert status != 0, command\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyfuse3'))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[]\n", f"the client path loaded {run.stdout.strip()}"
    # Each failed with its one line (the directory is not an iofs mount).
    assert len(run.stderr.strip().splitlines()) == len(CLIENT_COMMANDS), run.stderr


def test_the_daemon_side_does_load_pyfuse3() -> None:
    """The check above can fail: the same probe sees pyfuse3 once the daemon is loaded."""
    program = "import sys, iofs.fs\nprint('pyfuse3' in sys.modules)\n"
    run = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout == "True\n"


def test_every_command_is_dispatched_and_named() -> None:
    """`iofs.cli.COMMANDS` has a function for every command the parser knows, and the
    module's docstring (the map of the command line) names each one."""
    (subparsers,) = (
        action
        for action in cli._parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert sorted(subparsers.choices) == sorted(cli.COMMANDS)
    unnamed = [name for name in cli.COMMANDS if f"``{name}``" not in (cli.__doc__ or "")]
    assert unnamed == [], f"iofs.cli's docstring does not name: {unnamed}"
