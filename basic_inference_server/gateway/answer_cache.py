"""Repeated requests answered from memory: an endpoint's ``CACHE`` (opt-in).

An endpoint whose answers depend on the request body alone (an embedding, a classifier;
a generation at temperature 0) may set ``CACHE``: a whole 200 answer is kept, per front
process, under the digest of the caller's tenant, the route that answered (endpoint or
version) and the body's bytes, and the same request gets it again until ``TTL`` seconds
passed, without reaching the endpoint. Tenants never share an entry: the tenant is in
the key. A hit goes through the tenant's limits, quota and metering as any request,
its ``USAGE`` charged again.

Left out: streams (asked for, or answered), answers other than 200, requests with
``ASYNC``, and generations (a body with ``MESSAGES`` or ``PROMPT``) that do not ask
for ``TEMPERATURE`` 0. Each route's entries are bounded by ``MAX_ENTRIES`` and
``MAX_MB``, the least recently used going first. Written here (an ordered dict): an
answer is a few fields, and a library cache would add its own locking to an event
loop that has no threads. With ``CACHE_REDIS`` the entries and their bounds are in
Redis instead, shared by every front process and gateway (:mod:`.shared_answers`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from ..tenants.resp import RespClient, split_prefix
from ..wire.message import Request
from .shared_answers import SharedAnswers
from .upstream_conn import UpstreamResponse

CACHE_EVENTS = Counter("bis_answer_cache_total",
                       "Requests of endpoints with CACHE: hit (answered from the cache), miss, "
                       "skipped (not cacheable: a stream, a sampled generation ...), "
                       "error (CACHE_REDIS did not answer: the endpoint answered)",
                       ["endpoint", "outcome"])
GENERATIVE = (b'"MESSAGES"', b'"PROMPT"')
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson")


@dataclass(slots=True)
class Entry:
    """One kept answer."""

    expires: float
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def size(self) -> int:
        """Bytes it holds, roughly (the bound counts these)."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 64


class RouteCache:
    """The entries of one route, least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0

    def get(self, key: bytes, now: float) -> Entry | None:
        """The entry, unless expired (then dropped); now the most recently used."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._drop(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: Entry, max_entries: int, max_bytes: int) -> None:
        """Keep an entry; the least recently used go while over a bound."""
        if entry.size > max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        self.entries[key] = entry
        self.bytes += entry.size
        while len(self.entries) > max_entries or self.bytes > max_bytes:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: bytes) -> None:
        self.bytes -= self.entries.pop(key).size


class AnswerCache:
    """The caches of one front process, by route: in its memory, or in Redis."""

    def __init__(self, shared: SharedAnswers | None = None) -> None:
        self.routes: dict[str, RouteCache] = {}
        self.shared = shared

    @staticmethod
    def cacheable(req: Request, raw: bytes) -> bool:
        """Whether a request may be answered from the cache (see the module's docstring)."""
        if req.method != "POST" or b'"STREAM"' in raw or b'"ASYNC"' in raw:
            return False
        if any(h == b"accept" and any(t in v for t in STREAM_TYPES) for h, v in req.headers):
            return False
        if any(field in raw for field in GENERATIVE):
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return False
            return isinstance(body, dict) and body.get("TEMPERATURE") == 0
        return True

    @staticmethod
    def key(req: Request, target: str, raw: bytes) -> bytes:
        """The entry's name: tenant, route and body (a tenant never reads another's)."""
        tenant = req.key.tenant if req.key is not None else ""
        digest = hashlib.blake2b(raw, digest_size=20,
                                 person=b"bis-answer-cache")
        digest.update(b"\0" + tenant.encode() + b"\0" + target.encode())
        return digest.digest()

    async def get(self, target: str, key: bytes) -> UpstreamResponse | None:
        """The kept answer, as the endpoint gave it; None on a miss (shared_answers.CacheDown
        when Redis does not answer)."""
        if self.shared is not None:
            return await self.shared.get(target, key)
        cache = self.routes.get(target)
        entry = cache.get(key, time.monotonic()) if cache is not None else None
        if entry is None:
            return None
        return UpstreamResponse(entry.status, list(entry.headers), entry.body, worker="cache")

    async def put(self, target: str, key: bytes, resp: UpstreamResponse,
                  settings: dict[str, Any]) -> bool:
        """Keep a whole 200 answer (before its USAGE is taken out: a hit is charged too);
        False when Redis could not be reached."""
        if resp.status != 200 or resp.stream is not None:
            return True
        if self.shared is not None:
            return await self.shared.put(target, key, resp, float(settings["TTL"]),
                                         int(settings["MAX_ENTRIES"]),
                                         int(settings["MAX_MB"]) * 1024 * 1024)
        cache = self.routes.setdefault(target, RouteCache())
        cache.put(key, Entry(time.monotonic() + float(settings["TTL"]), resp.status,
                             list(resp.headers), resp.body),
                  int(settings["MAX_ENTRIES"]), int(settings["MAX_MB"]) * 1024 * 1024)
        return True


def answer_cache(redis_url: str | None) -> AnswerCache:
    """A front process's answer cache: in Redis when ``CACHE_REDIS`` names one (its
    ``?prefix=`` before the keys), else in the process's memory."""
    if redis_url is None:
        return AnswerCache()
    url, prefix = split_prefix(redis_url)
    return AnswerCache(SharedAnswers(RespClient(url), prefix + ":"))
