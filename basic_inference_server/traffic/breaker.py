"""Circuit breakers with Envoy/Istio outlier-detection semantics, one per target.

A target is a route name (``echo``, ``clf@v2``). Each front process keeps its own
breakers, as each Envoy keeps its own outlier detector: no coordination on the request
path. What counts as a failure is :func:`.outcome.counts_as_failure`'s call.

- **Closed**: every request passes. ``CONSECUTIVE_ERRORS`` failures in a row, or an
  error rate of at least ``ERROR_RATE`` over the last ``WINDOW`` seconds once that
  window holds ``MIN_REQUESTS`` requests, open it.
- **Open**: nothing passes; callers get 503 ``circuit_open`` with ``Retry-After``. It
  stays open ``OPEN_SECONDS`` times the number of times it has opened, at most
  ``MAX_OPEN_SECONDS`` (Envoy's ``base_ejection_time``); the count drops by one for
  each ``WINDOW`` the breaker then stays closed.
- **Half-open**: real requests go through as probes, one at a time at first and one
  more at once for each success; ``HALF_OPEN_SUCCESSES`` successes close it, a failed
  probe opens it again (for longer).

Every call takes ``now`` (a monotonic clock reading), so the state machine is tested
without sleeping.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

DEFAULTS: dict[str, Any] = {"CONSECUTIVE_ERRORS": 5, "ERROR_RATE": 0.5, "MIN_REQUESTS": 20,
                            "WINDOW": 10, "OPEN_SECONDS": 5, "MAX_OPEN_SECONDS": 300,
                            "HALF_OPEN_SUCCESSES": 5}
# The error-rate window is kept as this many buckets (a sliding window, 10% steps).
BUCKETS = 10
MAX_COUNT = 1_000_000
MAX_SECONDS = 7 * 86400


class State(Enum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _number(value: Any, low: float, high: float, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return math.isfinite(value) and low <= value <= high


# Each key: (kind check arguments, what the rule says).
_RULES: dict[str, tuple[float, float, bool, str]] = {
    "CONSECUTIVE_ERRORS": (0, MAX_COUNT, True, f"an integer from 0 (off) to {MAX_COUNT}"),
    "ERROR_RATE": (0, 1, False, "a number from 0 (off) to 1"),
    "MIN_REQUESTS": (1, MAX_COUNT, True, f"an integer from 1 to {MAX_COUNT}"),
    "WINDOW": (0.1, 86400, False, "a number of seconds from 0.1 to 86400"),
    "OPEN_SECONDS": (0.01, MAX_SECONDS, False, f"a number of seconds from 0.01 to {MAX_SECONDS}"),
    "MAX_OPEN_SECONDS": (0.01, MAX_SECONDS, False,
                         f"a number of seconds from 0.01 to {MAX_SECONDS}"),
    "HALF_OPEN_SUCCESSES": (1, 10_000, True, "an integer from 1 to 10000"),
}


def validate_breaker(value: Any) -> str | None:
    """What is wrong with a ``BREAKER`` setting (None: nothing; null turns breakers off)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"must be null or an object with keys {sorted(DEFAULTS)}"
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        return f"has unknown key(s) {unknown}; known: {sorted(DEFAULTS)}"
    for key, given in value.items():
        low, high, integer, rule = _RULES[key]
        if not _number(given, low, high, integer):
            return f"{key} must be {rule}"
    cfg = {**DEFAULTS, **value}
    if cfg["MAX_OPEN_SECONDS"] < cfg["OPEN_SECONDS"]:
        return "MAX_OPEN_SECONDS must be >= OPEN_SECONDS"
    if not cfg["CONSECUTIVE_ERRORS"] and not cfg["ERROR_RATE"]:
        return "turns both triggers off (CONSECUTIVE_ERRORS and ERROR_RATE 0); use null instead"
    return None


@dataclass
class Window:
    """Requests and failures over the last ``seconds``, in :data:`BUCKETS` buckets."""

    seconds: float
    buckets: deque[list[int]] = field(default_factory=deque)  # [index, requests, failures]

    def _trim(self, index: int) -> None:
        while self.buckets and self.buckets[0][0] <= index - BUCKETS:
            self.buckets.popleft()

    def add(self, now: float, failed: bool) -> None:
        """Count one request's outcome at ``now``."""
        index = math.floor(now * BUCKETS / self.seconds)
        self._trim(index)
        if not self.buckets or self.buckets[-1][0] != index:
            self.buckets.append([index, 0, 0])
        self.buckets[-1][1] += 1
        self.buckets[-1][2] += int(failed)

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, failures) in the window ending at ``now``."""
        self._trim(math.floor(now * BUCKETS / self.seconds))
        return sum(b[1] for b in self.buckets), sum(b[2] for b in self.buckets)


@dataclass
class Breaker:
    """One target's breaker (see the module's text for the states)."""

    cfg: dict[str, Any]
    state: State = State.CLOSED
    consecutive: int = 0
    window: Window = field(init=False)
    multiplier: int = 0  # how many times it opened, less the decay while closed
    closed_at: float = 0.0
    open_until: float = 0.0
    probes: int = 0  # half-open requests in flight
    successes: int = 0  # half-open successes so far
    opens: int = 0  # times it opened since the process started (metrics)
    reason: str = ""

    def __post_init__(self) -> None:
        self.window = Window(float(self.cfg["WINDOW"]))

    def blocked(self, now: float) -> bool:
        """Whether :meth:`allow` would refuse a request now (changes nothing)."""
        if self.state is State.OPEN:
            return now < self.open_until
        if self.state is State.HALF_OPEN:
            return self.probes >= 1 + self.successes
        return False

    def allow(self, now: float) -> bool:
        """Admit a request (True) or refuse it; in half-open, an admitted one is a probe
        whose outcome must be recorded (or released, ``failed`` None)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if now < self.open_until:
                return False
            self.state, self.probes, self.successes = State.HALF_OPEN, 0, 0
        if self.probes >= 1 + self.successes:
            return False
        self.probes += 1
        return True

    def record(self, failed: bool | None, now: float) -> None:
        """The outcome of an admitted request; None: no verdict (it never reached the
        target), which only gives back its half-open probe slot."""
        if self.state is State.HALF_OPEN:
            self._probe_done(failed, now)
        elif self.state is State.CLOSED and failed is not None:
            self.window.add(now, failed)
            self.consecutive = self.consecutive + 1 if failed else 0
            self._check_trip(now)
        # Open: the outcome of a request admitted before it opened says nothing new.

    def _check_trip(self, now: float) -> None:
        limit = self.cfg["CONSECUTIVE_ERRORS"]
        if limit and self.consecutive >= limit:
            self._open(now, f"{self.consecutive} consecutive failures")
            return
        rate = self.cfg["ERROR_RATE"]
        if rate:
            requests, failures = self.window.totals(now)
            if requests >= self.cfg["MIN_REQUESTS"] and failures >= rate * requests:
                self._open(now, f"{failures} of {requests} requests failed in the last "
                                f"{self.cfg['WINDOW']:g} s")

    def _probe_done(self, failed: bool | None, now: float) -> None:
        if self.probes == 0:
            return  # a request admitted while it was closed, not a probe
        self.probes -= 1
        if failed:
            self._open(now, "a half-open probe failed")
        elif failed is False:
            self.successes += 1
            if self.successes >= self.cfg["HALF_OPEN_SUCCESSES"]:
                self.state, self.consecutive, self.closed_at = State.CLOSED, 0, now
                self.window = Window(float(self.cfg["WINDOW"]))

    def _open(self, now: float, reason: str) -> None:
        if self.state is State.CLOSED:
            # Envoy's decay: one step less for each WINDOW it stayed closed.
            decay = int((now - self.closed_at) / float(self.cfg["WINDOW"]))
            self.multiplier = max(0, self.multiplier - decay)
        self.multiplier += 1
        seconds = min(float(self.cfg["OPEN_SECONDS"]) * self.multiplier,
                      float(self.cfg["MAX_OPEN_SECONDS"]))
        self.state, self.open_until, self.reason = State.OPEN, now + seconds, reason
        self.probes = self.successes = 0
        self.opens += 1

    def retry_after(self, now: float) -> float:
        """Seconds until it may admit a request again (0 when it would now)."""
        if self.state is State.OPEN:
            return max(0.0, self.open_until - now)
        # Half-open with every probe slot taken: a probe usually answers within a second.
        return 1.0 if self.blocked(now) else 0.0

    def describe(self, now: float) -> dict[str, Any]:
        """The breaker's state and window, for ``/list_servers`` and ``/metrics``."""
        requests, failures = self.window.totals(now)
        return {"state": self.state.value, "opens": self.opens, "reason": self.reason,
                "retry_after": round(self.retry_after(now), 3),
                "consecutive_failures": self.consecutive,
                "window_requests": requests, "window_failures": failures}


def normalize(raw: dict[str, Any]) -> dict[str, Any]:
    """A validated ``BREAKER`` object with every key (the defaults filled in)."""
    return {**DEFAULTS, **raw}


class Breakers:
    """The breakers of one front process, by target, created on first use.

    ``cfg`` is the route's ``breaker`` object as published (None: no breaker); a new
    object, as the route table is read again, applies at once, keeping the state.
    """

    def __init__(self) -> None:
        self._by_target: dict[str, Breaker] = {}
        self._raw: dict[str, dict[str, Any]] = {}

    def _get(self, target: str, cfg: dict[str, Any] | None) -> Breaker | None:
        if cfg is None:
            if target in self._by_target:
                del self._by_target[target], self._raw[target]
            return None
        breaker = self._by_target.get(target)
        if breaker is None:
            breaker = self._by_target[target] = Breaker(normalize(cfg))
            self._raw[target] = cfg
        elif self._raw[target] is not cfg and self._raw[target] != cfg:
            breaker.cfg = normalize(cfg)
            breaker.window.seconds = float(breaker.cfg["WINDOW"])
            self._raw[target] = cfg
        return breaker

    def allow(self, target: str, cfg: dict[str, Any] | None, now: float) -> bool:
        """Whether a request may go to ``target`` now (an admitted one must be recorded)."""
        breaker = self._get(target, cfg)
        return breaker is None or breaker.allow(now)

    def blocked(self, target: str, now: float) -> bool:
        """Whether ``target``'s breaker would refuse a request now (the router's test)."""
        breaker = self._by_target.get(target)
        return breaker is not None and breaker.blocked(now)

    def record(self, target: str, cfg: dict[str, Any] | None, failed: bool | None,
               now: float) -> None:
        """The outcome of a request :meth:`allow` admitted (``failed`` None: no verdict)."""
        breaker = self._get(target, cfg)
        if breaker is not None:
            breaker.record(failed, now)

    def retry_after(self, target: str, now: float) -> float:
        """Seconds until ``target``'s breaker may admit a request (0: now, or none)."""
        breaker = self._by_target.get(target)
        return 0.0 if breaker is None else breaker.retry_after(now)

    def reason(self, target: str) -> str:
        """Why ``target``'s breaker opened ("" when it has none)."""
        breaker = self._by_target.get(target)
        return "" if breaker is None else breaker.reason

    def describe(self, now: float) -> dict[str, dict[str, Any]]:
        """Each target's state, for ``/list_servers`` and ``/metrics``."""
        return {t: b.describe(now) for t, b in sorted(self._by_target.items())}


# The worst state first: a merged view shows the worst any front process has.
_SEVERITY = {State.OPEN.value: 2, State.HALF_OPEN.value: 1, State.CLOSED.value: 0}


def merge_views(views: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One view of several front processes' :meth:`Breakers.describe`: per target the
    worst state, how many processes have it open, and the opens summed."""
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for target, info in view.items():
            into = merged.setdefault(target, {"state": State.CLOSED.value, "opens": 0,
                                              "open_in": 0, "reason": ""})
            into["opens"] += int(info.get("opens", 0))
            state = info.get("state", State.CLOSED.value)
            into["open_in"] += int(state == State.OPEN.value)
            if _SEVERITY.get(state, 0) > _SEVERITY[into["state"]]:
                into["state"], into["reason"] = state, info.get("reason", "")
    return merged
