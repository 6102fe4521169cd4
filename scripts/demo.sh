#!/usr/bin/env bash
# Sets everything up, then runs the README's first command: `iofs demo`, about two to three
# minutes of fio natively and through iofs in each mode (and, as root, on fresh XFS and
# Btrfs loop images), printed as tables and one plain sentence per finding. Results are
# kept under results/; extra arguments go to `iofs demo` (see `.venv/bin/iofs demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/iofs demo "$@"
