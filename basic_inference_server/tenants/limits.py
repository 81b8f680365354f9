"""Rate limits: token buckets and a concurrency cap, taken all at once or not at all.

A request of a key takes one token from the key's bucket and one from its bucket for
the endpoint, and one of its ``MAX_CONCURRENT`` slots, in one atomic step: a Lua
script in Redis (exact across gateways; the clock is Redis's, so gateways' clocks may
differ; :mod:`.redis_limits`), or one step under a lock in memory shared by the front
processes of one gateway (:mod:`.shared`). Nothing is read and then written back in
two steps. Both grant the same way, and a front process takes tokens and slots a few
at a time while they are plentiful (:mod:`.allot`).

In Redis a slot is a lease: a gateway killed mid-request leaves one that lapses after
``LEASE`` seconds instead of holding the key's capacity forever.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

from ..errors import TooManyRequests

LEASE = 3600.0


class StoreDown(Exception):
    """The store did not answer (Redis unreachable)."""


class RateLimited(TooManyRequests):
    """A key's rate limit, endpoint rate limit or concurrency cap is reached."""

    def __init__(self, message: str, decision: Decision, **details: object) -> None:
        super().__init__(message, retry_after=decision.retry_after, **details)
        self.decision = decision

    def headers(self) -> list[tuple[str, str]]:
        """With the ``RateLimit-*`` headers."""
        return [*super().headers(), *self.decision.headers()]


@dataclass(slots=True)
class Plan:
    """What one request takes: ``buckets`` as (id, rate, burst); a slot when ``slots``."""

    buckets: list[tuple[str, float, int]]
    slots: tuple[str, int] | None = None  # (id, MAX_CONCURRENT)
    token: str = ""  # names the slot (its lease in Redis)
    local: bool = False  # taken from the gateway's own memory while Redis was down


@dataclass(slots=True)
class Decision:
    """The outcome, and the IETF draft's ``RateLimit-*`` numbers of the tightest bucket."""

    allowed: bool
    refused_by: int = 0  # 1-based index of the bucket that refused; len(buckets)+1: the slots
    limit: int = 0
    remaining: int = 0
    reset: float = 0.0
    retry_after: float = 0.0

    def headers(self) -> list[tuple[str, str]]:
        """The ``RateLimit-*`` headers (none without a limit)."""
        if not self.limit:
            return []
        return [("RateLimit-Limit", str(self.limit)), ("RateLimit-Remaining", str(self.remaining)),
                ("RateLimit-Reset", str(max(0, math.ceil(self.reset))))]


def decide(levels: list[tuple[float, float, int]], refused: int, retry: float) -> Decision:
    """The decision from each bucket's (tokens before, rate, burst)."""
    if not levels:
        return Decision(refused == 0, refused, retry_after=retry)
    if refused and refused <= len(levels):
        tokens, rate, burst = levels[refused - 1]
        return Decision(False, refused, burst, 0, (burst - tokens) / rate, (1 - tokens) / rate)
    # Allowed (or refused by the slots): report the bucket with the fewest tokens left.
    tokens, rate, burst = min(levels, key=lambda lv: lv[0])
    left = tokens - (0 if refused else 1)
    return Decision(refused == 0, refused, burst, max(0, math.floor(left)),
                    (burst - left) / rate, retry)


# Slot names: unique per gateway (random), process and call, and cheap to make.
_TOKEN_BASE = os.urandom(6).hex()
_tokens = itertools.count()


def slot_token() -> str:
    """A name for the slots one call takes (its leases in Redis)."""
    return f"{_TOKEN_BASE}:{os.getpid()}:{next(_tokens)}"
