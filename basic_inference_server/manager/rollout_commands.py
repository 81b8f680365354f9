"""Management commands of rollouts, and the front processes' traffic reports.

``/rollout`` starts one (POST, ``rollout``) or shows one (GET ?SIGNATURE=name,
``rollout_state``); ``/rollout/promote``
and ``/rollout/abort`` end one by hand. ``traffic_report`` is no HTTP route: each front
process sends it over the control socket (:mod:`..gateway.traffic_hooks`).
"""

from __future__ import annotations

import logging
from typing import Any

from ..traffic.rollout import PlanError, Rollout, parse_plan
from ..traffic.settings import VERSION_SEP
from ..traffic.stats import parse_report
from .control import Reply, error
from .core import Core
from .state import State

log = logging.getLogger(__name__)


class RolloutCommands(Core):
    """``/rollout``, ``/rollout/promote``, ``/rollout/abort`` and ``traffic_report``."""

    def cmd_traffic_report(self, args: dict[str, Any]) -> Reply:
        """A front process's counts since its last report and its breakers' states."""
        pid, breakers = args.get("pid"), args.get("breakers", {})
        try:
            stats = parse_report(args.get("stats", {}))
            if not isinstance(pid, int) or not isinstance(breakers, dict) \
                    or not all(isinstance(v, dict) for v in breakers.values()):
                raise ValueError("pid must be an integer and breakers an object of objects")
        except ValueError as exc:
            return error(400, f"bad traffic report: {exc}")
        for rollout, event in self.rollouts.report(pid, stats, breakers, self._not_serving):
            self._rollout_event(rollout, event)
        return 200, {"RESULT": "report received"}

    def _not_serving(self, target: str) -> str | None:
        """Why a version's requests fail before reaching it (it is not READY), or None."""
        ep = self.endpoints.get(target)
        if ep is None or ep.state == State.READY:
            return None
        return (f"the canary {target} is {ep.state.value}"
                + (f": {ep.last_error}" if ep.last_error else ""))

    def cmd_rollout(self, args: dict[str, Any]) -> Reply:
        """POST {SIGNATURE, CANARY, ...plan}: start a rollout."""
        return self._start_rollout(args)

    def cmd_rollout_state(self, args: dict[str, Any]) -> Reply:
        """GET ?SIGNATURE=name: an endpoint's latest rollout (without it: every one's)."""
        name = args.get("SIGNATURE")
        if name is None:
            now = self.rollouts.clock()
            return 200, {"ROLLOUTS": {n: r.describe(now) for n, r in self.rollouts.rollouts.items()}}
        problem = self._versioned(name)
        if problem:
            return problem
        rollout = self.rollouts.rollouts.get(name)
        if rollout is None:
            return error(404, f"{name} has had no rollout; start one with POST /rollout")
        return 200, rollout.describe(self.rollouts.clock())

    def cmd_rollout_promote(self, args: dict[str, Any]) -> Reply:
        """The canary takes all traffic now."""
        return self._end_by_hand(args, promote=True)

    def cmd_rollout_abort(self, args: dict[str, Any]) -> Reply:
        """All traffic back to the stable version now."""
        return self._end_by_hand(args, promote=False)

    # -- helpers ---------------------------------------------------------------------------
    def _versioned(self, name: Any) -> Reply | None:
        """The error answer when ``name`` is not an endpoint with VERSIONS."""
        if not isinstance(name, str) or not name:
            return error(400, "SIGNATURE (the endpoint with VERSIONS) is required")
        if name not in self.traffic.sections:
            return error(404, f"{name[:100]!r} is not an endpoint with VERSIONS",
                         VERSIONED=sorted(self.traffic.sections))
        return None

    def _start_rollout(self, args: dict[str, Any]) -> Reply:
        name = args.get("SIGNATURE")
        problem = self._versioned(name)
        if problem:
            return problem
        assert isinstance(name, str)
        if self.rollouts.active(name) is not None:
            return error(409, f"{name} is already being rolled out; promote or abort it first",
                         ROLLOUT=self.rollouts.listing()[name])
        weights = self.traffic.weights[name]
        canary = args.get("CANARY")
        stable = max((label for label in weights if label != canary),
                     key=lambda label: weights[label], default=None)
        try:
            plan = parse_plan(args, list(weights), stable)
        except PlanError as exc:
            return error(400, str(exc))
        if not weights[plan.stable]:
            return error(400, f"the stable version {plan.stable} serves no traffic now (weights "
                              f"{weights}): a rollout moves traffic away from a version that "
                              f"serves it; name another STABLE")
        ep = self.endpoints.get(f"{name}{VERSION_SEP}{plan.canary}")
        if ep is None or ep.state != State.READY:
            state = ep.state.value if ep is not None else "unknown"
            return error(409, f"the canary {name}{VERSION_SEP}{plan.canary} is {state}; a "
                              f"rollout starts on a READY canary")
        rollout = self.rollouts.start(name, plan)
        self._rollout_event(rollout, "started")
        return 200, {"RESULT": f"{name}: rollout of {plan.canary} started at "
                               f"{plan.steps[0]:g}%", **rollout.describe(self.rollouts.clock())}

    def _end_by_hand(self, args: dict[str, Any], promote: bool) -> Reply:
        name = args.get("SIGNATURE")
        problem = self._versioned(name)
        if problem:
            return problem
        assert isinstance(name, str)
        rollout = self.rollouts.active(name)
        if rollout is None:
            latest = self.rollouts.rollouts.get(name)
            return error(409, f"{name} has no rollout in progress"
                              + (f" (the last one is {latest.state})" if latest else ""))
        reason = args.get("REASON")
        text = str(reason)[:500] if reason else ("promoted" if promote else "aborted") + " by hand"
        self.rollouts.end_by_hand(rollout, promote, text)
        self._rollout_event(rollout, rollout.state)
        return 200, {"RESULT": f"{name}: rollout {rollout.state}",
                     **rollout.describe(self.rollouts.clock())}

    def _rollout_event(self, rollout: Rollout, event: str) -> None:
        """Publish the rollout's weights and record what happened: the log, the
        history, and a notification when the rollout ends."""
        self._publish()
        name, last = rollout.endpoint, rollout.history[-1]
        level = logging.ERROR if event == "failed" else logging.INFO
        log.log(level, "rollout of %s: %s (%s); weights %s", name, event, last["reason"],
                last["weights"])
        self.history.add_event(f"rollout_{event}", endpoint=name, canary=rollout.plan.canary,
                               stable=rollout.plan.stable, step=rollout.step,
                               weights=last["weights"], reason=last["reason"])
        if not rollout.active:
            self.notifications.append({
                "event": "notification", "endpoint": name, "worker_id": None,
                "notif": f"ROLLOUT_{event.upper()}",
                "msg": f"rollout of {name}@{rollout.plan.canary} {event}: {last['reason']}",
                "info": {"canary": rollout.plan.canary, "stable": rollout.plan.stable,
                         "canary_total": last["canary_total"]},
                "time": last["time"]})
