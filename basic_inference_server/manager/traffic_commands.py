"""Management commands of traffic: read and change the weights of versions."""

from __future__ import annotations

from .. import control_api as api
from .control import Reply, error, handles
from .core import Core


class TrafficCommands:
    """``/traffic``: every versioned endpoint's policy, or new weights for one."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.traffic = core.traffic

    def _unknown(self, name: str) -> Reply:
        return error(404, f"{name[:100]!r} is not an endpoint with VERSIONS",
                     VERSIONED=sorted(self.traffic.sections))

    @handles(api.TRAFFIC)
    def policies(self, args: api.TrafficQuery) -> Reply:
        """GET: every versioned endpoint's policy, or ``SIGNATURE``'s."""
        name = args.get("SIGNATURE")
        if name is None:
            return 200, {"TRAFFIC": self.traffic.policies()}
        if name not in self.traffic.sections:
            return self._unknown(name)
        return 200, {"SIGNATURE": name, **self.traffic.policy(name)}

    @handles(api.SET_WEIGHTS)
    def set_weights(self, args: api.WeightsArgs) -> Reply:
        """POST ``{SIGNATURE, WEIGHTS}``: change one endpoint's weights (kept across restarts)."""
        name = args["SIGNATURE"]
        if name not in self.traffic.sections:
            return self._unknown(name)
        if name in self.traffic.rollouts:
            return error(409, f"{name} is being rolled out: promote or abort the rollout first")
        problem = self.traffic.set_weights(name, args["WEIGHTS"])
        if problem:
            return error(400, problem)
        self.core.history.add_event("traffic_weights", endpoint=name,
                                    weights=self.traffic.weights[name])
        self.core.publish()
        return 200, {"RESULT": f"{name}: weights {self.traffic.weights[name]}",
                     "SIGNATURE": name, **self.traffic.policy(name)}
