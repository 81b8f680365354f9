"""The manager's view of the front processes' traffic reports, and the rollouts they drive.

Every front process reports its per-target counts and its breakers a few times a
second (``traffic_report``, see :mod:`..gateway.traffic_hooks`). This controller sums
the counts into a rolling window (``/list_servers``), keeps each process's breakers
(``/list_servers``, ``/metrics``), and feeds the active rollouts
(:class:`..traffic.rollout.Rollout`): each report may advance, promote or fail one.
It decides; the manager's commands (:mod:`.rollout_commands`) publish the weights and
record the events. Rollouts are saved in ``<cache>/rollouts.json`` (0600), so one in
progress carries on after a restart.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..names import VERSION_SEP
from ..privfiles import write_private
from ..traffic.breaker import State, merge_views
from ..traffic.rollout import FAILED, Plan, Rollout
from ..traffic.stats import Counts, Rolling
from .traffic import TrafficTable

log = logging.getLogger(__name__)

# A front process not heard from this long is gone (replaced): its breakers are forgotten.
FORGET_AFTER = 10.0
# While a rollout runs, its counts are saved at most this often (events save at once).
SAVE_EVERY = 5.0
STATS_WINDOW = 60.0


class RolloutController:
    """Active and finished rollouts by endpoint, the fronts' breakers and rolling stats."""

    def __init__(self, traffic: TrafficTable, cache_dir: Path,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.traffic = traffic
        self.path = cache_dir / "rollouts.json"
        self.clock = clock
        self.monotonic = monotonic
        self.rollouts: dict[str, Rollout] = {}  # the latest of each endpoint
        self.rollbacks: dict[str, int] = {}  # failed rollouts by endpoint (a counter)
        self.stats = Rolling(STATS_WINDOW)
        self.views: dict[int, tuple[float, dict[str, dict[str, Any]]]] = {}  # pid -> breakers
        self._saved_at = 0.0
        self._load()

    # -- state kept across restarts ------------------------------------------------------
    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            rollouts = {name: Rollout.from_json(data) for name, data in saved["rollouts"].items()}
            self.rollbacks = {str(k): int(v) for k, v in saved.get("rollbacks", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s cannot be read (%s): no rollout carries on", self.path, exc)
            return
        for name, rollout in rollouts.items():
            versions = self.traffic.weights.get(name, {})
            if rollout.plan.canary not in versions or rollout.plan.stable not in versions:
                log.warning("the saved rollout of %s no longer matches its VERSIONS: dropped", name)
                continue
            self.rollouts[name] = rollout
            if rollout.active:
                self.apply_weights(rollout)

    def save(self) -> None:
        """Write every rollout as it stands (0600)."""
        write_private(self.path, json.dumps({
            "rollouts": {n: r.to_json() for n, r in self.rollouts.items()},
            "rollbacks": self.rollbacks}))
        self._saved_at = self.monotonic()

    # -- rollouts --------------------------------------------------------------------------
    def active(self, name: str) -> Rollout | None:
        """The running rollout of ``name``, if one runs."""
        rollout = self.rollouts.get(name)
        return rollout if rollout is not None and rollout.active else None

    def start(self, name: str, plan: Plan) -> Rollout:
        """Begin a rollout of ``name`` (checked by the caller: versioned, none active)."""
        rollout = self.rollouts[name] = Rollout.begin(name, plan, self.clock())
        self.apply_weights(rollout)
        self.save()
        return rollout

    def end_by_hand(self, rollout: Rollout, promote: bool, reason: str) -> None:
        """A person's promote or abort of a running rollout."""
        if promote:
            rollout.promote(self.clock(), reason)
        else:
            rollout.abort(self.clock(), reason)
        self.apply_weights(rollout)
        self.save()

    def apply_weights(self, rollout: Rollout) -> None:
        """Set the endpoint's weights to the rollout's (others versions get 0), and its
        route-table view (none once it is over: the weights are free to change again)."""
        problem = self.traffic.set_weights(rollout.endpoint, rollout.weights())
        if problem:
            log.error("rollout of %s: weights not applied: %s", rollout.endpoint, problem)
        if rollout.active:
            plan = rollout.plan
            self.traffic.rollouts[rollout.endpoint] = {
                "canary": plan.canary, "stable": plan.stable, "step": rollout.step,
                "steps": list(plan.steps), "state": rollout.state}
        else:
            self.traffic.rollouts.pop(rollout.endpoint, None)

    # -- reports of the front processes ---------------------------------------------------
    def report(self, pid: int, stats: dict[str, Counts], breakers: dict[str, dict[str, Any]],
               down: Callable[[str], str | None]) -> list[tuple[Rollout, str]]:
        """Take one front process's report; returns the rollouts it changed, each with
        its event ("advanced", "promoted", "failed"). ``down(target)``: why a version
        serves nothing now (not READY), or None."""
        mono, now = self.monotonic(), self.clock()
        previous = self.views.get(pid, (0.0, {}))[1]
        self.views[pid] = (mono, breakers)
        self.stats.add(stats, mono)
        changed = []
        for name, rollout in self.rollouts.items():
            event = self._step(rollout, stats, breakers, previous, down, now)
            if event:
                self.apply_weights(rollout)
                changed.append((rollout, event))
            if event == FAILED:
                self.rollbacks[name] = self.rollbacks.get(name, 0) + 1
        if changed or (self.rollouts and mono - self._saved_at >= SAVE_EVERY
                       and any(r.active for r in self.rollouts.values())):
            self.save()
        return changed

    @staticmethod
    def _step(rollout: Rollout, stats: dict[str, Counts], breakers: dict[str, dict[str, Any]],
              previous: dict[str, dict[str, Any]], down: Callable[[str], str | None],
              now: float) -> str | None:
        """One report's effect on ``rollout``: its event, or None."""
        name = rollout.endpoint
        canary = f"{name}{VERSION_SEP}{rollout.plan.canary}"
        stable = f"{name}{VERSION_SEP}{rollout.plan.stable}"
        rollout.observe(stats.get(canary), stats.get(stable), now)
        if not rollout.active:
            return None
        opened = _opened(breakers.get(canary), previous.get(canary))
        stopped = down(canary)
        if opened is not None and rollout.breaker_opened(now, opened) \
                or stopped is not None and rollout.fail(now, stopped):
            return FAILED
        return rollout.evaluate(now)

    def breakers(self) -> dict[str, dict[str, Any]]:
        """The breakers of every live front process, merged (the worst state of each)."""
        cutoff = self.monotonic() - FORGET_AFTER
        for pid in [p for p, (seen, _) in self.views.items() if seen < cutoff]:
            del self.views[pid]
        return merge_views([view for _, view in self.views.values()])

    def annotated(self, servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``/list_servers``' entries, each with its breaker and its recent stats."""
        breakers = self.breakers()
        stats = self.stats.summary(self.monotonic())
        for name, info in servers.items():
            info["breaker"] = breakers.get(name)
            info["stats"] = stats.get(name)
        return servers

    def listing(self) -> dict[str, Any]:
        """Each endpoint's latest rollout, in short (``/list_servers``' ROLLOUTS)."""
        return {name: {"state": r.state, "canary": r.plan.canary, "stable": r.plan.stable,
                       "step": r.step, "weights": r.weights(), "reason": r.reason}
                for name, r in sorted(self.rollouts.items())}

    def metrics(self) -> dict[str, Any]:
        """What ``/metrics`` shows of traffic: breakers, canary weights, rollbacks."""
        return {"breakers": self.breakers(), "rollouts": self.listing(),
                "rollbacks": dict(self.rollbacks)}


def _opened(now: dict[str, Any] | None, before: dict[str, Any] | None) -> str | None:
    """Why a breaker opened between two views of one process (None: it did not)."""
    if now is None:
        return None
    more = before is not None and int(now.get("opens", 0)) > int(before.get("opens", 0))
    if now.get("state") == State.OPEN.value or more:
        return str(now.get("reason") or "opened")
    return None
