#!/usr/bin/env bash
# Sets everything up, then runs the linters and the default test suite (real FUSE
# mounts, real fio). Extra arguments go to pytest: `scripts/test.sh -m slow` runs the
# long suites, `scripts/test.sh -k fio` a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "test: ruff"
.venv/bin/ruff check iofs tests scripts
.venv/bin/ruff format --check --quiet iofs tests scripts
echo "test: mypy"
.venv/bin/mypy
echo "test: pytest"
exec .venv/bin/pytest "$@"
