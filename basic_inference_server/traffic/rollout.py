"""Progressive rollout of a canary version, with automatic rollback: the state machine.

A plan moves a share of an endpoint's traffic from its stable version to a canary in
steps (5% -> 25% -> 50% -> 100% by default). The manager feeds the rollout both
versions' request counts (:class:`.stats.Counts`, summed over the front processes)
and the canary's breaker openings, and asks it, on every report, what to do:

- **fail**, at any time during a step, when the canary has served ``MIN_REQUESTS``
  requests in the step and its error rate exceeds the stable version's by more than
  ``MAX_ERROR_RATE_DELTA``, or its p99 latency exceeds the stable one's times
  ``MAX_P99_RATIO`` plus ``P99_MARGIN_MS``; or at once when the canary's breaker
  opens, or the canary stops serving (the manager's call). All traffic goes back to
  stable.
- **advance** once the step has lasted ``DWELL_S`` and the canary has served
  ``MIN_REQUESTS`` within the margins; after the last step, **promote**: the canary
  takes all traffic.
- otherwise **hold**.

A person may promote or abort at any time. The stable version is judged on the same
step's requests when it has served ``MIN_REQUESTS`` of them, else on all its requests
since the rollout began (at a 100% step it serves none). Times are wall-clock seconds,
so a rollout's history can be compared with the callers' own clocks and a rollout
persisted by a manager carries on after its restart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import Counts

RUNNING = "running"
PROMOTED = "promoted"
FAILED = "failed"
ABORTED = "aborted"
STATES = (RUNNING, PROMOTED, FAILED, ABORTED)
MAX_STEPS = 20
MAX_HISTORY = 200
MAX_SECONDS = 7 * 86400
# After a rollout ends, its totals keep counting this long: the requests in flight at the
# decision, and the front processes' last reports, still land in them.
SETTLE_S = 10.0
# The request body of POST /rollout: its optional keys, their defaults and their rules.
PLAN_DEFAULTS: dict[str, Any] = {"STEPS": [5, 25, 50, 100], "DWELL_S": 60, "MIN_REQUESTS": 100,
                                 "MAX_ERROR_RATE_DELTA": 0.05, "MAX_P99_RATIO": 1.5,
                                 "P99_MARGIN_MS": 50}
_NUMBERS: dict[str, tuple[float, float, bool, str]] = {
    "DWELL_S": (0, MAX_SECONDS, False, f"a number of seconds from 0 to {MAX_SECONDS}"),
    "MIN_REQUESTS": (1, 10**9, True, "an integer from 1 to 1000000000"),
    "MAX_ERROR_RATE_DELTA": (0, 1, False, "a number from 0 to 1"),
    "MAX_P99_RATIO": (1, 1000, False, "a number from 1 to 1000"),
    "P99_MARGIN_MS": (0, 3_600_000, False, "a number of milliseconds from 0 to 3600000"),
}
PLAN_KEYS = frozenset({"SIGNATURE", "CANARY", "STABLE", *PLAN_DEFAULTS})


class PlanError(ValueError):
    """A rollout request that cannot be carried out; the text says why."""


@dataclass(frozen=True)
class Plan:
    """A validated rollout plan."""

    canary: str
    stable: str
    steps: tuple[float, ...]
    dwell_s: float
    min_requests: int
    max_error_rate_delta: float
    max_p99_ratio: float
    p99_margin_ms: float


def _number_ok(value: Any, low: float, high: float, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return math.isfinite(value) and low <= value <= high


def _steps(value: Any) -> tuple[float, ...]:
    ok = isinstance(value, list) and 0 < len(value) <= MAX_STEPS \
        and all(_number_ok(v, 0, 100, False) and v > 0 for v in value) \
        and all(a < b for a, b in zip(value[:-1], value[1:], strict=True))
    if not ok:
        raise PlanError(f"STEPS must be 1 to {MAX_STEPS} increasing percentages of traffic "
                        f"for the canary, each > 0 and <= 100, e.g. [5, 25, 50, 100]")
    return tuple(value)


def parse_plan(body: Any, versions: list[str], stable_default: str | None) -> Plan:
    """The plan of a ``POST /rollout`` body; :class:`PlanError` says what is wrong.

    ``versions``: the endpoint's version labels; ``stable_default``: the version to
    roll back to when the body names no ``STABLE`` (the one serving most traffic).
    """
    if not isinstance(body, dict):
        raise PlanError("the body must be a JSON object")
    unknown = sorted(set(body) - PLAN_KEYS)
    if unknown:
        raise PlanError(f"unknown key(s) {unknown}; known: {sorted(PLAN_KEYS)}")
    canary, stable = body.get("CANARY"), body.get("STABLE", stable_default)
    for key, label in (("CANARY", canary), ("STABLE", stable)):
        if not isinstance(label, str) or label not in versions:
            raise PlanError(f"{key} must be one of the endpoint's versions {sorted(versions)}, "
                            f"got {label!r}")
    if canary == stable:
        raise PlanError(f"CANARY and STABLE must be two different versions, both are {canary!r}")
    given = {**PLAN_DEFAULTS, **body}
    for key, (low, high, integer, rule) in _NUMBERS.items():
        if not _number_ok(given[key], low, high, integer):
            raise PlanError(f"{key} must be {rule}, got {given[key]!r}")
    return Plan(canary=str(canary), stable=str(stable), steps=_steps(given["STEPS"]),
                dwell_s=float(given["DWELL_S"]), min_requests=int(given["MIN_REQUESTS"]),
                max_error_rate_delta=float(given["MAX_ERROR_RATE_DELTA"]),
                max_p99_ratio=float(given["MAX_P99_RATIO"]),
                p99_margin_ms=float(given["P99_MARGIN_MS"]))


@dataclass
class Rollout:
    """One endpoint's rollout: where it stands, the counts of its step, its history."""

    endpoint: str
    plan: Plan
    started: float
    state: str = RUNNING
    step: int = 0
    step_started: float = 0.0
    reason: str = ""
    canary: Counts = field(default_factory=Counts)  # this step
    stable: Counts = field(default_factory=Counts)  # this step
    canary_total: Counts = field(default_factory=Counts)  # since the rollout began
    stable_total: Counts = field(default_factory=Counts)
    history: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None

    @classmethod
    def begin(cls, endpoint: str, plan: Plan, now: float) -> Rollout:
        """A new rollout at its first step."""
        rollout = cls(endpoint=endpoint, plan=plan, started=now, step_started=now)
        rollout._event(now, "started", f"{plan.canary} takes {plan.steps[0]:g}% of the traffic; "
                                        f"rolls back to {plan.stable}")
        return rollout

    @property
    def active(self) -> bool:
        """Whether the rollout is running."""
        return self.state == RUNNING

    def canary_share(self) -> float:
        """The canary's percentage of the traffic now."""
        if self.state == PROMOTED:
            return 100.0
        if self.state in (FAILED, ABORTED):
            return 0.0
        return float(self.plan.steps[self.step])

    def weights(self) -> dict[str, float]:
        """The weights of the canary and the stable version to publish now (percent)."""
        share = self.canary_share()
        return {self.plan.canary: _plain(share), self.plan.stable: _plain(100.0 - share)}

    # -- what the manager feeds it ----------------------------------------------------
    def observe(self, canary: Counts | None, stable: Counts | None, now: float) -> None:
        """Requests both versions served since the last report (None: none)."""
        settling = self.ended is not None and now - self.ended <= SETTLE_S
        if not (self.active or settling):
            return
        for step, total, counts in ((self.canary, self.canary_total, canary),
                                    (self.stable, self.stable_total, stable)):
            if counts:
                total.add(counts)
                if self.active:
                    step.add(counts)

    def breaker_opened(self, now: float, reason: str) -> bool:
        """The canary's breaker opened: the step fails (True when this ended the rollout)."""
        return self.fail(now, f"the canary's circuit breaker opened: {reason}")

    def fail(self, now: float, reason: str) -> bool:
        """The canary failed for ``reason`` (True when this ended the rollout)."""
        if not self.active:
            return False
        self._end(now, FAILED, reason)
        return True

    def evaluate(self, now: float) -> str | None:
        """Decide: the event that changed the rollout ("failed", "advanced", "promoted"),
        or None to hold."""
        if not self.active:
            return None
        verdict = self.verdict()
        if verdict:
            self._end(now, FAILED, verdict)
            return FAILED
        if self.holding(now):
            return None
        if self.step == len(self.plan.steps) - 1:
            self._end(now, PROMOTED, f"every step passed; {self.plan.canary} takes all traffic")
            return PROMOTED
        done = self._step_text()
        self.step += 1
        self.step_started = now
        self.canary, self.stable = Counts(), Counts()
        self._event(now, "advanced", f"step passed ({done}); {self.plan.canary} takes "
                                     f"{self.plan.steps[self.step]:g}%")
        return "advanced"

    def holding(self, now: float) -> str:
        """Why the step is not done yet ("" when it is)."""
        left = self.plan.dwell_s - (now - self.step_started)
        if left > 0:
            return f"dwelling {left:.1f} s more"
        missing = self.plan.min_requests - self.canary.requests
        if missing > 0:
            return f"waiting for {missing} more canary request(s)"
        return ""

    def verdict(self) -> str:
        """Why the canary fails its step now ("" when it does not, or cannot tell yet)."""
        plan, canary = self.plan, self.canary
        if canary.requests < plan.min_requests:
            return ""
        base = self.baseline()
        rate, base_rate = canary.error_rate(), base.error_rate()
        if rate > base_rate + plan.max_error_rate_delta:
            return (f"canary error rate {rate:.1%} over {canary.requests} requests exceeds "
                    f"stable's {base_rate:.1%} + {plan.max_error_rate_delta:.1%}")
        p99, base_p99 = canary.p99_ms(), base.p99_ms()
        if p99 is not None and base_p99 is not None \
                and p99 > base_p99 * plan.max_p99_ratio + plan.p99_margin_ms:
            return (f"canary p99 {p99:.1f} ms over {canary.requests} requests exceeds stable's "
                    f"{base_p99:.1f} ms x {plan.max_p99_ratio:g} + {plan.p99_margin_ms:g} ms")
        return ""

    def baseline(self) -> Counts:
        """The stable counts the canary is judged against."""
        return self.stable if self.stable.requests >= self.plan.min_requests else self.stable_total

    # -- a person's commands -----------------------------------------------------------
    def promote(self, now: float, reason: str = "promoted by hand") -> None:
        """The canary takes all traffic now."""
        self._end(now, PROMOTED, reason)

    def abort(self, now: float, reason: str = "aborted by hand") -> None:
        """All traffic back to stable now."""
        self._end(now, ABORTED, reason)

    # -- records -----------------------------------------------------------------------
    def _end(self, now: float, state: str, reason: str) -> None:
        self.state, self.reason, self.ended = state, reason, now
        self._event(now, state, reason)

    def _step_text(self) -> str:
        c, s = self.canary.summary(), self.baseline().summary()
        return (f"canary {c['failures']}/{c['requests']} failed, p99 {c['p99_ms']} ms; "
                f"stable {s['failures']}/{s['requests']} failed, p99 {s['p99_ms']} ms")

    def _event(self, now: float, event: str, reason: str) -> None:
        self.history.append({
            "time": round(now, 3), "step": self.step, "weights": self.weights(),
            "event": event, "reason": reason,
            "canary": self.canary.summary(), "stable": self.stable.summary(),
            "canary_total": self.canary_total.summary()})
        del self.history[:-MAX_HISTORY]

    def describe(self, now: float) -> dict[str, Any]:
        """``GET /rollout``'s answer: the plan, where it stands, the history."""
        return {"SIGNATURE": self.endpoint, "state": self.state, "reason": self.reason,
                "canary": self.plan.canary, "stable": self.plan.stable,
                "step": self.step, "steps": list(self.plan.steps), "weights": self.weights(),
                "started": self.started, "step_started": self.step_started, "ended": self.ended,
                "holding": self.holding(now) if self.active else "",
                "plan": _plan_body(self.plan),
                "stats": {"canary": self.canary.summary(), "stable": self.stable.summary(),
                          "canary_total": self.canary_total.summary(),
                          "stable_total": self.stable_total.summary()},
                "history": list(self.history)}

    def to_json(self) -> dict[str, Any]:
        """The rollout as saved (see :meth:`from_json`)."""
        return {"endpoint": self.endpoint, "plan": asdict(self.plan), "started": self.started,
                "state": self.state, "step": self.step, "step_started": self.step_started,
                "reason": self.reason, "history": self.history, "ended": self.ended,
                "counts": {k: getattr(self, k).to_json()
                           for k in ("canary", "stable", "canary_total", "stable_total")}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        """A saved rollout; ValueError (or KeyError, TypeError) when it is not one."""
        raw = dict(data["plan"])
        plan = Plan(**{**raw, "steps": tuple(raw["steps"])})
        state, step = data["state"], int(data["step"])
        if state not in STATES or not 0 <= step < len(plan.steps):
            raise ValueError(f"a saved rollout with state {state!r} at step {step}")
        counts = {k: Counts.from_json(v) for k, v in data["counts"].items()}
        return cls(endpoint=str(data["endpoint"]), plan=plan, started=float(data["started"]),
                   state=state, step=step, step_started=float(data["step_started"]),
                   reason=str(data["reason"]), history=list(data["history"]),
                   ended=None if data.get("ended") is None else float(data["ended"]), **counts)


def _plain(value: float) -> float:
    """A whole number as an int (95, not 95.0), as people write weights."""
    return int(value) if float(value).is_integer() else value


def _plan_body(plan: Plan) -> dict[str, Any]:
    """A plan as the keys of the request that started it."""
    return {"CANARY": plan.canary, "STABLE": plan.stable, "STEPS": list(plan.steps),
            "DWELL_S": plan.dwell_s, "MIN_REQUESTS": plan.min_requests,
            "MAX_ERROR_RATE_DELTA": plan.max_error_rate_delta,
            "MAX_P99_RATIO": plan.max_p99_ratio, "P99_MARGIN_MS": plan.p99_margin_ms}
