#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (as root) to a working iofs: the system packages
# pyfuse3 needs to build and run, the tools the project drives (fio, mkfs.xfs,
# mkfs.btrfs, ...), a virtualenv in .venv and the package with its test extra.
# Idempotent, and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    fuse3 libfuse3-dev pkg-config gcc        # to build and run pyfuse3
    python3-dev python3-venv                 # Debian's Python: headers and venv
    fio xfsprogs btrfs-progs util-linux attr # fio, native XFS/Btrfs, setpriv/losetup, getfattr
    libaio1                                  # Linux AIO, for the aio engine (python-libaio)
    ruby                                     # ruby -c: the tests' check of vagrant/Vagrantfile
)
missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing system packages (${missing[*]}); run this script as root" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if [[ ! -e /dev/fuse ]]; then
    modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || { echo "setup: /dev/fuse is missing and 'modprobe fuse' failed" >&2; exit 1; }
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: iofs needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi
# Reinstall only when the project's requirements (or the interpreter) change.
stamp=$(cat pyproject.toml .venv/pyvenv.cfg | sha256sum | cut -d' ' -f1)
if [[ $(cat .venv/.iofs-installed 2>/dev/null || true) != "$stamp" ]]; then
    echo "setup: installing iofs and its test dependencies into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$stamp" >.venv/.iofs-installed
fi
