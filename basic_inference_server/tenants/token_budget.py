"""Token budgets: a key's token rate limit and token quota, reserved at admission.

A generation's tokens are known only once it ran, so a request is admitted against a
**reservation**, an upper bound of what it can use: its prompt bounded from its size
(:func:`prompt_bound`), plus its ``max_tokens`` (or the endpoint's default). The
reservation is taken, all or nothing, in one atomic store step (a Lua script in Redis,
shared by every gateway naming it; a transaction in SQLite, shared by the front
processes of one gateway):

- from the key's **token bucket** (``TOKEN_RATE``, ``TOKEN_BURST``): the tokens reserved
  stay spent (a bucket limits what is admitted: in any window of ``T`` seconds at most
  ``TOKEN_BURST + T * TOKEN_RATE`` tokens are reserved);
- from its **TOKENS quota** of the day or month: settled once the answer says what it
  used (``usage``), the unused part given back; a stream cut before its end keeps its
  whole reservation.

So a key never spends past its budget. Admission happens in the front, on the OpenAI
routes (gateway/openai_front.py), where the request is read anyway and before any
endpoint work; a key with a token budget is for those routes: its ``/run`` and
``/jobs`` calls are refused (403), as their tokens could not be bounded beforehand.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, TooManyRequests
from .keys import ApiKey
from .limits import StoreDown
from .quotas import Counter, unavailable
from .store import KeyStore, RedisStore, SqliteStore
from .usage import exceeded, period

# What a chat template adds to each message (role markers) and to the whole prompt (a
# default system message, the assistant's header): generous for the templates known.
PER_MESSAGE = 16
PER_PROMPT = 96

# Takes a cost from a token bucket only when it holds it. KEYS: the bucket. ARGV: rate
# (a second), burst, cost. Returns 1 if taken (else 0), and the tokens left (as text).
LUA_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1]) or burst
local ts = tonumber(s[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < cost then return {0, tostring(tokens)} end
redis.call('HSET', KEYS[1], 'tokens', tokens - cost, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {1, tostring(tokens - cost)}
"""
LUA_TAKE_SHA = hashlib.sha1(LUA_TAKE.encode()).hexdigest()
SQLITE_TABLE = ("CREATE TABLE IF NOT EXISTS token_buckets (name TEXT PRIMARY KEY, "
                "tokens REAL NOT NULL, ts REAL NOT NULL)")


class TokensLimited(TooManyRequests):
    """The key's token bucket does not hold the request's reservation now."""

    kind = "token_rate_limited"


def prompt_bound(texts: list[str], messages: int) -> int:
    """At most how many tokens a prompt of these texts takes: a tokenizer's token is at
    least one byte of UTF-8 (byte-level BPE, SentencePiece with byte fallback), plus what
    a chat template adds."""
    return sum(len(t.encode()) for t in texts) + PER_MESSAGE * messages + PER_PROMPT


@dataclass(slots=True)
class TokenHold:
    """What one request reserved."""

    amount: int
    counter: Counter | None  # the TOKENS quota's, when the key has one
    settled: bool = False


class TokenBudget:
    """The token budgets of one front process's requests."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    async def reserve(self, key: ApiKey, amount: int) -> TokenHold:
        """Take ``amount`` tokens from the key's quota and bucket, or neither: 429
        (``Retry-After``) when one does not hold them now; 400 when the bucket never can."""
        bucket = key.token_limit
        if bucket is not None and amount > bucket.burst:
            raise BadRequest(f"this request may use {amount} tokens (its prompt's bound and "
                             f"max_tokens), more than this key's TOKEN_BURST of {bucket.burst}: "
                             "ask for fewer max_tokens", TOKENS=amount, TOKEN_BURST=bucket.burst)
        counter = None
        quota = key.quota
        if quota is not None and quota.unit == "tokens":
            now = time.time()
            counter = (key.lineage, period(quota.per, now)[0])
            taken, spent = await self._call(self.store.reserve(*counter, amount, quota.amount))
            if not taken:
                raise exceeded(quota, spent, now)
        if bucket is not None:
            taken, left = await self._take(key.lineage + ":tokens", bucket.rate, bucket.burst,
                                           amount)
            if not taken:
                if counter is not None:
                    await self._call(self.store.charge(*counter, -amount))
                wait = (amount - left) / bucket.rate
                raise TokensLimited(f"this API key's token bucket holds {math.floor(left)} of "
                                    f"the {amount} tokens this request may use; retry after "
                                    f"{max(1, math.ceil(wait))} s", retry_after=max(1.0, wait),
                                    TOKENS=amount)
        return TokenHold(amount, counter)

    async def settle(self, hold: TokenHold, used: int | None) -> None:
        """The request ended having used ``used`` tokens (None: unknown, the whole
        reservation stays spent): the quota gets back what it did not use."""
        if hold.settled:
            return
        hold.settled = True
        if hold.counter is not None and used is not None and used < hold.amount:
            try:
                await self.store.charge(*hold.counter, float(used - hold.amount))
            except StoreDown:
                pass  # the reservation stays spent: never over the budget

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except StoreDown as exc:
            raise unavailable(exc) from None

    async def _take(self, name: str, rate: float, burst: int, cost: int) -> tuple[bool, float]:
        store = self.store
        if isinstance(store, RedisStore):
            taken, left = await self._call(store.lean.script(
                LUA_TAKE, LUA_TAKE_SHA, [store.prefix + "tokens:" + name],
                [repr(rate), str(burst), str(cost)]))
            return bool(taken), float(left)
        assert isinstance(store, SqliteStore)
        found: tuple[bool, float] = await store._pooled(_take_sqlite, store.conn, name, rate,
                                                        burst, cost)
        return found


def _take_sqlite(conn_of: Any, name: str, rate: float, burst: int, cost: int) -> tuple[bool, float]:
    """:data:`LUA_TAKE` in one SQLite transaction (the front processes share the file)."""
    conn: sqlite3.Connection = conn_of()
    conn.execute(SQLITE_TABLE)
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        row = conn.execute("SELECT tokens, ts FROM token_buckets WHERE name = ?",
                           (name,)).fetchone()
        tokens = float(burst) if row is None else min(burst, row[0] + max(0.0, now - row[1]) * rate)
        taken = tokens >= cost
        if taken:
            tokens -= cost
            conn.execute("INSERT INTO token_buckets VALUES (?, ?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET tokens = excluded.tokens, ts = excluded.ts",
                         (name, tokens, now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return taken, tokens
