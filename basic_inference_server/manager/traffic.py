"""The traffic policy of every endpoint with versions: weights kept across restarts.

Weights start from the section's ``TRAFFIC`` and change at runtime (``POST /traffic``,
rollouts); the current ones are kept in ``<cache>/traffic.json`` (0600) so a restart
routes as before. Saved weights whose versions no longer match the configuration are
dropped with a warning: the configuration wins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import EndpointConfig
from ..names import VERSION_SEP
from ..privfiles import write_private
from ..traffic.settings import check_weights, initial_weights

log = logging.getLogger(__name__)


class TrafficTable:
    """Weights (and the rollout in progress, if any) of each endpoint with VERSIONS."""

    def __init__(self, sections: dict[str, EndpointConfig], cache_dir: Path) -> None:
        self.path = cache_dir / "traffic.json"
        self.sections = {n: c for n, c in sections.items() if c.settings["VERSIONS"]}
        self.weights = {n: initial_weights(c.settings) for n, c in self.sections.items()}
        # endpoint -> the rollout's route-table view (manager/rollouts.py keeps it current).
        self.rollouts: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8")).get("weights", {})
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s cannot be read (%s): weights start from TRAFFIC", self.path, exc)
            return
        for name, weights in saved.items() if isinstance(saved, dict) else ():
            if name not in self.weights:
                continue
            if isinstance(weights, dict) and set(weights) == set(self.weights[name]) \
                    and check_weights(weights) is None:
                self.weights[name] = {k: float(v) for k, v in weights.items()}
            else:
                log.warning("saved weights of %s no longer match its VERSIONS: using TRAFFIC",
                            name)

    def set_weights(self, name: str, weights: Any) -> str | None:
        """Change an endpoint's weights (labels left out get 0); the error text, or None."""
        if name not in self.sections:
            return f"{name} has no VERSIONS"
        problem = check_weights(weights)
        if problem:
            return f"WEIGHTS {problem}"
        unknown = sorted(set(weights) - set(self.weights[name]))
        if unknown:
            return f"{name} has no version {', '.join(unknown)} (it has {', '.join(self.weights[name])})"
        self.weights[name] = {label: float(weights.get(label, 0)) for label in self.weights[name]}
        write_private(self.path, json.dumps({"weights": self.weights}))
        return None

    def policy(self, name: str) -> dict[str, Any]:
        """What the front routes ``name`` by (the route table's ``traffic`` entry)."""
        s = self.sections[name].settings
        return {"versions": {label: f"{name}{VERSION_SEP}{label}" for label in self.weights[name]},
                "weights": self.weights[name], "sticky_field": s["STICKY_FIELD"],
                "shadow": s["SHADOW"], "rollout": self.rollouts.get(name)}

    def policies(self) -> dict[str, dict[str, Any]]:
        """The policy of every endpoint with VERSIONS."""
        return {name: self.policy(name) for name in self.sections}
