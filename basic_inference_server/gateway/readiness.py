"""When the gateway counts as ready: the ``READY_POLICY`` setting applied to endpoint states.

``/health/ready`` is what an orchestrator probes. With ``all`` one crash-looping
endpoint takes the whole box out of service; with ``any`` the box serves while at
least one endpoint does (callers of the others get a 503 with ``Retry-After``); a
list names the endpoints the box cannot serve without.
"""

from __future__ import annotations

from ..contracts import EndpointState, RouteSnapshot

READY = EndpointState.READY.value
# Scaled to zero (MIN_WORKERS 0) serves too: the first request starts it and waits.
SERVING = (READY, EndpointState.IDLE.value)
# An endpoint nobody started (DISABLED, or stopped by /kill_server) is no reason to wait.
NOT_STARTED = (EndpointState.STOPPED.value,)


def waiting_for(states: dict[str, str], policy: str | list[str]) -> dict[str, str]:
    """The endpoints (name -> state) that keep the gateway from being ready; empty when ready."""
    if isinstance(policy, list):
        return {n: states.get(n, "UNKNOWN") for n in policy if states.get(n) not in SERVING}
    started = {n: s for n, s in states.items() if s not in NOT_STARTED}
    not_ready = {n: s for n, s in started.items() if s not in SERVING}
    if policy == "any":
        return not_ready if started and len(not_ready) == len(started) else {}
    return not_ready


def table_waiting(table: RouteSnapshot) -> dict[str, str]:
    """:func:`waiting_for` over the front's route table. A table never read (the front
    could not read the manager's file yet) names no endpoint, which would read as "none
    started": not ready, whatever the policy."""
    if not table.written_at:
        return {"route table": "UNREAD"}
    return waiting_for({n: r.state.value for n, r in table.endpoints.items()},
                       table.ready_policy)
