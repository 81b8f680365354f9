"""Per-target request statistics: counts, failures and a latency histogram.

Each front process records its requests into a :class:`Recorder` and hands the manager
the deltas a few times a second; the manager adds them up (:meth:`Counts.add`), into
a :class:`Rolling` window for display and into a rollout's per-step totals. Latency
goes into fixed logarithmic buckets (25% wide, 0.1 ms to about 2 minutes), so counts
from any number of processes merge exactly and a p99 read from them is within one
bucket of the true one.

On the wire a :class:`Counts` is a small JSON object (:meth:`Counts.to_json`):
``{"requests": 120, "failures": 3, "rejected": 0, "latency": {"41": 100, "44": 20}}``,
``latency`` mapping bucket indexes to counts (empty buckets left out).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .outcome import Origin, counts_as_failure

LOWEST = 1e-4  # seconds: the upper bound of bucket 0
GROWTH = 1.25
NBUCKETS = 64
_LOG_GROWTH = math.log(GROWTH)
# Bounds on what a report may carry (it comes over the control socket).
MAX_TARGETS = 10_000
MAX_COUNT = 10**12


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency: bucket i holds (LOWEST*GROWTH^(i-1), LOWEST*GROWTH^i]."""
    if seconds <= LOWEST:
        return 0
    return min(NBUCKETS - 1, math.ceil(math.log(seconds / LOWEST) / _LOG_GROWTH - 1e-9))


def bucket_value(index: int) -> float:
    """A bucket's representative latency in seconds (its geometric middle)."""
    return LOWEST * GROWTH ** max(0.0, index - 0.5)


@dataclass
class Counts:
    """Requests to one target: how many, how many failed, how long they took."""

    requests: int = 0
    failures: int = 0
    # Refused by the front itself (open breaker, bulkhead): never reached the target.
    rejected: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    def observe(self, failed: bool, seconds: float) -> None:
        """One request that reached the target."""
        self.requests += 1
        self.failures += int(failed)
        index = bucket_of(seconds)
        self.latency[index] = self.latency.get(index, 0) + 1

    def add(self, other: Counts) -> None:
        """Merge ``other`` into these counts."""
        self.requests += other.requests
        self.failures += other.failures
        self.rejected += other.rejected
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count

    def __bool__(self) -> bool:
        return bool(self.requests or self.rejected)

    def error_rate(self) -> float:
        """Failures over requests (0 without requests)."""
        return self.failures / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The latency (seconds) under which a fraction ``q`` of requests finished."""
        total = sum(self.latency.values())
        if not total:
            return None
        rank, seen = q * total, 0
        for index in sorted(self.latency):
            seen += self.latency[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.latency))

    def p99_ms(self) -> float | None:
        """The 99th percentile latency in milliseconds (None without samples)."""
        p99 = self.quantile(0.99)
        return None if p99 is None else p99 * 1000

    def summary(self) -> dict[str, Any]:
        """What people read: rates and quantiles rather than buckets."""
        p50 = self.quantile(0.5)
        p99 = self.p99_ms()
        return {"requests": self.requests, "failures": self.failures,
                "rejected": self.rejected, "error_rate": round(self.error_rate(), 4),
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99, 3)}

    def to_json(self) -> dict[str, Any]:
        """The counts as JSON."""
        return {"requests": self.requests, "failures": self.failures, "rejected": self.rejected,
                "latency": {str(i): c for i, c in self.latency.items()}}

    @classmethod
    def from_json(cls, data: Any) -> Counts:
        """Counts from :meth:`to_json`'s form; ValueError when it is not that form."""
        if not isinstance(data, dict):
            raise ValueError("counts must be an object")
        values = [data.get(k, 0) for k in ("requests", "failures", "rejected")]
        if not all(_count(v) for v in values):
            raise ValueError("requests, failures and rejected must be counts")
        latency = data.get("latency", {})
        if not isinstance(latency, dict):
            raise ValueError("latency must map bucket indexes to counts")
        buckets: dict[int, int] = {}
        for key, count in latency.items():
            if not (isinstance(key, str) and key.isdigit() and int(key) < NBUCKETS
                    and _count(count)):
                raise ValueError(f"latency bucket {key!r}: {count!r} is not a bucket count")
            buckets[int(key)] = count
        if values[1] > values[0]:
            raise ValueError("failures cannot exceed requests")
        return cls(values[0], values[1], values[2], buckets)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def parse_report(data: Any) -> dict[str, Counts]:
    """A front process's report ``{target: counts}``; ValueError when malformed."""
    if not isinstance(data, dict) or len(data) > MAX_TARGETS:
        raise ValueError(f"stats must be an object of at most {MAX_TARGETS} targets")
    out = {}
    for target, counts in data.items():
        if not isinstance(target, str) or not 0 < len(target) <= 200:
            raise ValueError("stats targets must be route names")
        out[target] = Counts.from_json(counts)
    return out


class Recorder:
    """A front process's counts since it last reported, by target."""

    def __init__(self) -> None:
        self.pending: dict[str, Counts] = {}

    def record(self, target: str, status: int, origin: Origin, seconds: float) -> bool:
        """Count one request's outcome; returns whether it counts as a failure."""
        counts = self.pending.get(target)
        if counts is None:
            counts = self.pending[target] = Counts()
        if origin is Origin.FRONT:
            counts.rejected += 1
            return False
        failed = counts_as_failure(status, origin)
        counts.observe(failed, seconds)
        return failed

    def take(self) -> dict[str, Counts]:
        """The deltas since the last take; counting starts again from zero."""
        pending, self.pending = self.pending, {}
        return {target: counts for target, counts in pending.items() if counts}

    def restore(self, taken: dict[str, Counts]) -> None:
        """Put back deltas that could not be delivered (they go with the next take)."""
        for target, counts in taken.items():
            self.pending.setdefault(target, Counts()).add(counts)


class Rolling:
    """The manager's sums over the last ``seconds``, by target, in one-second slots."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self.slots: dict[str, deque[tuple[int, Counts]]] = {}

    def add(self, deltas: dict[str, Counts], now: float) -> None:
        """Add each target's counts to the current second's slot."""
        second = int(now)
        for target, counts in deltas.items():
            slots = self.slots.setdefault(target, deque())
            if not slots or slots[-1][0] != second:
                slots.append((second, Counts()))
            slots[-1][1].add(counts)
            self._trim(slots, now)

    def _trim(self, slots: deque[tuple[int, Counts]], now: float) -> None:
        while slots and slots[0][0] <= now - self.seconds - 1:
            slots.popleft()

    def total(self, target: str, now: float) -> Counts:
        """Everything ``target`` did within the window."""
        out = Counts()
        slots = self.slots.get(target)
        if slots:
            self._trim(slots, now)
            for _second, counts in slots:
                out.add(counts)
        return out

    def summary(self, now: float) -> dict[str, dict[str, Any]]:
        """Each target's :meth:`Counts.summary` over the window (idle ones left out)."""
        out = {}
        for target in sorted(self.slots):
            total = self.total(target, now)
            if total:
                out[target] = {**total.summary(), "window_s": self.seconds}
            else:
                del self.slots[target]  # idle for a whole window (or gone)
        return out
