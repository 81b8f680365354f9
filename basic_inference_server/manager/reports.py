"""Management commands that report: health samples, alerts, history, support status."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import control_api as api
from ..health.alerts import AlertTracker, Thresholds
from ..health.memory import seed_status
from ..health.traffic import read_traffic
from .control import (
    LOOKUPS_PER_S,
    REFUSALS_PER_S,
    Budget,
    Deferred,
    Reply,
    error,
    handles,
    json_depth,
)
from .core import Core
from .peers import normal, peer_in_tree
from .state import Endpoint, State

log = logging.getLogger(__name__)

# A support report is kept and shown by /system_status: bounded, so that nothing
# stored can break a later answer (orjson writes at most 254 levels).
SUPPORT_MAX_BYTES = 64 * 1024
# The most audit records one /history answer carries.
AUDIT_RECORDS = 1000
SUPPORT_MAX_DEPTH = 32


def _running_pid(ep: Endpoint) -> int | None:
    """The pid of ``ep``'s process while it runs."""
    return ep.child.pid if ep.child is not None and ep.child.poll() is None else None


class ReportCommands:
    """The commands that take in and hand out what the tree reports."""

    def __init__(self, core: Core) -> None:
        self.core = core
        config = core.config
        self.alerts = AlertTracker(Thresholds(
            mem_avail_pct_min=config["ALERT_MEM_AVAIL_PCT"],
            disk_free_pct_min=config["ALERT_DISK_FREE_PCT"],
            **Thresholds.gpu_pct(config["ALERT_GPU_MEM_PCT"]),
            restarts_max=config["ALERT_RESTARTS"]))
        self.refusals = Budget(REFUSALS_PER_S, 2 * REFUSALS_PER_S, core.clock())
        self.lookups = Budget(LOOKUPS_PER_S, 2 * LOOKUPS_PER_S, core.clock())

    @handles(api.HEALTH_SAMPLE)
    def health_sample(self, sample: api.HealthSample) -> Reply:
        """A sample from the supervisor: keep it, update alerts, add it to the history."""
        status = seed_status(sample)
        system, gpu = sample["system"], sample["gpu"]
        alerts = self._evaluate_alerts(system, gpu)
        self.core.history.add_sample({"system": system, "mem_servers": status["mem_servers"],
                                      "mem_gateway": status["mem_gateway"], "gpu": gpu,
                                      "traffic": read_traffic(self.core.front_metrics)})
        self.core.health = {"status": {**status, "system": system, "gpu": gpu,
                                       "sampled_at": sample.get("taken_at")},
                            "alerts": alerts, "trees": sample["trees"]}
        return 200, {"RESULT": "sample received"}

    @handles(api.SYSTEM_STATUS)
    def system_status(self, _args: api.NoArgs) -> Reply:
        """The latest health sample, its alerts, the support processes' reports."""
        core = self.core
        if core.health is None:
            return error(503, "the first health sample is not taken yet; retry shortly")
        support = {n: e.support_status for n, e in core.endpoints.items() if e.support_status}
        return 200, {"SYSTEM_STATUS": core.health["status"],
                     "SYSTEM_ALERTS": core.health["alerts"], "SUPPORT_STATUS": support,
                     "HISTORY": {"events": core.history.events(limit=100)},
                     "LEDGER": core.ledger.status() if core.ledger else None}

    @handles(api.HISTORY)
    def history(self, args: api.HistoryArgs) -> Reply:
        """The rolling window of health samples and events (the dashboard's charts)."""
        limit = max(1, min(1440, args.get("samples", 120)))
        audit = max(0, min(AUDIT_RECORDS, args.get("audit", 100)))
        return 200, {"samples": self.core.history.samples(limit=limit),
                     "events": self.core.history.events(limit=100),
                     "audit": self.core.audit.newest(audit)}

    def _evaluate_alerts(self, system: dict[str, Any], gpu: dict[str, Any]) -> list[dict[str, Any]]:
        """Update the alert state; each raise and clear is logged and recorded once."""
        endpoints, history = self.core.endpoints, self.core.history
        update = self.alerts.update({
            "system": system, "gpu": gpu,
            "restarts": {n: e.restarts for n, e in endpoints.items()},
            "crashloops": [n for n, e in endpoints.items() if e.state == State.CRASHLOOP],
        })
        for alert in update.raised:
            log.warning("alert raised: %s", alert["message"])
            history.add_event("alert_raised", **alert)
        for alert in update.cleared:
            log.info("alert cleared: %s", alert["name"])
            history.add_event("alert_cleared", **alert)
        return update.active

    @handles(api.NOTIFICATIONS)
    def notifications(self, _args: api.NoArgs) -> Reply:
        """The workers' recent notifications, and the rollouts' ends."""
        return 200, {"NOTIFICATIONS": list(self.core.notifications)}

    @handles(api.SUPPORT_STATUS)
    def support_update_status(self, args: api.SupportReport) -> Reply | Deferred:
        """A support process reports its status; only that process (or its children) may.

        The caller is identified by its connection, which the front passes under
        reserved keys: the socket must be open in the support process's tree. That
        lookup runs in the control server's thread, off the loop; callers refused before
        it are counted against :data:`REFUSALS_PER_S`.
        """
        core = self.core
        report = {k: v for k, v in args.items() if k not in (api.PEER_ADDR, api.PEER_PORT)}
        name = args["SIGNATURE"] or ""
        ep = self._support_endpoint(name)
        if ep is None:
            return self._refuse(404, f"no support process named {name[:100]!r}")
        forbidden = f"only the support process {ep.name} itself may report its status"
        owner = _running_pid(ep)
        peer = self._local_peer(args.get("__peer_addr__"), args.get("__peer_port__"))
        if owner is None or peer is None or core.local_address is None:
            return self._refuse(403, forbidden)
        if not self.lookups.take(core.clock()):
            return error(429, f"too many status reports; at most {LOOKUPS_PER_S:g} a second")
        server = (core.local_address, core.port)

        def finish(verified: bool) -> Reply:
            if not verified:
                return error(403, forbidden)
            return self._keep_support_report(ep.name, report)

        return Deferred(work=lambda: peer_in_tree(peer, server, owner), finish=finish)

    def _support_endpoint(self, name: str) -> Endpoint | None:
        """The support endpoint ``name``; a name of no endpoint is taken for the first
        support process's; None when ``name`` is another kind of endpoint, or there is
        no support process."""
        endpoints = self.core.endpoints
        ep = endpoints.get(name)
        if ep is None:
            ep = next((e for e in endpoints.values() if e.is_support), None)
        return ep if ep is not None and ep.is_support else None

    def _local_peer(self, addr: Any, port: Any) -> tuple[str, int] | None:
        """The caller's end of the connection, when it can be a process of this box
        that reached the address the support processes are given; else None."""
        local = self.core.local_address
        if not isinstance(addr, str) or local is None:
            return None
        try:
            ip, ours, number = normal(addr), normal(local), int(port)
        except (TypeError, ValueError):
            return None
        if ip.version != ours.version or not (ip.is_loopback or ip == ours):
            return None
        return str(ip), number

    def _refuse(self, status: int, message: str) -> Reply:
        if self.refusals.take(self.core.clock()):
            return error(status, message)
        return error(429, f"too many refused status reports; at most {REFUSALS_PER_S:g} a "
                          f"second")

    def _keep_support_report(self, name: str, report: dict[str, Any]) -> Reply:
        ep = self.core.endpoints.get(name)
        if ep is None:
            return error(404, f"no support process named {name!r}")
        if json_depth(report, SUPPORT_MAX_DEPTH) > SUPPORT_MAX_DEPTH:
            return error(400, f"status report nested deeper than {SUPPORT_MAX_DEPTH} levels")
        size = len(json.dumps(report, default=str))
        if size > SUPPORT_MAX_BYTES:
            return error(413, f"status report of {size} bytes; at most {SUPPORT_MAX_BYTES}")
        ep.support_status = {**report, "received_at": time.time()}
        return 200, {"RESULT": "status received"}
