"""Turns probe outcomes into verdicts: which workers, or which whole server, are hung."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .probe import Outcome

MASTER = 0  # key of the server's master process among its probed processes


@dataclass
class Verdict:
    """What to replace after one round of probes of one server."""

    server: bool = False
    workers: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.server or bool(self.workers)


class HangDetector:
    """Counts probes missed in a row per process of each server generation.

    A worker that misses ``misses`` probes in a row is hung; when every probed process
    of a server is (master included, or all of its workers), the server is. A probe
    that finds a process gone is no miss: its parent replaces it.
    """

    def __init__(self) -> None:
        self._missed: dict[tuple[str, int], dict[int, int]] = {}

    def observe(self, endpoint: str, generation: int, outcomes: Mapping[int, Outcome],
                misses: int) -> Verdict:
        """Record one round (``outcomes``: pid, or :data:`MASTER`, to outcome)."""
        key = (endpoint, generation)
        # Earlier generations of this endpoint are gone or draining: forget them.
        for old in [k for k in self._missed if k[0] == endpoint and k != key]:
            del self._missed[old]
        counts = self._missed.setdefault(key, {})
        for pid in [p for p in counts if p not in outcomes]:
            del counts[pid]
        for pid, outcome in outcomes.items():
            counts[pid] = counts.get(pid, 0) + 1 if outcome == Outcome.TIMEOUT else 0
        hung = [pid for pid, n in counts.items() if n >= misses]
        workers = [pid for pid in outcomes if pid != MASTER]
        if MASTER in hung or (workers and all(pid in hung for pid in workers)):
            del self._missed[key]
            return Verdict(server=True)
        for pid in hung:
            counts[pid] = 0
        return Verdict(workers=sorted(hung))

    def forget(self, endpoint: str) -> None:
        """Forget the missed probes of ``endpoint``'s workers."""
        for key in [k for k in self._missed if k[0] == endpoint]:
            del self._missed[key]
