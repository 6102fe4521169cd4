"""The workloads of the engine benchmark (`iofs.engine_bench`): plain data, so that the
command line can list them without loading the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KiB = 1024
MiB = 1024 * KiB

Pattern = Literal["random-read", "sequential-read", "random-write-fdatasync"]
#: What is done to the page cache before each run: read the whole file in (``warm``),
#: drop the file's pages (``drop``), or nothing.
Prepare = Literal["warm", "drop", "none"]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    pattern: Pattern
    prepare: Prepare
    #: Requests go through O_DIRECT twins (EngineConfig(direct=True)).
    direct: bool
    block: int
    concurrency: int


WORKLOADS: tuple[Workload, ...] = (
    Workload("hot-4k-c1", "4 KiB random reads, hot page cache, c=1",
             "random-read", "warm", False, 4 * KiB, 1),
    Workload("hot-4k-c16", "4 KiB random reads, hot page cache, c=16",
             "random-read", "warm", False, 4 * KiB, 16),
    Workload("cold-4k-c1", "4 KiB random reads, cold page cache, c=1",
             "random-read", "drop", False, 4 * KiB, 1),
    Workload("cold-4k-c16", "4 KiB random reads, cold page cache, c=16",
             "random-read", "drop", False, 4 * KiB, 16),
    Workload("direct-4k-c1", "4 KiB random reads, O_DIRECT, c=1",
             "random-read", "none", True, 4 * KiB, 1),
    Workload("direct-4k-c16", "4 KiB random reads, O_DIRECT, c=16",
             "random-read", "none", True, 4 * KiB, 16),
    Workload("seq-1m-cold", "1 MiB sequential buffered reads, one pass from a cold cache, c=1",
             "sequential-read", "drop", False, 1 * MiB, 1),
    Workload("write-4k-fdatasync", "4 KiB random overwrites, each followed by fdatasync, c=1",
             "random-write-fdatasync", "none", False, 4 * KiB, 1),
)  # fmt: skip
