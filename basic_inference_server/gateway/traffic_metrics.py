"""Prometheus families of traffic management, read from the manager at scrape time.

- ``bis_breaker_state{endpoint, version}``: 0 closed, 1 half-open, 2 open (the worst
  state over the front processes; each keeps its own breakers).
- ``bis_breaker_opens_total{endpoint, version}``: times it opened, summed over them.
- ``bis_rollout_canary_weight{endpoint, version}``: the canary's share (percent) of the
  endpoint's latest rollout: its step while it runs, 100 once promoted, 0 once failed
  or aborted.
- ``bis_rollout_rollbacks_total{endpoint}``: rollouts failed (rolled back automatically).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..names import split_target

BREAKER_LEVEL = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class TrafficCollector:
    """The manager's ``TRAFFIC_STATE`` (``cmd_metrics``) as metric families."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.state = state or {}

    def collect(self) -> Iterator[Metric]:
        """The breakers' state and open counts, per endpoint and version."""
        state = GaugeMetricFamily("bis_breaker_state", "Circuit breaker: 0 closed, 1 half-open, "
                                  "2 open (the worst of the front processes)",
                                  labels=["endpoint", "version"])
        opens = CounterMetricFamily("bis_breaker_opens", "Times a circuit breaker opened",
                                    labels=["endpoint", "version"])
        for target, info in sorted(self.state.get("breakers", {}).items()):
            endpoint, version = split_target(target)
            labels = [endpoint, version or ""]
            state.add_metric(labels, BREAKER_LEVEL.get(info.get("state"), 0.0))
            opens.add_metric(labels, float(info.get("opens", 0)))
        weight = GaugeMetricFamily("bis_rollout_canary_weight", "The canary's share of traffic "
                                   "(percent) in the endpoint's latest rollout",
                                   labels=["endpoint", "version"])
        for endpoint, rollout in sorted(self.state.get("rollouts", {}).items()):
            weight.add_metric([endpoint, rollout["canary"]],
                              float(rollout["weights"][rollout["canary"]]))
        rollbacks = CounterMetricFamily("bis_rollout_rollbacks", "Rollouts rolled back "
                                        "automatically", labels=["endpoint"])
        for endpoint, count in sorted(self.state.get("rollbacks", {}).items()):
            rollbacks.add_metric([endpoint], float(count))
        yield from (state, opens, weight, rollbacks)
