"""Redis backend: a stream per endpoint with one consumer group, retries in a sorted set,
a dead-letter stream; results in a hash per job with a TTL.

Keys (``prefix`` from the URL's ``?prefix=``, default ``bis``):

* ``<prefix>:jobs:<endpoint>``    stream of waiting and claimed jobs; group ``workers``
* ``<prefix>:delayed:<endpoint>`` sorted set of jobs waiting for a retry, by due time
* ``<prefix>:dead:<endpoint>``    stream of dead letters, each with its last error
* ``<prefix>:job:<id>``           hash: the job's record (expires ``JOB_TTL`` after it ends)
* ``<prefix>:pending:<endpoint>`` sorted set of unfinished job ids by submission time
* ``<prefix>:events:<id>``        list: the job's events, ``<name> <json>`` (id: index + 1)
* ``<prefix>:entries:<endpoint>`` hash: job id -> the stream entry that holds it

A claimed entry stays in the group's pending list until acked; an entry idle there for
longer than the visibility timeout (its consumer died) is taken over with XAUTOCLAIM.
Every move between keys is one transaction, so a job is always in exactly one place.
The ``entries`` hash lets a cancel take a waiting job out of the stream by its id (an
entry no consumer holds: ``XDEL``, then into the dead letters); a job waiting for a
retry stays in the sorted set, and its consumer dead-letters it when it comes up.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import orjson
import redis

from .base import (
    CANCELLED_ERROR,
    EVENT_ENDS,
    MAX_EVENTS,
    QUEUED,
    TERMINAL,
    Claim,
    Job,
    JobQueue,
    ResultStore,
    record_of,
    url_options,
)

GROUP = "workers"
# Longer than any blocking read (the consumer waits at most a few seconds per claim).
SOCKET_TIMEOUT = 30.0

# KEYS: stream, delayed set, entries hash. ARGV: depth limit, job, job id.
_ENQUEUE = """
local limit = tonumber(ARGV[1])
if limit >= 0 and redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= limit then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[3], redis.call('XADD', KEYS[1], '*', 'job', ARGV[2]))
return 1
"""
# KEYS: stream, entries hash. ARGV: job, job id.
_ADD = """
redis.call('HSET', KEYS[2], ARGV[2], redis.call('XADD', KEYS[1], '*', 'job', ARGV[1]))
"""
# KEYS: delayed set, stream, entries hash. ARGV: now.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, payload in ipairs(due) do
  local mid = redis.call('XADD', KEYS[2], '*', 'job', payload)
  local ok, job = pcall(cjson.decode, payload)
  if ok and type(job) == 'table' and type(job.id) == 'string' then
    redis.call('HSET', KEYS[3], job.id, mid)
  end
  redis.call('ZREM', KEYS[1], payload)
end
return #due
"""
# KEYS: stream, entries hash, dead stream. ARGV: job id, the dead letter's error, group.
# 1 when the job was waiting in the stream, unclaimed, and is a dead letter now. (No
# group yet: no consumer ever read the stream, so nothing in it is held.)
_CANCEL = """
local mid = redis.call('HGET', KEYS[2], ARGV[1])
if not mid then return 0 end
local held = redis.pcall('XPENDING', KEYS[1], ARGV[3], mid, mid, 1)
if type(held) == 'table' and held.err == nil and #held > 0 then return 0 end
local entry = redis.call('XRANGE', KEYS[1], mid, mid)
redis.call('HDEL', KEYS[2], ARGV[1])
if #entry == 0 then return 0 end
local fields = entry[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'job' then
    redis.call('XDEL', KEYS[1], mid)
    redis.call('XADD', KEYS[3], '*', 'job', fields[i + 1], 'error', ARGV[2])
    return 1
  end
end
return 0
"""
# KEYS: record hash, pending set. ARGV: new status (JSON or ''), ttl or '', job id,
# pending op ('add' / 'rem' / ''), the status the record must have (JSON or ''), field,
# value, field, value ...
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local status = redis.call('HGET', KEYS[1], 'STATUS')
if ARGV[1] ~= '' and ARGV[1] ~= status and (status == '"done"' or status == '"cancelled"') then
  return 0
end
if ARGV[5] ~= '' and ARGV[5] ~= status then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[2] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[2]) else redis.call('PERSIST', KEYS[1]) end
if ARGV[4] == 'rem' then redis.call('ZREM', KEYS[2], ARGV[3]) end
if ARGV[4] == 'add' then
  redis.call('ZADD', KEYS[2], cjson.decode(redis.call('HGET', KEYS[1], 'SUBMITTED_AT')), ARGV[3])
end
return 1
"""

# KEYS: the events list. ARGV: name, data (JSON), MAX_EVENTS, ttl, the names that end.
_ADD_EVENT = """
local n = redis.call('LLEN', KEYS[1])
local function ends(name)
  for i = 5, #ARGV do if name == ARGV[i] then return true end end
  return false
end
if n > 0 and ends(string.match(redis.call('LINDEX', KEYS[1], -1), '^(%S+)')) then return 0 end
if not ends(ARGV[1]) and n >= tonumber(ARGV[3]) - 1 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1] .. ' ' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return n + 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str) -> tuple[Any, str]:
    """A client for the URL and the key prefix its ``?prefix=`` names.

    Typed ``Any``: redis-py's reply types are unions of every protocol version's shape.
    """
    base, options = url_options(url)
    prefix = options.pop("prefix", "bis")
    # The other options are redis-py's own: TLS ones of a rediss:// URL (ssl_ca_certs,
    # ssl_certfile, ssl_keyfile, ssl_cert_reqs ...).
    if options:
        base += "?" + urlencode(options)
    client = redis.Redis.from_url(base, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5,
                                  health_check_interval=30)
    return client, prefix


class RedisQueue(JobQueue):
    """Redis Streams queue; see the module docstring for the keys."""

    def __init__(self, url: str) -> None:
        self.r, self.prefix = connect(url)
        self._enqueue = self.r.register_script(_ENQUEUE)
        self._add = self.r.register_script(_ADD)
        self._promote = self.r.register_script(_PROMOTE)
        self._cancel = self.r.register_script(_CANCEL)
        self._groups: set[str] = set()

    def _keys(self, endpoint: str) -> tuple[str, str, str]:
        p = self.prefix
        return f"{p}:jobs:{endpoint}", f"{p}:delayed:{endpoint}", f"{p}:dead:{endpoint}"

    def _entries(self, endpoint: str) -> str:
        return f"{self.prefix}:entries:{endpoint}"

    def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    def enqueue(self, job: Job, max_depth: int | None = None) -> bool:
        """Add a job."""
        stream, delayed, _dead = self._keys(job.endpoint)
        limit = -1 if max_depth is None else max_depth
        return bool(self._enqueue(keys=[stream, delayed, self._entries(job.endpoint)],
                                  args=[limit, job.encode(), job.id]))

    def cancel_waiting(self, job_id: str, endpoint: str) -> bool:
        """Cancel a waiting (not claimed) job: move it to the dead letters; False where it cannot."""
        stream, _delayed, dead = self._keys(endpoint)
        return bool(self._cancel(keys=[stream, self._entries(endpoint), dead],
                                 args=[job_id, CANCELLED_ERROR, GROUP]))

    def stored_bytes(self, endpoint: str) -> int:
        """Bytes the endpoint's waiting and running jobs take in the queue (``MAX_QUEUE_BYTES``)."""
        # Redis's own estimate (sampled): cheap on a stream of any length.
        stream, delayed, _dead = self._keys(endpoint)
        return sum(int(self.r.memory_usage(key) or 0) for key in (stream, delayed))

    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, waiting up to ``wait`` seconds."""
        stream, delayed, _dead = self._keys(endpoint)
        self._ensure_group(stream)
        self._promote(keys=[delayed, stream, self._entries(endpoint)], args=[time.time()])
        try:
            return self._claim(endpoint, stream, consumer, wait, visibility_timeout)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(stream)  # the stream was deleted: create it again next time
            return None

    def _claim(self, endpoint: str, stream: str, consumer: str, wait: float,
               visibility: float) -> Claim | None:
        # First, jobs whose consumer went silent for longer than the visibility timeout.
        reply = self.r.xautoclaim(stream, GROUP, consumer, min_idle_time=int(visibility * 1000),
                                  start_id="0-0", count=1)
        taken = [(mid, fields) for mid, fields in reply[1] if fields]
        if taken:
            mid, fields = taken[0]
            pending = self.r.xpending_range(stream, GROUP, min=mid, max=mid, count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
        else:
            block = {"block": max(1, int(wait * 1000))} if wait > 0 else {}
            got = self.r.xreadgroup(GROUP, consumer, {stream: ">"}, count=1, **block)
            if not got or not got[0][1]:
                return None
            mid, fields = got[0][1][0]
            deliveries = 1
        job = Job.decode_or_stand_in(fields.get(b"job", b""), endpoint, _text(mid))
        job.attempts += deliveries
        return Claim(job=job, receipt=(stream, mid))

    def _settle(self, claim: Claim, *also: tuple[str, str, Any]) -> None:
        """Ack and delete the claimed entry, doing ``also`` in the same transaction."""
        stream, mid = claim.receipt
        entries = self._entries(claim.job.endpoint)
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(entries, claim.job.id)
        for op, key, arg in also:
            if op == "add":  # back in the stream, found by its id again
                self._add(keys=[key, entries], args=[arg, claim.job.id], client=pipe)
            elif op == "xadd":
                pipe.xadd(key, {"job": arg})
            else:
                pipe.zadd(key, arg)
        pipe.xack(stream, GROUP, mid)
        pipe.xdel(stream, mid)
        pipe.execute()

    def ack(self, claim: Claim) -> None:
        """The job finished (its result is stored)."""
        self._settle(claim)

    def release(self, claim: Claim) -> None:
        """Give back a job that was not started."""
        job = replace(claim.job, attempts=claim.job.attempts - 1)
        self._settle(claim, ("add", claim.receipt[0], job.encode()))

    def retry_later(self, claim: Claim, delay: float, error: str) -> None:
        """The attempt failed: make the job claimable again after ``delay`` seconds."""
        job = replace(claim.job, last_error=error)
        _stream, delayed, _dead = self._keys(job.endpoint)
        self._settle(claim, ("zadd", delayed, {job.encode(): time.time() + delay}))

    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move the job to the endpoint's dead-letter queue with its last error."""
        job = replace(claim.job, last_error=error)
        _stream, _delayed, dead = self._keys(job.endpoint)
        self._settle(claim, ("xadd", dead, job.encode()))

    def depth(self, endpoint: str) -> int:
        """Jobs accepted and not finished."""
        stream, delayed, _dead = self._keys(endpoint)
        pipe = self.r.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.zcard(delayed)
        return int(sum(pipe.execute()))

    @staticmethod
    def _dead_job(endpoint: str, mid: bytes, fields: dict[bytes, bytes]) -> Job:
        """A dead letter's job; a cancel's entry carries its error beside the job."""
        job = Job.decode_or_stand_in(fields.get(b"job", b""), endpoint, _text(mid))
        if b"error" in fields:
            job.last_error = _text(fields[b"error"])
        return job

    def dead_letters(self, endpoint: str, limit: int = 100) -> list[Job]:
        """Jobs in the dead-letter queue, oldest first, with ``last_error``."""
        _stream, _delayed, dead = self._keys(endpoint)
        return [self._dead_job(endpoint, mid, fields)
                for mid, fields in self.r.xrange(dead, count=limit)]

    def requeue_dead(self, endpoint: str, job_id: str | None = None) -> list[str]:
        """Put dead jobs (one, or all when ``job_id`` is None) back in the queue with their attempts reset."""
        stream, _delayed, dead = self._keys(endpoint)
        ids = []
        for mid, fields in self.r.xrange(dead):
            job = self._dead_job(endpoint, mid, fields)
            if job_id is not None and job.id != job_id:
                continue
            job.attempts = 0
            pipe = self.r.pipeline(transaction=True)
            self._add(keys=[stream, self._entries(endpoint)], args=[job.encode(), job.id],
                      client=pipe)
            pipe.xdel(dead, mid)
            pipe.execute()
            ids.append(job.id)
        return ids

    def close(self) -> None:
        """Release this thread's connections."""
        self.r.close()


# Makes a job's record unless one exists. KEYS: the record, the endpoint's pending set.
# ARGV: the job id, its submission time, then the record's fields and values.
CREATE_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return 1
"""


class RedisResults(ResultStore):
    """Job records as hashes (each field JSON-encoded), expiring ``ttl`` after they end."""

    def __init__(self, url: str) -> None:
        self.r, self.prefix = connect(url)
        self._update = self.r.register_script(_UPDATE)
        self._add_event = self.r.register_script(_ADD_EVENT)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def _pending(self, endpoint: str) -> str:
        return f"{self.prefix}:pending:{endpoint}"

    def create(self, job: Job) -> None:
        """Record a job as queued (before it is enqueued)."""
        record = {k: orjson.dumps(v) for k, v in record_of(job).items()}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._key(job.id), mapping=record)
        pipe.zadd(self._pending(job.endpoint), {job.id: job.submitted_at})
        pipe.execute()

    def create_once(self, job: Job) -> bool:
        """Record a job as queued unless its id has a record: a script, so that the
        check and the write are one step."""
        record = {k: orjson.dumps(v) for k, v in record_of(job).items()}
        args: list[str | bytes] = [job.id, str(job.submitted_at)]
        for name, value in record.items():
            args += [name, value]
        return bool(self.r.eval(CREATE_ONCE, 2, self._key(job.id), self._pending(job.endpoint),
                                *args))

    def update(self, job_id: str, fields: dict[str, Any], ttl: float | None = None,
               only_if: str | None = None) -> bool:
        """Merge ``fields`` into the record."""
        status = fields.get("STATUS")
        op = "" if status is None else "rem" if status in TERMINAL else "add" if status == QUEUED else ""
        endpoint = self.r.hget(self._key(job_id), "SIGNATURE")
        if endpoint is None:
            return False
        pairs: list[Any] = []
        for key, value in fields.items():
            pairs += [key, orjson.dumps(value)]
        return bool(self._update(
            keys=[self._key(job_id), self._pending(orjson.loads(endpoint))],
            args=[orjson.dumps(status) if status is not None else "",
                  max(1, int(ttl)) if ttl is not None else "", job_id, op,
                  orjson.dumps(only_if) if only_if is not None else "", *pairs]))

    def add_event(self, job_id: str, name: str, data: dict[str, Any], ttl: float) -> int:
        """Store the job's next event."""
        return int(self._add_event(keys=[self._events(job_id)],
                                   args=[name, orjson.dumps(data), MAX_EVENTS,
                                         max(1, int(ttl)), *EVENT_ENDS]))

    def events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Up to ``limit`` of the job's events after id ``after``."""
        out = []
        for seq, raw in enumerate(self.r.lrange(self._events(job_id), after, after + limit - 1),
                                  start=after + 1):
            name, _, data = _text(raw).partition(" ")
            out.append((seq, name, orjson.loads(data)))
        return out

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None when unknown or expired."""
        raw = self.r.hgetall(self._key(job_id))
        if not raw:
            return None
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    def delete(self, job_id: str) -> None:
        """Forget a record (a submission that was refused)."""
        endpoint = self.r.hget(self._key(job_id), "SIGNATURE")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._key(job_id), self._events(job_id))
        if endpoint is not None:
            pipe.zrem(self._pending(orjson.loads(endpoint)), job_id)
        pipe.execute()

    def oldest_pending(self, endpoint: str) -> float | None:
        """Submission time of the oldest job of ``endpoint`` not finished yet."""
        first = self.r.zrange(self._pending(endpoint), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def close(self) -> None:
        """Release this thread's connections."""
        self.r.close()
