"""Management commands of traffic: read and change the weights of versions."""

from __future__ import annotations

from typing import Any

from .control import Reply, error
from .core import Core


class TrafficCommands(Core):
    """``/traffic``: every versioned endpoint's policy, or new weights for one."""

    def cmd_traffic(self, args: dict[str, Any]) -> Reply:
        """GET: the policies; POST ``{SIGNATURE, WEIGHTS}``: change one endpoint's weights."""
        if "WEIGHTS" not in args:
            name = args.get("SIGNATURE")
            if name is None:
                return 200, {"TRAFFIC": self.traffic.policies()}
            if name not in self.traffic.sections:
                return error(404, f"{str(name)[:100]!r} is not an endpoint with VERSIONS",
                             VERSIONED=sorted(self.traffic.sections))
            return 200, {"SIGNATURE": name, **self.traffic.policy(name)}
        name = args.get("SIGNATURE")
        if not isinstance(name, str) or name not in self.traffic.sections:
            return error(404, f"{str(name)[:100]!r} is not an endpoint with VERSIONS",
                         VERSIONED=sorted(self.traffic.sections))
        if name in self.traffic.rollouts:
            return error(409, f"{name} is being rolled out: promote or abort the rollout first")
        problem = self.traffic.set_weights(name, args["WEIGHTS"])
        if problem:
            return error(400, problem)
        self.history.add_event("traffic_weights", endpoint=name, weights=self.traffic.weights[name])
        self._publish()
        return 200, {"RESULT": f"{name}: weights {self.traffic.weights[name]}",
                     "SIGNATURE": name, **self.traffic.policy(name)}
