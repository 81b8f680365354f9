"""The embedded backend: queue and results in one SQLite file under ``_cache/``.

Safe for several processes on one box: WAL journal (readers never block the writer),
every change in a ``BEGIN IMMEDIATE`` transaction (one writer at a time, waiting on the
busy timeout instead of failing), one connection per thread. A claimed job is hidden
for the visibility timeout; if its consumer dies without acking, it shows again. As
every consumer is on this box, a job whose consumer process is gone (its claim names
the host and pid) shows again at once: a crash does not wait for the timeout. Claims
take the lowest rank first (priority classes), in order of visibility within a rank.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from ..privfiles import create_private
from ..procutil import pid_alive
from .base import (
    CANCELLED_ERROR,
    EVENT_ENDS,
    QUEUED,
    RUNNING,
    TERMINAL,
    Claim,
    Job,
    JobQueue,
    ResultStore,
    may_add_event,
    merge_record,
    record_of,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    token TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    rank INTEGER NOT NULL DEFAULT 0
);
-- The claim's index before priority classes, replaced by jobs_ranked.
DROP INDEX IF EXISTS jobs_next;
CREATE INDEX IF NOT EXISTS jobs_ranked ON jobs (endpoint, dead, rank, visible_at);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    record BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS results_pending ON results (endpoint, status, submitted_at);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_expiry ON events (expires_at);
"""
_NEXT_JOB = ("SELECT id, payload, attempts, last_error FROM jobs "
             "WHERE endpoint = ? AND dead = 0 AND visible_at <= ? ORDER BY rank, visible_at LIMIT 1")
# How often a waiting claim looks at the table again (it doubles up to the cap).
POLL_FIRST, POLL_CAP = 0.005, 0.1
# How often a consumer looks for jobs held by dead processes of this box.
ORPHAN_SWEEP_EVERY = 1.0
HOST = socket.gethostname()


def _claimer_is_dead(token: str) -> bool:
    """True when the claim was made by a process of this host that no longer exists.

    Tokens of consumers named ``host:pid`` (as the job consumer names itself) are
    ``host:pid:<random>``; other names never match.
    """
    host, _, rest = token.partition(":")
    pid = rest.split(":", 1)[0]
    return host == HOST and pid.isdigit() and not pid_alive(int(pid))


class SqliteDB:
    """One SQLite file, one connection per thread, the schema created on first use."""

    def __init__(self, path: str | Path, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Job bodies and results are private: the file is 0600 (SQLite gives its -wal
        # and -shm files the same mode) and is never opened through a symlink.
        create_private(self.path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._add_rank()
        self.conn().executescript(SCHEMA)

    def _add_rank(self) -> None:
        """Give a jobs table made before priority classes its rank column (its jobs rank 0)."""
        with self.write() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if columns and "rank" not in columns:
                conn.execute("ALTER TABLE jobs ADD COLUMN rank INTEGER NOT NULL DEFAULT 0")

    def conn(self) -> sqlite3.Connection:
        """This thread's connection to the database (opened on first use, in WAL mode)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL still survives a process crash; only a power cut may
            # lose the last transactions.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: taken at once (BEGIN IMMEDIATE), committed or rolled back."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class SqliteQueue(JobQueue):
    """Queue of every endpoint in the ``jobs`` table; dead letters stay there, flagged."""

    def __init__(self, db: SqliteDB) -> None:
        self.db = db
        self._next_sweep: dict[str, float] = {}

    def enqueue(self, job: Job, max_depth: int | None = None) -> bool:
        """Add a job."""
        with self.db.write() as conn:
            if max_depth is not None and self._depth(conn, job.endpoint) >= max_depth:
                return False
            conn.execute("INSERT INTO jobs (id, endpoint, payload, attempts, visible_at, rank) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (job.id, job.endpoint, job.encode(), job.attempts, job.submitted_at,
                          job.queue_rank))
        return True

    def _recover_orphans(self, endpoint: str) -> None:
        """Make the jobs held by dead processes of this box claimable now (once a second)."""
        now = time.monotonic()
        if now < self._next_sweep.get(endpoint, 0.0):
            return
        self._next_sweep[endpoint] = now + ORPHAN_SWEEP_EVERY
        held = self.db.conn().execute(
            "SELECT id, token FROM jobs WHERE endpoint = ? AND dead = 0 AND token IS NOT NULL",
            (endpoint,)).fetchall()
        orphans = [(job_id, token) for job_id, token in held if _claimer_is_dead(token)]
        if orphans:
            with self.db.write() as conn:
                conn.executemany("UPDATE jobs SET visible_at = ?, token = NULL "
                                 "WHERE id = ? AND token = ?",
                                 [(time.time(), job_id, token) for job_id, token in orphans])

    def _claim_once(self, endpoint: str, consumer: str,
                    visibility_timeout: float) -> Claim | None:
        now = time.time()
        # Idle workers poll: look first without the write lock (WAL readers never wait),
        # so polling does not hold up submits.
        if self.db.conn().execute(_NEXT_JOB, (endpoint, now)).fetchone() is None:
            return None
        token = f"{consumer}:{uuid.uuid4().hex}"
        with self.db.write() as conn:
            row = conn.execute(_NEXT_JOB, (endpoint, now)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET attempts = attempts + 1, visible_at = ?, token = ? "
                         "WHERE id = ?", (now + visibility_timeout, token, row[0]))
        job = Job.decode_or_stand_in(row[1], endpoint, row[0])
        job.attempts, job.last_error = row[2] + 1, row[3]
        return Claim(job=job, receipt=token)

    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, waiting up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        pause = POLL_FIRST
        while True:
            self._recover_orphans(endpoint)
            claim = self._claim_once(endpoint, consumer, visibility_timeout)
            if claim is not None or time.monotonic() >= deadline:
                return claim
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(POLL_CAP, pause * 2)

    def cancel_waiting(self, job_id: str, endpoint: str) -> bool:
        """Cancel a waiting (not claimed) job: move it to the dead letters; False where it cannot."""
        with self.db.write() as conn:
            cursor = conn.execute("UPDATE jobs SET dead = 1, last_error = ? "
                                  "WHERE id = ? AND dead = 0 AND token IS NULL",
                                  (CANCELLED_ERROR, job_id))
        return cursor.rowcount > 0

    def ack(self, claim: Claim) -> None:
        """The job finished (its result is stored)."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (claim.job.id,))

    def release(self, claim: Claim) -> None:
        """Give back a job that was not started."""
        with self.db.write() as conn:
            conn.execute("UPDATE jobs SET attempts = attempts - 1, visible_at = ?, token = NULL "
                         "WHERE id = ? AND token = ?", (time.time(), claim.job.id, claim.receipt))

    def retry_later(self, claim: Claim, delay: float, error: str) -> None:
        """The attempt failed: make the job claimable again after ``delay`` seconds."""
        with self.db.write() as conn:
            conn.execute("UPDATE jobs SET visible_at = ?, token = NULL, last_error = ? "
                         "WHERE id = ? AND token = ?",
                         (time.time() + delay, error, claim.job.id, claim.receipt))

    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move the job to the endpoint's dead-letter queue with its last error."""
        with self.db.write() as conn:
            conn.execute("UPDATE jobs SET dead = 1, token = NULL, last_error = ? WHERE id = ?",
                         (error, claim.job.id))

    @staticmethod
    def _depth(conn: sqlite3.Connection, endpoint: str) -> int:
        row = conn.execute("SELECT COUNT(*) FROM jobs WHERE endpoint = ? AND dead = 0",
                           (endpoint,)).fetchone()
        return int(row[0])

    def depth(self, endpoint: str) -> int:
        """Jobs accepted and not finished."""
        return self._depth(self.db.conn(), endpoint)

    def stored_bytes(self, endpoint: str) -> int:
        """Bytes the endpoint's waiting and running jobs take in the queue (``MAX_QUEUE_BYTES``)."""
        row = self.db.conn().execute(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM jobs WHERE endpoint = ? AND dead = 0",
            (endpoint,)).fetchone()
        return int(row[0])

    def dead_letters(self, endpoint: str, limit: int = 100) -> list[Job]:
        """Jobs in the dead-letter queue, oldest first, with ``last_error``."""
        rows = self.db.conn().execute(
            "SELECT id, payload, attempts, last_error FROM jobs WHERE endpoint = ? AND dead = 1 "
            "ORDER BY rowid LIMIT ?", (endpoint, limit)).fetchall()
        out = []
        for job_id, payload, attempts, error in rows:
            job = Job.decode_or_stand_in(payload, endpoint, job_id)
            job.attempts, job.last_error = attempts, error
            out.append(job)
        return out

    def requeue_dead(self, endpoint: str, job_id: str | None = None) -> list[str]:
        """Put dead jobs (one, or all when ``job_id`` is None) back in the queue with their attempts reset."""
        where, args = "endpoint = ? AND dead = 1", [endpoint]
        if job_id is not None:
            where, args = where + " AND id = ?", [endpoint, job_id]
        with self.db.write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM jobs WHERE {where}", args)]
            conn.execute(f"UPDATE jobs SET dead = 0, attempts = 0, visible_at = ? WHERE {where}",
                         [time.time(), *args])
        return ids

    def close(self) -> None:
        """Release this thread's connections."""
        self.db.close()


class SqliteResults(ResultStore):
    """Job records in the ``results`` table; expired ones are purged as others finish."""

    def __init__(self, db: SqliteDB) -> None:
        self.db = db

    def create(self, job: Job) -> None:
        """Record a job as queued (before it is enqueued)."""
        with self.db.write() as conn:
            conn.execute("INSERT OR REPLACE INTO results (id, endpoint, status, submitted_at, record) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (job.id, job.endpoint, QUEUED, job.submitted_at, orjson.dumps(record_of(job))))

    def create_once(self, job: Job) -> bool:
        """Record a job as queued unless its id has a record (unexpired)."""
        with self.db.write() as conn:
            gone = conn.execute("DELETE FROM results WHERE id = ? AND expires_at IS NOT NULL "
                                "AND expires_at <= ?", (job.id, time.time()))
            if gone.rowcount:  # an expired job of the same id: its events go too
                conn.execute("DELETE FROM events WHERE job_id = ?", (job.id,))
            made = conn.execute(
                "INSERT OR IGNORE INTO results (id, endpoint, status, submitted_at, record) "
                "VALUES (?, ?, ?, ?, ?)",
                (job.id, job.endpoint, QUEUED, job.submitted_at, orjson.dumps(record_of(job))))
            return made.rowcount == 1

    def update(self, job_id: str, fields: dict[str, Any], ttl: float | None = None,
               only_if: str | None = None) -> bool:
        """Merge ``fields`` into the record."""
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute("SELECT record FROM results WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            record = orjson.loads(row[0])
            if not merge_record(record, fields, only_if):
                return False
            expires = now + ttl if ttl is not None else None
            conn.execute("UPDATE results SET status = ?, record = ?, expires_at = ? WHERE id = ?",
                         (record["STATUS"], orjson.dumps(record), expires, job_id))
            if record["STATUS"] in TERMINAL:
                conn.execute("DELETE FROM results WHERE expires_at < ?", (now,))
        return True

    def add_event(self, job_id: str, name: str, data: dict[str, Any], ttl: float) -> int:
        """Store the job's next event."""
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute("SELECT seq, name FROM events WHERE job_id = ? "
                               "ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone()
            count, last = (row[0], row[1]) if row else (0, None)
            if not may_add_event(count, last, name):
                return 0
            conn.execute("INSERT INTO events (job_id, seq, name, data, expires_at) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (job_id, count + 1, name, orjson.dumps(data), now + ttl))
            if name in EVENT_ENDS:  # the job's events expire together, and others' go
                conn.execute("UPDATE events SET expires_at = ? WHERE job_id = ?",
                             (now + ttl, job_id))
                conn.execute("DELETE FROM events WHERE expires_at < ?", (now,))
        return int(count + 1)

    def events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Up to ``limit`` of the job's events after id ``after``."""
        rows = self.db.conn().execute(
            "SELECT seq, name, data FROM events WHERE job_id = ? AND seq > ? AND expires_at >= ? "
            "ORDER BY seq LIMIT ?", (job_id, after, time.time(), limit)).fetchall()
        return [(int(seq), str(name), orjson.loads(data)) for seq, name, data in rows]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None when unknown or expired."""
        row = self.db.conn().execute(
            "SELECT record FROM results WHERE id = ? AND (expires_at IS NULL OR expires_at >= ?)",
            (job_id, time.time())).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def delete(self, job_id: str) -> None:
        """Forget a record (a submission that was refused)."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM results WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM events WHERE job_id = ?", (job_id,))

    def oldest_pending(self, endpoint: str) -> float | None:
        """Submission time of the oldest job of ``endpoint`` not finished yet."""
        row = self.db.conn().execute(
            "SELECT MIN(submitted_at) FROM results WHERE endpoint = ? AND status IN (?, ?)",
            (endpoint, QUEUED, RUNNING)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def close(self) -> None:
        """Release this thread's connections."""
        self.db.close()


_DBS: dict[str, SqliteDB] = {}
_DBS_LOCK = threading.Lock()


def shared_db(path: str) -> SqliteDB:
    """One :class:`SqliteDB` per file in a process (queue and results share it)."""
    with _DBS_LOCK:
        db = _DBS.get(path)
        if db is None:
            db = _DBS[path] = SqliteDB(path)
        return db
