"""Scale to zero (``MIN_WORKERS: 0``): an idle endpoint's workers stop, a request
starts them again.

The front watches each such endpoint (requests in flight, new requests, jobs waiting or
running: :mod:`..gateway.idle_watch`) and reports one idle for ``IDLE_TIMEOUT``; a
request for an IDLE endpoint asks for it to ``wake`` and is held until it is READY.
"""

from __future__ import annotations

from .. import control_api as api
from .control import Reply, error, handles
from .core import Core
from .state import State


class IdleCommands:
    """``report_idle`` and ``wake``: the front's, on the control socket only."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @handles(api.REPORT_IDLE)
    def report_idle(self, args: api.IdleReport) -> Reply:
        """An endpoint with MIN_WORKERS 0 was idle for IDLE_TIMEOUT: scale it to zero.
        Only a READY server with no reload under way is; a stale report changes nothing."""
        ep = self.core.endpoints.get(args["SIGNATURE"])
        if ep is None or ep.config.settings["MIN_WORKERS"] != 0:
            return error(404, f"{args['SIGNATURE'][:100]!r} does not scale to zero")
        if ep.state != State.READY or ep.child is None or ep.pending is not None \
                or self.core.shutting_down:
            return 200, {"RESULT": f"{ep.name} is {ep.state.value}: left as it is",
                         "state": ep.state.value}
        self.core.apply(ep, ep.scale_to_zero(round(float(args["idle_s"]), 1)))
        return 200, {"RESULT": f"{ep.name} scaled to zero", "state": ep.state.value}

    @handles(api.WAKE)
    def wake(self, args: api.OnEndpoint) -> Reply:
        """A request came for an IDLE endpoint: start its workers (once, however many
        requests ask)."""
        ep = self.core.endpoints.get(args["SIGNATURE"])
        if ep is None:
            return error(404, f"unknown endpoint {args['SIGNATURE'][:100]!r}")
        if ep.state == State.IDLE and not self.core.shutting_down:
            self.core.history.add_event("woken", endpoint=ep.name)
            self.core.start_endpoint(ep)
        return 200, {"RESULT": f"{ep.name} is {ep.state.value}", "state": ep.state.value}
