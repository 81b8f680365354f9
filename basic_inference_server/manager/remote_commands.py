"""Health of remote endpoints: what the supervisor probes, and what it found."""

from __future__ import annotations

import time
from typing import Any

from .. import control_api as api
from .control import Reply, error, handles
from .core import Core
from .state import Endpoint, State

WATCHED = (State.READY, State.UNREACHABLE)


def remote_targets(endpoints: dict[str, Endpoint]) -> dict[str, Any]:
    """The remote endpoints in service and their URLs, with their probe schedule."""
    targets = {}
    for name, ep in endpoints.items():
        s = ep.config.settings
        if s["URLS"] and ep.state in WATCHED:
            targets[name] = {"urls": s["URLS"], "ping_interval": s["PING_INTERVAL"],
                             "ping_timeout": min(s["PING_TIMEOUT"], s["PING_INTERVAL"])}
    return targets


class RemoteCommands:
    """``remote_health``: the supervisor's report on a remote endpoint's URLs."""

    def __init__(self, core: Core) -> None:
        self.core = core

    @handles(api.REMOTE_HEALTH)
    def remote_health(self, args: api.RemoteHealth) -> Reply:
        """``{SIGNATURE, URLS: {url: {ok, error, latency_ms}}}`` from the supervisor."""
        ep = self.core.endpoints.get(args["SIGNATURE"])
        if ep is None or not ep.config.settings["URLS"]:
            return error(409, "stale report: not a remote endpoint of this gateway")
        self.core.apply(ep, ep.remote_checked(args["URLS"], time.monotonic(), time.time()))
        return 200, {"RESULT": ep.state.value}
