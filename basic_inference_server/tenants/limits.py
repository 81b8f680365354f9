"""Rate limits: token buckets and a concurrency cap, taken all at once or not at all.

A request of a key takes one token from the key's bucket and one from its bucket for
the endpoint, and one of its ``MAX_CONCURRENT`` slots, in one atomic step: a Lua
script in Redis (exact across gateways; the clock is Redis's, so gateways' clocks may
differ), or one step under a lock in memory shared by the front processes of one
gateway (:mod:`.shared`). Nothing is read and then written back in two steps.

In Redis a slot is a lease: a gateway killed mid-request leaves one that lapses after
``LEASE`` seconds instead of holding the key's capacity forever. A front process takes
tokens and slots from Redis a few at a time while they are plentiful (:mod:`.allot`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field

from ..errors import ServingError

LEASE = 3600.0


class RateLimited(ServingError):
    """A key's rate limit, endpoint rate limit or concurrency cap is reached."""

    status = 429
    kind = "rate_limited"

    def __init__(self, message: str, decision: Decision, **details: object) -> None:
        super().__init__(message, retry_after=decision.retry_after, **details)
        self.decision = decision

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), *self.decision.headers()]


@dataclass
class Plan:
    """What one request takes: ``buckets`` as (id, rate, burst); a slot when ``slots``."""

    buckets: list[tuple[str, float, int]]
    slots: tuple[str, int] | None = None  # (id, MAX_CONCURRENT)
    token: str = ""  # names the slot's lease in Redis


@dataclass
class Decision:
    """The outcome, and the IETF draft's ``RateLimit-*`` numbers of the tightest bucket."""

    allowed: bool
    refused_by: int = 0  # 1-based index of the bucket that refused; len(buckets)+1: the slots
    limit: int = 0
    remaining: int = 0
    reset: float = 0.0
    retry_after: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> list[tuple[str, str]]:
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


# KEYS: the buckets, then the slot set. ARGV: number of buckets, MAX_CONCURRENT (0: none),
# lease, a name for the slots granted, RESERVE, slots wanted (0: none), then rate, burst
# and tokens wanted (0: none) of each bucket. A grant is 1, and up to the number wanted
# while the bucket (the free slots) hold RESERVE times it (see .allot). Returns: refused
# (0: allowed; 1-based index of the bucket, n+1: the slots), slots granted (named
# <name>:1..), slots free, then per bucket its tokens before this call (as text: Lua
# numbers come back truncated) and the tokens granted.
LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local reserve = tonumber(ARGV[5])
local out = {0, 0, 0}
local levels = {}
for i = 1, n do
  local rate = tonumber(ARGV[4 + 3 * i])
  local burst = tonumber(ARGV[5 + 3 * i])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(s[1]) or burst
  local ts = tonumber(s[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  out[2 + 2 * i] = tostring(tokens)
  out[3 + 2 * i] = 0
  if tonumber(ARGV[6 + 3 * i]) > 0 and tokens < 1 and out[1] == 0 then out[1] = i end
end
if out[1] ~= 0 then return out end
local want = tonumber(ARGV[6])
if want > 0 then
  local slots = KEYS[n + 1]
  local lease = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local free = tonumber(ARGV[2]) - redis.call('ZCARD', slots)
  out[3] = free
  if free < 1 then
    out[1] = n + 1
    return out
  end
  local grant = math.max(1, math.min(want, math.floor(free / reserve)))
  for j = 1, grant do
    redis.call('ZADD', slots, now + lease, ARGV[4] .. ':' .. j)
  end
  redis.call('EXPIRE', slots, math.ceil(lease))
  out[2] = grant
end
for i = 1, n do
  local want = tonumber(ARGV[6 + 3 * i])
  if want > 0 then
    local rate = tonumber(ARGV[4 + 3 * i])
    local burst = tonumber(ARGV[5 + 3 * i])
    local grant = math.max(1, math.min(want, math.floor(levels[i] / reserve)))
    redis.call('HSET', KEYS[i], 'tokens', levels[i] - grant, 'ts', now)
    redis.call('EXPIRE', KEYS[i], math.ceil(burst / rate) + 1)
    out[3 + 2 * i] = grant
  end
end
return out
"""

# Gives back tokens taken ahead and not used. KEYS: the bucket. ARGV: rate, burst, tokens.
LUA_GIVE_BACK = """
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
if not s[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = math.min(burst, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
redis.call('HSET', KEYS[1], 'tokens', math.min(burst, tokens + tonumber(ARGV[3])), 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return 1
"""

# Slot names: unique per gateway (random), process and call, and cheap to make.
_TOKEN_BASE = os.urandom(6).hex()
_tokens = itertools.count()


def slot_token() -> str:
    """A name for the slots one call takes (its leases in Redis)."""
    return f"{_TOKEN_BASE}:{os.getpid()}:{next(_tokens)}"


def redis_args(plan: Plan, prefix: str, wants: list[int], slot_want: int, name: str,
               reserve: int) -> tuple[list[str], list[str]]:
    """The script's KEYS and ARGV (see :data:`LUA`)."""
    keys = [prefix + "bucket:" + b[0] for b in plan.buckets]
    keys.append(prefix + (plan.slots[0] if plan.slots else "-"))
    argv = [str(len(plan.buckets)), str(plan.slots[1] if plan.slots else 0), str(LEASE), name,
            str(reserve), str(slot_want)]
    for (_id, rate, burst), want in zip(plan.buckets, wants, strict=True):
        argv += [repr(rate), str(burst), str(want)]
    return keys, argv
