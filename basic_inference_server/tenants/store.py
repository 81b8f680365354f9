"""Where keys and rate-limit state live: SQLite in the cache folder, or Redis.

Both stores offer the same calls. The admin API's (create, list, revoke, rotate) are
blocking: they run in the front's thread pool. The request path's (``find``,
``stamp``, ``spent``, ``charge``, ``meter``) are coroutines: Redis through
:mod:`.resp`, SQLite in the pool, so the event loop never waits on either. Rate limits
are each store's ``limits`` (:class:`.allot.Ahead`): memory shared by the front
processes for SQLite, a Lua script for Redis. ``redis-py`` (the ``redis``
extra) is imported only when a Redis store is used.

``stamp`` changes whenever a key does: the front caches keys in memory and drops its
cache when the stamp moves (a file replaced for SQLite, a counter for Redis).

Quota counters are per key lineage (:mod:`.keys`) and period. ``reserve`` takes an
amount only while the quota has room for it, in one store operation (a conditional
UPSERT in SQLite, a Lua script in Redis): concurrent requests never pass a requests
quota. ``charge`` adds to a counter whatever it holds (units after a request, or a
negative amount: a reservation given back).

``charge_now`` and ``meter_now`` are the blocking forms of ``charge`` and ``meter``:
the job consumer of an endpoint worker charges the jobs it runs with them (see
:mod:`.ledger`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..privfiles import create_private, write_private
from .allot import Ahead
from .keys import ApiKey
from .limits import StoreDown
from .metering import COLUMNS, Row
from .redis_limits import RedisSource
from .resp import RespClient, RespError, split_prefix
from .shared import SharedLimits

if TYPE_CHECKING:
    import redis

OffLoop = Callable[..., Awaitable[Any]]


__all__ = ["KeyStore", "OffLoop", "StoreDown", "open_store"]


class KeyStore(Protocol):
    """Where API keys, quota counters and metering live: SQLite or Redis."""

    limits: Ahead | None  # the request path's rate limits (None: a store that only charges)

    def claim_row(self, row: int) -> None:
        """In a new front process: take row ``row`` of the shared limits."""

    def add(self, key: ApiKey) -> None:
        """Store a new key."""

    def get(self, key_id: str) -> ApiKey | None:
        """The key of id ``key_id``, or None."""

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant``), oldest first."""

    def save(self, key: ApiKey) -> None:
        """Store a changed key (revoked, rotated)."""

    async def find(self, digest: str) -> ApiKey | None:
        """The key whose secret hashes to ``digest``, or None."""

    async def stamp(self) -> Any:
        """What changes whenever a key does: cached keys are read again when it does."""

    async def spent(self, lineage: str, period: str) -> float:
        """Units the keys of ``lineage`` (a key and its rotations) spent in ``period``."""

    async def reserve(self, lineage: str, period: str, amount: float,
                      limit: float) -> tuple[bool, float]:
        """Take ``amount`` while the quota keeps under ``limit``: (taken, spent now)."""

    async def charge(self, lineage: str, period: str, amount: float) -> None:
        """Add ``amount`` to what the keys of ``lineage`` spent in ``period``."""

    async def meter(self, rows: list[Row]) -> None:
        """Add the metering ``rows`` (per tenant, endpoint and day)."""

    def metered(self, day: str) -> list[dict[str, Any]]:
        """The metering of ``day``, per tenant and endpoint."""

    def charge_now(self, lineage: str, period: str, amount: float) -> None:
        """:meth:`charge`, from a thread that may block."""

    def spent_now(self, counters: list[tuple[str, str]]) -> list[float]:
        """What each ``(lineage, period)`` spent, from a thread that may block (one round
        trip on Redis)."""

    def meter_now(self, rows: list[Row]) -> None:
        """:meth:`meter`, from a thread that may block."""


class SqliteStore:
    """Keys in ``tenants.db`` (0600) under the cache folder; limits in shared memory
    (``limits`` None: a store that only charges, for a job consumer)."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL,
                                     tenant TEXT NOT NULL, record TEXT NOT NULL);
    -- usage.key_id: the key's lineage (the id of the first key of its rotation chain).
    CREATE TABLE IF NOT EXISTS usage (key_id TEXT NOT NULL, period TEXT NOT NULL,
                                      spent REAL NOT NULL, PRIMARY KEY (key_id, period));
    CREATE TABLE IF NOT EXISTS metering (tenant TEXT NOT NULL, endpoint TEXT NOT NULL,
                                         day TEXT NOT NULL, requests REAL, errors REAL,
                                         units REAL, latency_s REAL,
                                         PRIMARY KEY (tenant, endpoint, day));
    """

    def __init__(self, path: str | Path, off_loop: OffLoop | None,
                 limits: SharedLimits | None) -> None:
        self.path = str(path)
        self.stamp_path = self.path + ".stamp"
        self.off_loop = off_loop
        self.shared = limits
        self.limits = Ahead(limits) if limits is not None else None
        self._local = threading.local()

    def claim_row(self, row: int) -> None:
        if self.shared is not None:
            self.shared.claim_row(row)

    async def _pooled(self, func: Callable[..., Any], *args: Any) -> Any:
        assert self.off_loop is not None
        return await self.off_loop(func, *args)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            create_private(self.path)
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(self.SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _changed(self) -> None:
        write_private(self.stamp_path, repr(time.time()))

    def add(self, key: ApiKey) -> None:
        self.conn().execute("INSERT INTO keys VALUES (?, ?, ?, ?)",
                            (key.id, key.hash, key.tenant, json.dumps(key.to_dict())))
        self._changed()

    def save(self, key: ApiKey) -> None:
        self.conn().execute("UPDATE keys SET record = ? WHERE id = ?",
                            (json.dumps(key.to_dict()), key.id))
        self._changed()

    def get(self, key_id: str) -> ApiKey | None:
        row = self.conn().execute("SELECT record FROM keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else ApiKey.from_dict(json.loads(row[0]))

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        rows = self.conn().execute(
            "SELECT record FROM keys WHERE ? IS NULL OR tenant = ? ORDER BY rowid",
            (tenant, tenant)).fetchall()
        return [ApiKey.from_dict(json.loads(r[0])) for r in rows]

    def _find(self, digest: str) -> ApiKey | None:
        row = self.conn().execute("SELECT record FROM keys WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else ApiKey.from_dict(json.loads(row[0]))

    async def find(self, digest: str) -> ApiKey | None:
        found: ApiKey | None = await self._pooled(self._find, digest)
        return found

    async def stamp(self) -> Any:
        try:
            info = os.stat(self.stamp_path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns)

    def _spent(self, lineage: str, period: str) -> float:
        row = self.conn().execute("SELECT spent FROM usage WHERE key_id = ? AND period = ?",
                                  (lineage, period)).fetchone()
        return float(row[0]) if row else 0.0

    async def spent(self, lineage: str, period: str) -> float:
        found: float = await self._pooled(self._spent, lineage, period)
        return found

    def spent_now(self, counters: list[tuple[str, str]]) -> list[float]:
        return [self._spent(lineage, period) for lineage, period in counters]

    def _reserve(self, lineage: str, period: str, amount: float,
                 limit: float) -> tuple[bool, float]:
        # One statement: it adds only while the quota has room, atomically across the
        # front processes (the WHERE of the SELECT also keeps the UPSERT unambiguous).
        rows = self.conn().execute(
            "INSERT INTO usage SELECT ?, ?, ? WHERE ? <= ? ON CONFLICT (key_id, period) "
            "DO UPDATE SET spent = spent + excluded.spent WHERE spent + excluded.spent <= ? "
            "RETURNING spent", (lineage, period, amount, amount, limit, limit)).fetchall()
        return (True, float(rows[0][0])) if rows else (False, self._spent(lineage, period))

    async def reserve(self, lineage: str, period: str, amount: float,
                      limit: float) -> tuple[bool, float]:
        found: tuple[bool, float] = await self._pooled(self._reserve, lineage, period, amount,
                                                       limit)
        return found

    def charge_now(self, lineage: str, period: str, amount: float) -> None:
        # One statement: atomic across the front processes.
        self.conn().execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (key_id, period) "
                            "DO UPDATE SET spent = spent + excluded.spent",
                            (lineage, period, amount))

    async def charge(self, lineage: str, period: str, amount: float) -> None:
        await self._pooled(self.charge_now, lineage, period, amount)

    def meter_now(self, rows: list[Row]) -> None:
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO metering VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, endpoint, day) DO UPDATE SET "
                "requests = requests + excluded.requests, errors = errors + excluded.errors, "
                "units = units + excluded.units, latency_s = latency_s + excluded.latency_s",
                rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def meter(self, rows: list[Row]) -> None:
        await self._pooled(self.meter_now, rows)

    def metered(self, day: str) -> list[dict[str, Any]]:
        cursor = self.conn().execute(
            "SELECT tenant, endpoint, day, requests, errors, units, latency_s FROM metering "
            "WHERE day = ? ORDER BY tenant, endpoint", (day,))
        return [dict(zip(("tenant", "endpoint", "day", *COLUMNS), r, strict=True))
                for r in cursor]


# Takes an amount from a quota counter only while it has room. KEYS: the counter (a
# hash per lineage). ARGV: the period (its field), the amount, the quota. Returns: 1 if
# taken (else 0), and what the counter holds after (as text: Lua numbers come back
# truncated).
LUA_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if spent + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {0, tostring(spent)} end
return {1, redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])}
"""
LUA_RESERVE_SHA = hashlib.sha1(LUA_RESERVE.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Keys and buckets in Redis, shared by every gateway that names the same server.

    The request path's calls go through :class:`.resp.RespClient` (one pipelined
    connection per front process), its limits through :class:`.redis_limits.RedisSource`
    (tokens and slots taken ahead); the admin API's and the job ledger's through
    ``redis-py``.
    """

    def __init__(self, url: str, prefix: str = "bis:tenants:") -> None:
        self.url = url
        self.prefix = prefix
        self._sync: redis.Redis | None = None
        self.lean = RespClient(url, timeout=2, connect_timeout=1)
        self.limits: Ahead | None = Ahead(RedisSource(self.lean, prefix))

    def claim_row(self, row: int) -> None:
        """Nothing per process: slots are leases in Redis."""

    def client(self) -> redis.Redis:
        import redis

        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)
        return self._sync

    def _call(self, func: Callable[[], Any]) -> Any:
        import redis

        try:
            return func()
        except redis.RedisError as exc:
            raise StoreDown(str(exc)) from None

    async def _acall(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except (RespError, OSError, asyncio.TimeoutError) as exc:
            raise StoreDown(str(exc) or type(exc).__name__) from None

    def add(self, key: ApiKey) -> None:
        def add() -> None:
            pipe = self.client().pipeline()
            pipe.set(self.prefix + "key:" + key.hash, json.dumps(key.to_dict()))
            pipe.hset(self.prefix + "ids", key.id, key.hash)
            pipe.incr(self.prefix + "stamp")
            pipe.execute()
        self._call(add)

    save = add

    def get(self, key_id: str) -> ApiKey | None:
        def get() -> ApiKey | None:
            digest = self.client().hget(self.prefix + "ids", key_id)
            raw = self.client().get(self.prefix + "key:" + _text(digest)) if digest else None
            return ApiKey.from_dict(json.loads(raw)) if raw else None  # type: ignore[arg-type]
        found: ApiKey | None = self._call(get)
        return found

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        def keys() -> list[ApiKey]:
            digests = self.client().hvals(self.prefix + "ids")  # type: ignore[misc]
            raws = self.client().mget([self.prefix + "key:" + _text(d) for d in digests]) \
                if digests else []
            found = [ApiKey.from_dict(json.loads(r)) for r in raws if r]  # type: ignore[union-attr]
            return sorted((k for k in found if tenant is None or k.tenant == tenant),
                          key=lambda k: k.created)
        listed: list[ApiKey] = self._call(keys)
        return listed

    async def find(self, digest: str) -> ApiKey | None:
        raw = await self._acall(self.lean.call("GET", self.prefix + "key:" + digest))
        return ApiKey.from_dict(json.loads(raw)) if raw else None

    async def stamp(self) -> Any:
        return await self._acall(self.lean.call("GET", self.prefix + "stamp"))

    async def spent(self, lineage: str, period: str) -> float:
        found = await self._acall(self.lean.call("HGET", self.prefix + "usage:" + lineage,
                                                 period))
        return float(found) if found else 0.0

    def spent_now(self, counters: list[tuple[str, str]]) -> list[float]:
        def read() -> list[Any]:
            pipe = self.client().pipeline(transaction=False)
            for lineage, period in counters:
                pipe.hget(self.prefix + "usage:" + lineage, period)
            return list(pipe.execute())
        return [float(found) if found else 0.0 for found in self._call(read)]

    async def reserve(self, lineage: str, period: str, amount: float,
                      limit: float) -> tuple[bool, float]:
        taken, spent = await self._acall(self.lean.script(
            LUA_RESERVE, LUA_RESERVE_SHA, [self.prefix + "usage:" + lineage],
            [period, repr(amount), repr(limit)]))
        return bool(taken), float(spent)

    async def charge(self, lineage: str, period: str, amount: float) -> None:
        await self._acall(self.lean.call("HINCRBYFLOAT", self.prefix + "usage:" + lineage,
                                         period, repr(amount)))

    def charge_now(self, lineage: str, period: str, amount: float) -> None:
        self._call(lambda: self.client().hincrbyfloat(self.prefix + "usage:" + lineage, period,
                                                      amount))

    def _metering(self, rows: list[Row]) -> list[tuple[Any, ...]]:
        """The commands writing ``rows``."""
        out: list[tuple[Any, ...]] = []
        for tenant, endpoint, day, *counts in rows:
            for column, value in zip(COLUMNS, counts, strict=True):
                out.append(("HINCRBYFLOAT", self.prefix + "meter:" + day,
                            f"{tenant}\t{endpoint}\t{column}", repr(value)))
            out.append(("EXPIRE", self.prefix + "meter:" + day, 400 * 86400))
        return out

    async def meter(self, rows: list[Row]) -> None:
        await self._acall(self.lean.calls(("MULTI",), *self._metering(rows), ("EXEC",)))

    def meter_now(self, rows: list[Row]) -> None:
        def write() -> None:
            pipe = self.client().pipeline(transaction=True)
            for command in self._metering(rows):
                pipe.execute_command(*command)
            pipe.execute()
        self._call(write)

    def metered(self, day: str) -> list[dict[str, Any]]:
        raw = self._call(lambda: self.client().hgetall(self.prefix + "meter:" + day))
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for field_name, value in raw.items():
            tenant, endpoint, column = _text(field_name).split("\t")
            row = rows.setdefault((tenant, endpoint), {"tenant": tenant, "endpoint": endpoint,
                                                       "day": day, **dict.fromkeys(COLUMNS, 0.0)})
            row[column] = float(value)
        return [rows[k] for k in sorted(rows)]


def open_store(redis_url: str | None, db_path: str, off_loop: OffLoop | None = None,
               rows: int = 0) -> KeyStore:
    """Redis when a URL is set (``?prefix=`` names its keys), else SQLite at ``db_path``
    with its limits in memory shared by ``rows`` front processes (0: no limits: a store
    that only charges, for a job consumer)."""
    if redis_url:
        url, prefix = split_prefix(redis_url)
        return RedisStore(url, prefix + ":tenants:")
    # Made before the front forks: the shared memory is every front process's.
    return SqliteStore(db_path, off_loop, SharedLimits(rows) if rows else None)
