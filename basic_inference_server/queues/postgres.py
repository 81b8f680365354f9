"""Job records in PostgreSQL (``RESULTS = postgresql://...``): results that last and
are shared by every gateway and standalone server naming the database.

The tables come with the ledger's versioned migrations (:mod:`..ledger.postgres`),
applied at the first connection of a process. Each thread has a connection of its
own, as the other stores do; a record is updated under ``SELECT ... FOR UPDATE``, so
concurrent updates of one job are applied one after the other.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Json

from ..ledger.postgres import CONNECT_TIMEOUT_S, migrate
from .base import (
    EVENT_ENDS,
    QUEUED,
    RUNNING,
    TERMINAL,
    Job,
    QueueError,
    ResultStore,
    may_add_event,
    merge_record,
    record_of,
)

_MIGRATED: set[str] = set()
_MIGRATED_LOCK = threading.Lock()


class PgResults(ResultStore):
    """Job records in ``bis_job_results``, their events in ``bis_job_events``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def _conn(self) -> psycopg.Connection[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(self.url, autocommit=True,
                                       connect_timeout=CONNECT_TIMEOUT_S,
                                       application_name="basic_inference_server results")
                with _MIGRATED_LOCK:
                    if self.url not in _MIGRATED:
                        migrate(conn)
                        _MIGRATED.add(self.url)
            except psycopg.Error as exc:
                raise QueueError(f"the results database is not reachable: {exc}") from None
            self._local.conn = conn
        return conn

    def create(self, job: Job) -> None:
        """Record a job as queued (before it is enqueued)."""
        self._conn().execute(
            "INSERT INTO bis_job_results (id, endpoint, status, submitted_at, record) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "endpoint = excluded.endpoint, status = excluded.status, "
            "submitted_at = excluded.submitted_at, expires_at = NULL, record = excluded.record",
            (job.id, job.endpoint, QUEUED, job.submitted_at, Json(record_of(job))))

    def create_once(self, job: Job) -> bool:
        """Record a job as queued unless its id has an unexpired record."""
        conn = self._conn()
        with conn.transaction():
            gone = conn.execute("DELETE FROM bis_job_results WHERE id = %s AND expires_at IS NOT "
                                "NULL AND expires_at <= %s", (job.id, time.time()))
            if gone.rowcount:  # an expired job of the same id: its events go too
                conn.execute("DELETE FROM bis_job_events WHERE job_id = %s", (job.id,))
            made = conn.execute(
                "INSERT INTO bis_job_results (id, endpoint, status, submitted_at, record) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (job.id, job.endpoint, QUEUED, job.submitted_at, Json(record_of(job))))
            return made.rowcount == 1

    def update(self, job_id: str, fields: dict[str, Any], ttl: float | None = None,
               only_if: str | None = None) -> bool:
        """Merge ``fields`` into the record."""
        now = time.time()
        conn = self._conn()
        with conn.transaction():
            row = conn.execute("SELECT record FROM bis_job_results WHERE id = %s FOR UPDATE",
                               (job_id,)).fetchone()
            if row is None:
                return False
            record = dict(row[0])
            if not merge_record(record, fields, only_if):
                return False
            conn.execute("UPDATE bis_job_results SET status = %s, record = %s, expires_at = %s "
                         "WHERE id = %s", (record["STATUS"], Json(record),
                                           now + ttl if ttl is not None else None, job_id))
            if record["STATUS"] in TERMINAL:
                conn.execute("DELETE FROM bis_job_results WHERE expires_at < %s", (now,))
        return True

    def add_event(self, job_id: str, name: str, data: dict[str, Any], ttl: float) -> int:
        """Store the job's next event."""
        now = time.time()
        conn = self._conn()
        with conn.transaction():
            # The job's row serialises its events (there may be none yet to lock).
            conn.execute("SELECT 1 FROM bis_job_results WHERE id = %s FOR UPDATE", (job_id,))
            row = conn.execute("SELECT seq, name FROM bis_job_events WHERE job_id = %s "
                               "ORDER BY seq DESC LIMIT 1", (job_id,)).fetchone()
            count, last = (int(row[0]), str(row[1])) if row else (0, None)
            if not may_add_event(count, last, name):
                return 0
            conn.execute("INSERT INTO bis_job_events (job_id, seq, name, data, expires_at) "
                         "VALUES (%s, %s, %s, %s, %s)", (job_id, count + 1, name, Json(data),
                                                         now + ttl))
            if name in EVENT_ENDS:  # the job's events expire together, and others' go
                conn.execute("UPDATE bis_job_events SET expires_at = %s WHERE job_id = %s",
                             (now + ttl, job_id))
                conn.execute("DELETE FROM bis_job_events WHERE expires_at < %s", (now,))
        return count + 1

    def events(self, job_id: str, after: int, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Up to ``limit`` of the job's events after id ``after``."""
        rows = self._conn().execute(
            "SELECT seq, name, data FROM bis_job_events WHERE job_id = %s AND seq > %s "
            "AND expires_at >= %s ORDER BY seq LIMIT %s",
            (job_id, after, time.time(), limit)).fetchall()
        return [(int(seq), str(name), dict(data)) for seq, name, data in rows]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The record, or None when unknown or expired."""
        row = self._conn().execute(
            "SELECT record FROM bis_job_results WHERE id = %s "
            "AND (expires_at IS NULL OR expires_at >= %s)", (job_id, time.time())).fetchone()
        return None if row is None else dict(row[0])

    def delete(self, job_id: str) -> None:
        """Forget a record (a submission that was refused)."""
        conn = self._conn()
        with conn.transaction():
            conn.execute("DELETE FROM bis_job_results WHERE id = %s", (job_id,))
            conn.execute("DELETE FROM bis_job_events WHERE job_id = %s", (job_id,))

    def oldest_pending(self, endpoint: str) -> float | None:
        """Submission time of the oldest job of ``endpoint`` not finished yet."""
        row = self._conn().execute(
            "SELECT min(submitted_at) FROM bis_job_results WHERE endpoint = %s "
            "AND status IN (%s, %s)", (endpoint, QUEUED, RUNNING)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def close(self) -> None:
        """Release this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
