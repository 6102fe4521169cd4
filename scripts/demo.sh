#!/usr/bin/env bash
# Sets everything up, then runs the main job on its built-in default: a short fio job
# natively and through a temporary iofs mount, compared side by side. Extra arguments
# go to `iofs bench` (see `.venv/bin/iofs bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/iofs bench "$@"
