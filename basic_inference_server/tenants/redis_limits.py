"""Rate limits in Redis: one Lua script takes tokens and slots atomically, exact across
every front process and gateway that names the same server; the clock is Redis's.

The request path reaches it through :class:`.resp.RespClient` (one pipelined
connection per front process) and :class:`.allot.Ahead` (tokens and slots taken a few
at a time while they are plentiful). A slot is a lease: a gateway killed mid-request
leaves one that lapses after ``LEASE`` seconds.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .allot import RESERVE, Held, Ticket
from .limits import LEASE, Plan, StoreDown
from .resp import RespClient, RespError, bulks

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


class RedisSource:
    """The :class:`.allot.Source` of the Redis store."""

    SCRIPT_SHA = hashlib.sha1(LUA.encode()).hexdigest()
    lease = LEASE

    def __init__(self, lean: RespClient, prefix: str) -> None:
        self.lean = lean
        self.prefix = prefix
        # Per plan shape and wants: the script's call encoded, before and after the name.
        self._commands: dict[Any, tuple[bytes, bytes]] = {}

    def _command(self, plan: Plan, ticket: Ticket, name: str) -> bytes:
        """The plan's EVALSHA, encoded. All of it but the slots' name is the same for
        every request of a key to an endpoint: that part is encoded once."""
        shape = (tuple(plan.buckets), plan.slots, tuple(ticket.wants), ticket.slot_want)
        parts = self._commands.get(shape)
        if parts is None:
            keys, argv = redis_args(plan, self.prefix, ticket.wants, ticket.slot_want, name,
                                    RESERVE)
            args = ("EVALSHA", self.SCRIPT_SHA, len(keys), *keys, *argv)
            at = 3 + len(keys) + 3  # the name's place (see redis_args)
            parts = (b"*%d\r\n" % len(args) + bulks(args[:at]), bulks(args[at + 1:]))
            if len(self._commands) >= 10000:
                self._commands.clear()
            self._commands[shape] = parts
        return parts[0] + bulks((name,)) + parts[1]

    async def grant(self, plan: Plan, ticket: Ticket, name: str) -> list[Any]:
        """Run the plan's script in Redis (see :class:`.allot.Source`)."""
        try:
            try:
                reply: list[Any] = await self.lean.call_encoded(
                    self._command(plan, ticket, name))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # The first call on this server (or after SCRIPT FLUSH): send the script.
                keys, argv = redis_args(plan, self.prefix, ticket.wants, ticket.slot_want,
                                        name, RESERVE)
                reply = await self.lean.call("EVAL", LUA, len(keys), *keys, *argv)
        except (RespError, OSError, TimeoutError) as exc:
            raise StoreDown(str(exc) or type(exc).__name__) from None
        return reply

    async def give_back(self, bucket: str, held: Held) -> None:
        """Return the tokens ``held`` to ``bucket``."""
        await self._send("EVAL", LUA_GIVE_BACK, 1, self.prefix + "bucket:" + bucket,
                         repr(held.rate), held.burst, held.tokens)

    async def drop_slots(self, slots: str, names: list[str]) -> None:
        """Give slots back (a command not waited for)."""
        await self._send("ZREM", self.prefix + slots, *names)

    async def _send(self, *args: Any) -> None:
        try:
            await self.lean.send(*args)
        except (RespError, OSError, TimeoutError) as exc:
            raise StoreDown(str(exc) or type(exc).__name__) from None
