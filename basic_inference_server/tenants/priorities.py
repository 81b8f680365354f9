"""Priority classes and weights: who goes first when an endpoint is busy.

A request's **class** (``PRIORITY_CLASSES``, highest first) comes from its API key's
``PRIORITY``, else its tenant's in ``TENANTS``, else ``DEFAULT_PRIORITY``; an
``X-Priority`` header may lower it, never raise it. Its **weight** (``WEIGHT``, the
share of its tenant among the busy tenants of its class) comes the same way, default 1.
The front's fair queue (gateway/fair_queue.py) serves classes in order and tenants by
weight within a class; jobs carry their class's rank to the queue.

Read at configuration time without the gateway; :class:`Priorities` resolves requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..names import is_name

# RabbitMQ serves at most 255 priorities and advises few; a job's rank is one of these.
MAX_CLASSES = 8
MIN_WEIGHT, MAX_WEIGHT = 0.01, 1000.0
TENANT_PARTS = {"PRIORITY", "WEIGHT"}
# Standings a process remembers (tenants x classes asked), cleared past it.
MAX_MET = 4096


def check_weight(value: Any) -> str | None:
    """What is wrong with a WEIGHT (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not MIN_WEIGHT <= value <= MAX_WEIGHT:
        return f"WEIGHT must be a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, got {value!r}"
    return None


def check_class_names(value: list[Any]) -> str | None:
    """The PRIORITY_CLASSES setting's check: 1 to 8 distinct names, highest first."""
    if not 1 <= len(value) <= MAX_CLASSES:
        return f"must name 1 to {MAX_CLASSES} classes, highest first"
    if not all(isinstance(v, str) and is_name(v) for v in value) or len(set(value)) < len(value):
        return "must be distinct names (letters, digits, '_' or '-')"
    return None


def check_tenants(value: dict[str, Any]) -> str | None:
    """The TENANTS setting's check (its classes are checked against PRIORITY_CLASSES by
    :func:`check_priorities`)."""
    for tenant, spec in value.items():
        if not is_name(tenant):
            return f"tenant {tenant[:20]!r}: must be a customer id (a name)"
        if not isinstance(spec, dict) or set(spec) - TENANT_PARTS:
            return f"tenant {tenant}: must be an object of {sorted(TENANT_PARTS)}"
        if "WEIGHT" in spec and (problem := check_weight(spec["WEIGHT"])):
            return f"tenant {tenant}: {problem}"
    return None


def check_priorities(settings: dict[str, Any]) -> str | None:
    """The settings' classes agree: DEFAULT_PRIORITY, every tenant's PRIORITY and every
    JWT plan's are among PRIORITY_CLASSES."""
    classes = settings["PRIORITY_CLASSES"]
    if settings["DEFAULT_PRIORITY"] not in classes:
        return f"DEFAULT_PRIORITY {settings['DEFAULT_PRIORITY']!r} is not in PRIORITY_CLASSES"
    named = [(f"TENANTS.{tenant}", spec) for tenant, spec in settings["TENANTS"].items()]
    named += [(f"JWT_ISSUERS[{i}].PLANS.{plan}", spec)
              for i, issuer in enumerate(settings["JWT_ISSUERS"])
              for plan, spec in issuer.get("PLANS", {}).items()]
    for where, spec in named:
        if "PRIORITY" in spec and spec["PRIORITY"] not in classes:
            return f"{where}.PRIORITY {spec['PRIORITY']!r} is not in PRIORITY_CLASSES"
    return None


@dataclass(frozen=True)
class Standing:
    """Where a request stands: its class's rank (0 first), the class, its tenant and the
    tenant's weight."""

    rank: int
    name: str
    tenant: str
    weight: float


class Priorities:
    """Resolves a request's class and weight from its key, its tenant and X-Priority."""

    def __init__(self, classes: Iterable[str], default: str,
                 tenants: dict[str, dict[str, Any]] | None = None) -> None:
        self.classes = list(classes)
        self.rank = {name: i for i, name in enumerate(self.classes)}
        self.default = self.rank[default]
        self.tenants = tenants or {}
        # Standings met, by their arguments: every request of a busy front asks.
        self._met: dict[tuple[str, str | None, float | None, bytes | None], Standing] = {}

    def standing(self, tenant: str, key_priority: str | None = None,
                 key_weight: float | None = None, asked: bytes | None = None) -> Standing:
        """The standing of a request of ``tenant`` whose key says ``key_priority`` and
        ``key_weight`` (None: not set) and whose X-Priority header is ``asked``."""
        args = (tenant, key_priority, key_weight, asked)
        met = self._met.get(args)
        if met is None:
            if len(self._met) >= MAX_MET:
                self._met.clear()
            met = self._met[args] = self._resolve(*args)
        return met

    def _resolve(self, tenant: str, key_priority: str | None, key_weight: float | None,
                 asked: bytes | None) -> Standing:
        spec = self.tenants.get(tenant, {})
        rank = self.rank.get(key_priority or spec.get("PRIORITY", ""), self.default)
        if asked is not None:
            named = self.rank.get(asked.decode("latin-1").strip())
            if named is None:
                raise BadRequest(f"X-Priority must name a class of {self.classes}",
                                 PRIORITY_CLASSES=self.classes)
            rank = max(rank, named)  # only lower: a header is the caller's word
        weight = key_weight if key_weight is not None else float(spec.get("WEIGHT", 1.0))
        return Standing(rank, self.classes[rank], tenant, weight)
