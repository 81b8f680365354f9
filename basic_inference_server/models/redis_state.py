"""Model records in Redis, shared by every worker process, server and host using it.

Keys for a model ``name`` (after an optional prefix):

* ``model_info_{name}``: hash with ``path``, ``last_used``, ``ref_count``, ``hits``,
  ``loads``, ``size_bytes``: the record of the design;
* ``model_refs_{name}``: sorted set of references ``owner|id`` scored by the time their
  lease ends (milliseconds, Redis clock);
* ``model_copies_{name}`` (sorted set, owner -> lease end) and ``model_holders_{name}``
  (hash, owner -> JSON with host, pid, device, loaded_at): who holds a loaded copy;
* ``model_lock_{name}``: the lock taken around every change (``SET NX PX``: it always
  carries an expiry, so a holder that dies cannot keep it);
* ``models``: the set of names that have a record.

Each change is one Lua script (atomic: ``ref_count`` is recounted from the live
references, never incremented blindly) run under the model's lock. A background thread
renews this process's leases every third of the lease; an owner that stops renewing
(killed, frozen) loses its references and copies when the lease runs out, and the next
script to touch the model prunes them. Times come from the Redis server's clock, so
hosts with skewed clocks agree.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.exceptions import LockError

from ..errors import Unavailable
from .state import default_owner

log = logging.getLogger(__name__)

# Shared head of every script: KEYS = info, refs, copies, holders, index; ARGV[1] = name.
_PRELUDE = """
local info, refs, copies, holders, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function prune()
  redis.call('ZREMRANGEBYSCORE', refs, '-inf', now)
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', copies, '-inf', now)) do
    redis.call('HDEL', holders, gone)
  end
  redis.call('ZREMRANGEBYSCORE', copies, '-inf', now)
  local n = redis.call('ZCARD', refs)
  if n == 0 and redis.call('ZCARD', copies) == 0 then
    redis.call('DEL', info, holders)
    redis.call('SREM', index, ARGV[1])
    return -1
  end
  redis.call('HSET', info, 'ref_count', n)
  return n
end
local function stamp()
  redis.call('HSET', info, 'last_used', string.format('%.3f', now / 1000))
end
"""

# ARGV: name, owner|id, lease ms, path
_ACQUIRE = _PRELUDE + """
prune()
redis.call('ZADD', refs, now + tonumber(ARGV[3]), ARGV[2])
redis.call('HSET', info, 'path', ARGV[4])
redis.call('HINCRBY', info, 'hits', 1)
stamp()
redis.call('SADD', index, ARGV[1])
return prune()
"""

# ARGV: name, owner|id
_RELEASE = _PRELUDE + """
redis.call('ZREM', refs, ARGV[2])
return prune()
"""

# ARGV: name, owner, lease ms, path, size, holder JSON
_ADD_COPY = _PRELUDE + """
redis.call('ZADD', copies, now + tonumber(ARGV[3]), ARGV[2])
redis.call('HSET', holders, ARGV[2], ARGV[6])
redis.call('HSET', info, 'path', ARGV[4], 'size_bytes', ARGV[5])
redis.call('HINCRBY', info, 'loads', 1)
stamp()
redis.call('SADD', index, ARGV[1])
return prune()
"""

# ARGV: name, owner. Returns -2 when the owner still holds references.
_REMOVE_COPY = _PRELUDE + """
prune()
local mine = ARGV[2] .. '|'
for _, ref in ipairs(redis.call('ZRANGE', refs, 0, -1)) do
  if string.sub(ref, 1, #mine) == mine then return -2 end
end
redis.call('ZREM', copies, ARGV[2])
redis.call('HDEL', holders, ARGV[2])
return prune()
"""

# ARGV: name, owner, lease ms, refs to renew... (XX: an expired one is not revived)
_RENEW = _PRELUDE + """
local until_ = now + tonumber(ARGV[3])
redis.call('ZADD', copies, 'XX', until_, ARGV[2])
for i = 4, #ARGV do redis.call('ZADD', refs, 'XX', until_, ARGV[i]) end
return prune()
"""

# ARGV: name. The record, or nil when there is none.
_RECORD = _PRELUDE + """
if prune() == -1 then return nil end
return {redis.call('HGETALL', info), redis.call('HGETALL', holders)}
"""


class RedisState:
    """:class:`~basic_inference_server.models.state.ModelState` shared through Redis."""

    def __init__(self, url: str, *, owner: str | None = None, lease: float = 30.0,
                 lock_timeout: float = 5.0, prefix: str = "", client: redis.Redis | None = None) -> None:
        self.owner = owner or default_owner()
        self.lease_ms = max(1, int(lease * 1000))
        self.lock_timeout = lock_timeout
        self.prefix = prefix
        self.redis = client or redis.Redis.from_url(url, socket_timeout=10)
        self._scripts = {name: self.redis.register_script(src) for name, src in (
            ("acquire", _ACQUIRE), ("release", _RELEASE), ("add_copy", _ADD_COPY),
            ("remove_copy", _REMOVE_COPY), ("renew", _RENEW), ("record", _RECORD))}
        self._ids = itertools.count(1)
        self._mine: dict[str, set[str]] = {}  # model -> refs this process holds
        self._copies: set[str] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, name="bis-model-leases", daemon=True)
        self._renewer.start()

    # -- keys, lock and scripts --------------------------------------------------------
    def _keys(self, name: str) -> list[str]:
        p = self.prefix
        return [f"{p}model_info_{name}", f"{p}model_refs_{name}", f"{p}model_copies_{name}",
                f"{p}model_holders_{name}", f"{p}models"]

    def lock_key(self, name: str) -> str:
        """The Redis key of model ``name``'s load lock."""
        return f"{self.prefix}model_lock_{name}"

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """The model's lock, with expiry; waits up to twice its timeout to get it."""
        lock = self.redis.lock(self.lock_key(name), timeout=self.lock_timeout,
                               blocking_timeout=2 * self.lock_timeout, sleep=0.002)
        if not lock.acquire():
            raise TimeoutError(f"model {name}: lock {self.lock_key(name)} not acquired "
                               f"within {2 * self.lock_timeout:g} s")
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:
                # Expired before we were done (the change itself is one atomic script).
                log.warning("model %s: lock expired before release", name)

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, TimeoutError) as exc:
            # A request cannot be served without its model records: come back later (503).
            raise Unavailable(f"model state unavailable ({type(exc).__name__}: {exc})",
                              retry_after=1) from exc

    def _run(self, script: str, name: str, *args: Any) -> Any:
        with self._reachable(), self.lock(name):
            return self._scripts[script](keys=self._keys(name), args=[name, *args])

    # -- ModelState --------------------------------------------------------------------
    def acquire(self, name: str, path: str) -> str:
        """Hold model ``name``; returns the reference that releases it."""
        ref = f"{self.owner}|{next(self._ids)}"
        with self._guard:
            self._mine.setdefault(name, set()).add(ref)
        try:
            self._run("acquire", name, ref, self.lease_ms, path)
        except BaseException:
            with self._guard:
                self._mine[name].discard(ref)
            raise
        return ref

    def release(self, name: str, ref: str) -> None:
        """Let go of the hold ``ref`` on model ``name``."""
        with self._guard:
            self._mine.get(name, set()).discard(ref)
        self._run("release", name, ref)

    def add_copy(self, name: str, path: str, size_bytes: int, device: str) -> None:
        """Record that this process holds a loaded copy of model ``name``."""
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "device": device,
                             "loaded_at": time.time()})
        with self._guard:
            self._copies.add(name)
        self._run("add_copy", name, self.owner, self.lease_ms, path, size_bytes, holder)

    def remove_copy(self, name: str) -> bool:
        """Forget this process's copy of ``name``; False while a request holds it."""
        if self._run("remove_copy", name, self.owner) == -2:
            return False
        with self._guard:
            self._copies.discard(name)
        return True

    def size_hint(self, name: str) -> int | None:
        """The model's last recorded size in bytes (None: never loaded)."""
        with self._reachable():
            value = self.redis.hget(self._keys(name)[0], "size_bytes")
        return int(value) if value is not None else None

    def record(self, name: str) -> dict[str, Any] | None:
        """One model's record, expired references and copies pruned first."""
        raw = self._run("record", name)
        if raw is None:
            return None
        fields = _pairs(raw[0])
        copies = [{"owner": owner, **json.loads(details)}
                  for owner, details in _pairs(raw[1]).items()]
        size = fields.get("size_bytes")
        return {"path": fields.get("path", ""), "last_used": float(fields.get("last_used", 0)),
                "ref_count": int(fields.get("ref_count", 0)), "hits": int(fields.get("hits", 0)),
                "loads": int(fields.get("loads", 0)),
                "size_bytes": int(size) if size is not None else None,
                "copies": sorted(copies, key=lambda c: c["owner"])}

    def usage(self) -> dict[str, dict[str, Any]]:
        """Every model's record: holds, copies, sizes."""
        with self._reachable():
            members: set[bytes] = self.redis.smembers(self._keys("")[4])  # type: ignore[assignment]
        names = sorted(n.decode() for n in members)
        out = {}
        for name in names:
            rec = self.record(name)
            if rec is not None:
                out[name] = rec
        return out

    # -- leases ------------------------------------------------------------------------
    def renew(self) -> None:
        """Extend the lease of every reference and copy this process holds."""
        with self._guard:
            work = {name: sorted(refs) for name, refs in self._mine.items() if refs}
            for name in self._copies:
                work.setdefault(name, [])
        for name, refs in work.items():
            self._run("renew", name, self.owner, self.lease_ms, *refs)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            try:
                self.renew()
            except Unavailable as exc:
                log.warning("model leases not renewed: %s", exc)

    def close(self) -> None:
        """Stop renewing leases and close the connection."""
        self._stop.set()
        self._renewer.join(timeout=5)
        self.redis.close()


def _pairs(flat: list[bytes]) -> dict[str, str]:
    items = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))
