"""Durations judged against a baseline taken in the same test, on the same machine.

A bound in seconds fails on a busy machine and says nothing on a fast one. A test that
must show that something does not slow a call down times the same call before (the
baseline) and during, and :func:`assert_not_slowed` compares the two: the typical call
during (the median) against the slowest of the baseline, so that one call that the
machine delayed, in either list, decides nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

# How many times the slowest baseline call the typical call during may take.
FACTOR = 3.0


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """What ``call()`` returns, and the seconds it took."""
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def assert_not_slowed(during: list[float], baseline: list[float], what: str,
                      factor: float = FACTOR) -> None:
    """The median of ``during`` is at most ``factor`` times the slowest of ``baseline``."""
    assert during and baseline, (during, baseline)
    bound = factor * max(baseline)
    assert statistics.median(during) <= bound, (
        f"{what}: median {statistics.median(during) * 1000:.1f} ms, over {bound * 1000:.1f} ms "
        f"({factor:g} x the slowest of the baseline); during {sorted(during)}, "
        f"baseline {sorted(baseline)}")
