"""Management commands of rollouts, and the front processes' traffic reports.

``/rollout`` starts one (POST, ``rollout``) or shows one (GET ?SIGNATURE=name,
``rollout_state``); ``/rollout/promote``
and ``/rollout/abort`` end one by hand. ``traffic_report`` is no HTTP route: each front
process sends it over the control socket (:mod:`..gateway.traffic_hooks`).
"""

from __future__ import annotations

import logging

from .. import control_api as api
from ..names import VERSION_SEP
from ..traffic.rollout import PlanError, Rollout, parse_plan
from ..traffic.stats import parse_report
from .control import Reply, error, handles
from .core import Core
from .state import State

log = logging.getLogger(__name__)


class RolloutCommands:
    """``/rollout``, ``/rollout/promote``, ``/rollout/abort`` and ``traffic_report``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.rollouts = core.rollouts

    @handles(api.TRAFFIC_REPORT)
    def traffic_report(self, args: api.TrafficReport) -> Reply:
        """A front process's counts since its last report and its breakers' states."""
        try:
            stats = parse_report(args.get("stats", {}))
        except ValueError as exc:
            return error(400, f"bad traffic report: {exc}")
        for rollout, event in self.rollouts.report(args["pid"], stats, args.get("breakers", {}),
                                                   self._not_serving):
            self._rollout_event(rollout, event)
        return 200, {"RESULT": "report received"}

    def _not_serving(self, target: str) -> str | None:
        """Why a version's requests fail before reaching it (it is not READY), or None."""
        ep = self.core.endpoints.get(target)
        if ep is None or ep.state == State.READY:
            return None
        return (f"the canary {target} is {ep.state.value}"
                + (f": {ep.last_error}" if ep.last_error else ""))

    @handles(api.ROLLOUT_STATE)
    def rollout_state(self, args: api.TrafficQuery) -> Reply:
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

    @handles(api.ROLLOUT_PROMOTE)
    def rollout_promote(self, args: api.RolloutEnd) -> Reply:
        """The canary takes all traffic now."""
        return self._end_by_hand(args, promote=True)

    @handles(api.ROLLOUT_ABORT)
    def rollout_abort(self, args: api.RolloutEnd) -> Reply:
        """All traffic back to the stable version now."""
        return self._end_by_hand(args, promote=False)

    # -- helpers ---------------------------------------------------------------------------
    def _versioned(self, name: str) -> Reply | None:
        """The error answer when ``name`` is not an endpoint with VERSIONS."""
        sections = self.core.traffic.sections
        if name not in sections:
            return error(404, f"{name[:100]!r} is not an endpoint with VERSIONS",
                         VERSIONED=sorted(sections))
        return None

    @handles(api.ROLLOUT)
    def rollout(self, args: api.RolloutPlan) -> Reply:
        """POST {SIGNATURE, CANARY, ...plan}: start a rollout."""
        name = args["SIGNATURE"]
        problem = self._versioned(name)
        if problem:
            return problem
        if self.rollouts.active(name) is not None:
            return error(409, f"{name} is already being rolled out; promote or abort it first",
                         ROLLOUT=self.rollouts.listing()[name])
        weights = self.core.traffic.weights[name]
        canary = args["CANARY"]
        stable = max((label for label in weights if label != canary),
                     key=lambda label: weights[label], default=None)
        try:
            plan = parse_plan(args, list(weights), stable)
        except PlanError as exc:
            return error(400, str(exc))
        problem = self._not_startable(name, plan.stable, plan.canary, weights)
        if problem:
            return problem
        rollout = self.rollouts.start(name, plan)
        self._rollout_event(rollout, "started")
        return 200, {"RESULT": f"{name}: rollout of {plan.canary} started at "
                               f"{plan.steps[0]:g}%", **rollout.describe(self.rollouts.clock())}

    def _not_startable(self, name: str, stable: str, canary: str,
                       weights: dict[str, float]) -> Reply | None:
        """The error answer when a valid plan cannot start now, or None."""
        if not weights[stable]:
            return error(400, f"the stable version {stable} serves no traffic now (weights "
                              f"{weights}): a rollout moves traffic away from a version that "
                              f"serves it; name another STABLE")
        ep = self.core.endpoints.get(f"{name}{VERSION_SEP}{canary}")
        if ep is None or ep.state != State.READY:
            state = ep.state.value if ep is not None else "unknown"
            return error(409, f"the canary {name}{VERSION_SEP}{canary} is {state}; a "
                              f"rollout starts on a READY canary")
        return None

    def _end_by_hand(self, args: api.RolloutEnd, promote: bool) -> Reply:
        name = args["SIGNATURE"]
        problem = self._versioned(name)
        if problem:
            return problem
        rollout = self.rollouts.active(name)
        if rollout is None:
            latest = self.rollouts.rollouts.get(name)
            return error(409, f"{name} has no rollout in progress"
                              + (f" (the last one is {latest.state})" if latest else ""))
        reason = args.get("REASON")
        text = reason[:500] if reason else ("promoted" if promote else "aborted") + " by hand"
        self.rollouts.end_by_hand(rollout, promote, text)
        self._rollout_event(rollout, rollout.state)
        return 200, {"RESULT": f"{name}: rollout {rollout.state}",
                     **rollout.describe(self.rollouts.clock())}

    def _rollout_event(self, rollout: Rollout, event: str) -> None:
        """Publish the rollout's weights and record what happened: the log, the
        history, and a notification when the rollout ends."""
        self.core.publish()
        name, last = rollout.endpoint, rollout.history[-1]
        level = logging.ERROR if event == "failed" else logging.INFO
        log.log(level, "rollout of %s: %s (%s); weights %s", name, event, last["reason"],
                last["weights"])
        self.core.history.add_event(f"rollout_{event}", endpoint=name, canary=rollout.plan.canary,
                               stable=rollout.plan.stable, step=rollout.step,
                               weights=last["weights"], reason=last["reason"])
        if not rollout.active:
            self.core.notifications.append({
                "event": "notification", "endpoint": name, "worker_id": None,
                "notif": f"ROLLOUT_{event.upper()}",
                "msg": f"rollout of {name}@{rollout.plan.canary} {event}: {last['reason']}",
                "info": {"canary": rollout.plan.canary, "stable": rollout.plan.stable,
                         "canary_total": last["canary_total"]},
                "time": last["time"]})
