"""Prometheus metrics of the model manager, and the thrash alert.

In endpoint server workers these are written to the server's multiprocess folder and
merged into the gateway's ``/metrics``; labels are the endpoint and the model.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)
LABELS = ["endpoint", "model"]

LOAD_SECONDS = Histogram("bis_model_load_seconds", "Time to load a model", LABELS,
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
LOADS = Counter("bis_model_loads_total", "Model loads", LABELS)
UNLOADS = Counter("bis_model_unloads_total", "Model unloads by reason (evicted, idle, unload, close)",
                  [*LABELS, "reason"])
HITS = Counter("bis_model_hits_total", "Acquisitions served by an already loaded copy", LABELS)
UNAVAILABLE = Counter("bis_model_unavailable_total", "Loads refused for lack of memory (429)", LABELS)
REFS = Gauge("bis_model_refs", "References held now", LABELS, multiprocess_mode="livesum")
MEMORY = Gauge("bis_model_memory_bytes", "Memory taken by loaded copies", LABELS,
               multiprocess_mode="livesum")
THRASHING = Gauge("bis_model_thrashing", "1 while a model is loaded and unloaded too often", LABELS,
                  multiprocess_mode="livemax")


class ThrashDetector:
    """Raises an alert when a model is loaded or unloaded more than ``limit`` times in ``window`` s.

    ``on_change(model, thrashing, count)`` is called once when the alert is raised and
    once when it clears, not on every event.
    """

    def __init__(self, endpoint: str, limit: int, window: float,
                 on_change: Callable[[str, bool, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self.window = window
        self.on_change = on_change
        self.clock = clock
        self._events: dict[str, deque[float]] = {}
        self.thrashing: set[str] = set()

    def record(self, model: str) -> None:
        """Count one load or unload of ``model``."""
        now = self.clock()
        events = self._events.setdefault(model, deque())
        events.append(now)
        self.check(model, now)

    def check(self, model: str, now: float | None = None) -> bool:
        """Whether ``model`` thrashes now (events older than the window are dropped)."""
        now = self.clock() if now is None else now
        events = self._events.setdefault(model, deque())
        while events and events[0] < now - self.window:
            events.popleft()
        hot = len(events) > self.limit
        if hot != (model in self.thrashing):
            (self.thrashing.add if hot else self.thrashing.discard)(model)
            THRASHING.labels(self.endpoint, model).set(1 if hot else 0)
            if hot:
                log.warning("%s: model %s thrashes: %d loads/unloads in %g s (limit %d)",
                            self.endpoint, model, len(events), self.window, self.limit)
            else:
                log.info("%s: model %s no longer thrashes", self.endpoint, model)
            if self.on_change is not None:
                self.on_change(model, hot, len(events))
        return hot
