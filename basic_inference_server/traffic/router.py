"""Which version of an endpoint serves a request: weights, stickiness, open breakers.

A caller with a key (the sticky field's value, else its tenant) is hashed to a point
in [0, 1): versions own consecutive shares of that interval by weight, so one key
always lands on one version, and moving weight from one version to the next moves
only the callers in between (a canary growing from 5% to 25% keeps its first 5%). A
request without a key lands at random, by weight. A version that may not take
requests (its breaker is open) gives its share to the others.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..contracts import TrafficPolicy

Allowed = Callable[[str], bool]


def point(key: str | None) -> float:
    """Where a key falls in [0, 1): the same for the same key in every process."""
    if key is None:
        return random.random()
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def choose(policy: TrafficPolicy, key: str | None, allowed: Allowed | None = None) -> str:
    """The label of the version that serves a caller with ``key`` under ``policy``.

    ``allowed(target)`` says whether a version's route may take a request now; when
    none may, the choice ignores it (the caller then gets that version's refusal).
    """
    live = [(label, w) for label, w in policy.weights.items() if w > 0]
    if allowed is not None and len(live) > 1:
        open_ = [(label, w) for label, w in live if allowed(policy.versions[label])]
        live = open_ or live
    at = point(key) * sum(w for _, w in live)
    for label, weight in live:
        at -= weight
        if at < 0:
            return label
    return live[-1][0]
