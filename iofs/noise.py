"""When a difference between two measurements counts, on a shared and noisy machine.

`iofs demo`'s findings and `iofs switch`'s phase comparisons use the same rules: a
figure is called different only beyond these thresholds, and the sentence says
"within noise" otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: A throughput difference counts only beyond this share of the larger figure *and* two
#: standard errors of the per-interval samples.
MIN_IOPS_DIFFERENCE = 0.10
#: A latency percentile counts as different from this ratio up: p99s of runs this short
#: on a shared machine move by about that much from one run to the next.
MIN_LATENCY_RATIO = 1.5
#: Daemon CPU per operation counts as different from this ratio up.
MIN_CPU_RATIO = 1.2


def means_differ(a: float, a_sd: float, a_n: int, b: float, b_sd: float, b_n: int) -> bool:
    """Whether two means of per-interval samples (mean, standard deviation, count)
    differ beyond noise: by more than `MIN_IOPS_DIFFERENCE` of the larger and two
    standard errors of the difference."""
    larger = max(a, b)
    if larger <= 0:
        return False
    error = math.sqrt(a_sd**2 / a_n + b_sd**2 / b_n) if a_n and b_n else 0.0
    return abs(a - b) > max(2 * error, MIN_IOPS_DIFFERENCE * larger)


def samples_differ(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the medians of two lists of per-interval samples (e.g. IOPS every
    200 ms) differ beyond noise: by more than `MIN_IOPS_DIFFERENCE` of the larger and
    two standard errors of the difference (a median's standard error taken as 1.25
    times the mean's, as for normally distributed samples)."""
    if not a or not b:
        return False
    ma, mb = statistics.median(a), statistics.median(b)
    larger = max(ma, mb)
    if larger <= 0:
        return False
    va = statistics.variance(a) if len(a) > 1 else 0.0
    vb = statistics.variance(b) if len(b) > 1 else 0.0
    error = 1.2533 * math.sqrt(va / len(a) + vb / len(b))
    return abs(ma - mb) > max(2 * error, MIN_IOPS_DIFFERENCE * larger)


def ratio_differs(a: float, b: float, threshold: float) -> bool:
    """Whether *a* and *b* are at least *threshold* times apart (either way)."""
    if a <= 0 or b <= 0:
        return a != b
    return max(a, b) / min(a, b) >= threshold
