"""Redis backend: a stream per endpoint with one consumer group, retries in a sorted set,
a dead-letter stream; results in a hash per job with a TTL.

Keys (``prefix`` from the URL's ``?prefix=``, default ``bis``):

* ``<prefix>:jobs:<endpoint>``    stream of waiting and claimed jobs of rank 0 (and of
  jobs of before priority classes); ``<prefix>:jobs:<endpoint>:<rank>`` those of ranks
  1 to 7; group ``workers`` on each
* ``<prefix>:delayed:<endpoint>`` sorted set of jobs waiting for a retry, by due time
* ``<prefix>:dead:<endpoint>``    stream of dead letters, each with its last error
* ``<prefix>:job:<id>``           hash: the job's record (expires ``JOB_TTL`` after it ends)
* ``<prefix>:pending:<endpoint>`` sorted set of unfinished job ids by submission time
* ``<prefix>:events:<id>``        list: the job's events, ``<name> <json>`` (id: index + 1)
* ``<prefix>:entries:<endpoint>`` hash: job id -> the stream entry that holds it (its id,
  then its rank unless 0)

A claim is one script that looks at the streams in rank order (0 first): in each, an
entry idle in the group's pending list for longer than the visibility timeout (its
consumer died) is taken over with XAUTOCLAIM, else the next new entry is read. A
claimed entry stays in the pending list until acked. When every stream is empty the
claim blocks on XREAD after each stream's newest entry, then runs the script again (so
every waiting consumer wakes on a new job, and one of them gets it).
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
    MAX_RANKS,
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

# The entries hash's value for a job's stream entry: its id, then its rank unless 0 (an
# entry of rank 0 reads as it did before priority classes).
_ENTRY = """
local function entry(mid, rank)
  if tonumber(rank) == 0 then return mid end
  return mid .. ' ' .. rank
end
"""
# KEYS: the job's stream, delayed set, entries hash, every rank's stream. ARGV: depth
# limit, job, job id, rank.
_ENQUEUE = _ENTRY + """
local limit = tonumber(ARGV[1])
if limit >= 0 then
  local depth = redis.call('ZCARD', KEYS[2])
  for i = 4, #KEYS do depth = depth + redis.call('XLEN', KEYS[i]) end
  if depth >= limit then return 0 end
end
redis.call('HSET', KEYS[3], ARGV[3], entry(redis.call('XADD', KEYS[1], '*', 'job', ARGV[2]), ARGV[4]))
return 1
"""
# KEYS: the job's stream, entries hash. ARGV: job, job id, rank.
_ADD = _ENTRY + """
redis.call('HSET', KEYS[2], ARGV[2], entry(redis.call('XADD', KEYS[1], '*', 'job', ARGV[1]), ARGV[3]))
"""
# KEYS: delayed set, entries hash, every rank's stream (rank 0 first). ARGV: now. A job
# goes back to its rank's stream; one whose rank cannot be read (undecodable) to rank 0.
_PROMOTE = _ENTRY + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, payload in ipairs(due) do
  local ok, job = pcall(cjson.decode, payload)
  if not ok or type(job) ~= 'table' then job = {} end
  local rank = job.rank
  if type(rank) ~= 'number' or rank % 1 ~= 0 or rank < 0 or rank > #KEYS - 3 then rank = 0 end
  local mid = redis.call('XADD', KEYS[3 + rank], '*', 'job', payload)
  if type(job.id) == 'string' then redis.call('HSET', KEYS[2], job.id, entry(mid, rank)) end
  redis.call('ZREM', KEYS[1], payload)
end
return #due
"""
# KEYS: entries hash, dead stream, every rank's stream (rank 0 first). ARGV: job id, the
# dead letter's error, group. 1 when the job was waiting in its stream, unclaimed, and
# is a dead letter now. (No group yet: no consumer ever read the stream, so nothing in
# it is held.)
_CANCEL = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local mid, rank = string.match(value, '^(%S+) (%d+)$')
if not mid then mid, rank = value, 0 end
local stream = KEYS[3 + tonumber(rank)]
local held = redis.pcall('XPENDING', stream, ARGV[3], mid, mid, 1)
if type(held) == 'table' and held.err == nil and #held > 0 then return 0 end
local entry = redis.call('XRANGE', stream, mid, mid)
redis.call('HDEL', KEYS[1], ARGV[1])
if #entry == 0 then return 0 end
local fields = entry[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'job' then
    redis.call('XDEL', stream, mid)
    redis.call('XADD', KEYS[2], '*', 'job', fields[i + 1], 'error', ARGV[2])
    return 1
  end
end
return 0
"""
# KEYS: every rank's stream (rank 0 first). ARGV: group, consumer, visibility timeout
# (ms). The next job of the best rank that has one: {rank + 1, entry id, fields, times
# delivered}, an entry whose consumer went silent for longer than the timeout before a
# new one. None: {0, the newest entry id of each stream}, to wait for what comes after.
_TAKE = """
local newest = {}
for i, stream in ipairs(KEYS) do
  local stale = redis.call('XAUTOCLAIM', stream, ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', 1)
  for _, entry in ipairs(stale[2]) do
    if type(entry[2]) == 'table' then  -- (an entry deleted meanwhile has no fields)
      local held = redis.call('XPENDING', stream, ARGV[1], entry[1], entry[1], 1)
      return {i, entry[1], entry[2], held[1][4]}
    end
  end
  local new = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', stream, '>')
  if new then
    local entry = new[1][2][1]
    return {i, entry[1], entry[2], 1}
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  newest[i] = last[1] and last[1][1] or '0-0'
end
return {0, newest}
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
        self._take = self.r.register_script(_TAKE)
        self._groups: set[str] = set()

    def _keys(self, endpoint: str) -> tuple[str, str, str]:
        """Rank 0's stream, the delayed set and the dead-letter stream of ``endpoint``."""
        p = self.prefix
        return f"{p}:jobs:{endpoint}", f"{p}:delayed:{endpoint}", f"{p}:dead:{endpoint}"

    def _streams(self, endpoint: str) -> list[str]:
        """The endpoint's stream of each rank, rank 0 first."""
        first = self._keys(endpoint)[0]
        return [first] + [f"{first}:{rank}" for rank in range(1, MAX_RANKS)]

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
        streams = self._streams(job.endpoint)
        _stream, delayed, _dead = self._keys(job.endpoint)
        limit = -1 if max_depth is None else max_depth
        return bool(self._enqueue(
            keys=[streams[job.queue_rank], delayed, self._entries(job.endpoint), *streams],
            args=[limit, job.encode(), job.id, job.queue_rank]))

    def cancel_waiting(self, job_id: str, endpoint: str) -> bool:
        """Cancel a waiting (not claimed) job: move it to the dead letters; False where it cannot."""
        _stream, _delayed, dead = self._keys(endpoint)
        return bool(self._cancel(keys=[self._entries(endpoint), dead, *self._streams(endpoint)],
                                 args=[job_id, CANCELLED_ERROR, GROUP]))

    def stored_bytes(self, endpoint: str) -> int:
        """Bytes the endpoint's waiting and running jobs take in the queue (``MAX_QUEUE_BYTES``)."""
        # Redis's own estimate (sampled): cheap on a stream of any length.
        _stream, delayed, _dead = self._keys(endpoint)
        pipe = self.r.pipeline(transaction=False)
        for key in (*self._streams(endpoint), delayed):
            pipe.memory_usage(key)
        return sum(int(size or 0) for size in pipe.execute())

    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, rank 0 first, waiting up to ``wait`` seconds."""
        streams = self._streams(endpoint)
        _stream, delayed, _dead = self._keys(endpoint)
        for stream in streams:
            self._ensure_group(stream)
        self._promote(keys=[delayed, self._entries(endpoint), *streams], args=[time.time()])
        try:
            return self._claim(endpoint, streams, consumer, wait, visibility_timeout)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream was deleted: create them again next time.
            self._groups.difference_update(streams)
            return None

    def _claim(self, endpoint: str, streams: list[str], consumer: str, wait: float,
               visibility: float) -> Claim | None:
        deadline = time.monotonic() + wait
        while True:
            got = self._take(keys=streams, args=[GROUP, consumer, int(visibility * 1000)])
            if got[0]:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Wake on any entry newer than the newest the script saw, then look again in
            # rank order (another consumer may take it first).
            self.r.xread(dict(zip(streams, got[1], strict=True)), count=1,
                         block=max(1, int(remaining * 1000)))
        rank, mid, fields, deliveries = got
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        job = Job.decode_or_stand_in(values.get(b"job", b""), endpoint, _text(mid))
        job.attempts += int(deliveries)
        return Claim(job=job, receipt=(streams[rank - 1], mid))

    def _settle(self, claim: Claim, *also: tuple[str, str, Any]) -> None:
        """Ack and delete the claimed entry, doing ``also`` in the same transaction."""
        stream, mid = claim.receipt
        entries = self._entries(claim.job.endpoint)
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(entries, claim.job.id)
        for op, key, arg in also:
            if op == "add":  # back in the stream, found by its id again
                self._add(keys=[key, entries], args=[arg, claim.job.id, claim.job.queue_rank],
                          client=pipe)
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
        self._settle(claim, ("add", self._streams(job.endpoint)[job.queue_rank], job.encode()))

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
        """Jobs accepted and not finished, of every rank."""
        _stream, delayed, _dead = self._keys(endpoint)
        pipe = self.r.pipeline(transaction=False)
        for stream in self._streams(endpoint):
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
        _stream, _delayed, dead = self._keys(endpoint)
        streams = self._streams(endpoint)
        ids = []
        for mid, fields in self.r.xrange(dead):
            job = self._dead_job(endpoint, mid, fields)
            if job_id is not None and job.id != job_id:
                continue
            job.attempts = 0
            pipe = self.r.pipeline(transaction=True)
            self._add(keys=[streams[job.queue_rank], self._entries(endpoint)],
                      args=[job.encode(), job.id, job.queue_rank], client=pipe)
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
