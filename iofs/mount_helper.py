"""``mount.fuse.iofs``: the helper mount(8) runs for ``-t fuse.iofs`` (and fstab lines).

mount(8) calls ``/sbin/mount.fuse.iofs BACKING MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS]
[-t fuse.iofs]``. The iofs settings come as ``-o`` options named like the ``iofs mount``
options (``mode=xfs``, ``engine=aio``, ``queue_depth=128``, ``allow_fallback``...);
every other option is a FUSE mount option (``allow_other``, ``ro``...), and the few
that only mount(8) and systemd use (``defaults``, ``nofail``, ``_netdev``...) are
dropped. So ``mount -t fuse.iofs /srv/data /mnt/data -o mode=xfs,allow_other`` and the
fstab line ``/srv/data /mnt/data fuse.iofs mode=xfs,allow_other,nofail 0 0`` work once
the helper is on mount's path (``ln -s .../.venv/bin/mount.fuse.iofs /sbin/``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .errors import ExitStatus

#: ``name=value`` -o options that are ``iofs mount`` options taking a value.
_VALUED = {
    "mode": "--mode",
    "engine": "--engine",
    "cache": "--cache",
    "queue_depth": "--queue-depth",
    "workers": "--workers",
    "log": "--log",
    "attr_timeout": "--attr-timeout",
    "entry_timeout": "--entry-timeout",
    "stats_log": "--stats-log",
    "stats_interval": "--stats-interval",
    "faults": "--faults",
}
#: -o flags that are ``iofs mount`` flags.
_FLAGS = {
    "direct": "--direct",
    "nodirect": "--no-direct",
    "writeback_cache": "--writeback-cache",
    "allow_fallback": "--allow-fallback",
    "no_statistics": "--no-statistics",
    "debug": "--debug",
}
#: Options for mount(8), systemd or fstab's readers, not for the filesystem.
_DROPPED = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group"}
_DROPPED_PREFIXES = ("x-", "comment=", "_netdev", "nofail")


def iofs_arguments(argv: Sequence[str]) -> list[str]:
    """The ``iofs`` command line for a helper command line *argv* (without the program).

    Raises ValueError with a one-line reason for a command line that is not a helper's.
    """
    positional: list[str] = []
    options: list[str] = []
    verbose = False
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            options.extend(_split(next(args, "")))
        elif arg.startswith("-o"):
            options.extend(_split(arg[2:]))
        elif arg in ("-t", "-N"):
            next(args, None)  # the type (fuse.iofs) and a namespace: nothing to do here
        elif arg.startswith("-") and len(arg) > 1:
            # -s (sloppy), -f (fake), -n (no mtab), -v (verbose)
            if set(arg[1:]) - set("sfnv"):
                raise ValueError(f"unknown option {arg!r}")
            if "f" in arg:
                raise ValueError("-f (fake mount) is not supported")
            verbose = verbose or "v" in arg
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ValueError("usage: mount.fuse.iofs BACKING MOUNTPOINT [-o OPTION[,OPTION...]]")
    command = ["mount"]
    fuse: list[str] = []
    for option in options:
        name, equals, value = option.partition("=")
        if name in _VALUED and equals:
            command.append(f"{_VALUED[name]}={value}")  # '=': a value may start with '-'
        elif name in _FLAGS and not equals:
            command.append(_FLAGS[name])
        elif name in _VALUED or name in _FLAGS:
            raise ValueError(f"option {name} needs {'a value' if name in _VALUED else 'no value'}")
        elif option in _DROPPED or option.startswith(_DROPPED_PREFIXES) or option == "rw":
            continue
        else:
            fuse.append(option)
    if fuse:
        command += ["-o", ",".join(fuse)]
    if verbose:
        print(f"mount.fuse.iofs: iofs {' '.join(command)} ...", file=sys.stderr)
    return [*command, *positional]


def _split(text: str) -> list[str]:
    """Options separated by commas; a backslash keeps a comma (``log=/a\\,b``)."""
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part]


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import main as iofs_main

    try:
        arguments = iofs_arguments(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"mount.fuse.iofs: error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    return iofs_main(arguments)
