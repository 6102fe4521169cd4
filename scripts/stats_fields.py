#!/usr/bin/env python3
"""Print chosen fields of iofs statistics snapshots, one line per snapshot.

Usage: ``.venv/bin/python scripts/stats_fields.py FIELD... -- SOURCE...``

A FIELD is a dotted path into the ``iofs stats --json`` document (docs/statistics.md:
"Statistics reference"), e.g. ``loop_lag.percentiles_us.p99``, ``operations.create.count`` or
``engines.0.details.nowait_hits`` (a number picks a list item). A SOURCE is a mounted
iofs (its live snapshot) or a snapshot file, such as the ``stats-after.json`` that
``iofs bench`` keeps for every run. Each line starts with the source (for a bench run,
its run name) and the mode; a field missing from a snapshot prints as ``-``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iofs.control import read_statistics


def load(source: Path) -> tuple[str, dict[str, Any]]:
    """The label for *source* and its snapshot as a JSON document."""
    if source.is_dir():
        document: dict[str, Any] = json.loads(read_statistics(source).to_json())
        return str(source), document
    document = json.loads(source.read_text())
    label = source.parent.name if source.parent.parent.name == "runs" else str(source)
    return label, document


def field(document: Any, path: str) -> str:
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def main(argv: Sequence[str]) -> int:
    if "--" not in argv or argv.index("--") == 0 or argv[-1] == "--":
        print(__doc__.strip().splitlines()[2] if __doc__ else "", file=sys.stderr)
        return 2
    split = argv.index("--")
    fields, sources = argv[:split], [Path(source) for source in argv[split + 1 :]]
    rows = [["source", "mode", *fields]]
    for source in sources:
        label, document = load(source)
        rows.append([label, str(document.get("mode", "-")), *(field(document, f) for f in fields)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
