"""The ledger's tables in PostgreSQL: versioned migrations and batched writes.

The schema is the numbered SQL files of ``migrations/``, applied in order, each once:
``bis_schema_migrations`` records which, and a transaction-scoped advisory lock keeps
two gateways starting together from applying one twice. A database migrated by a newer
release than this one is refused (:class:`SchemaTooNew`) rather than written to.

A batch is one transaction: usage rows added to the day's totals, audit records
inserted, and the journal positions the batch reaches. Either all of it is in or none
of it, so shipping again from the positions the database holds never counts twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from importlib import resources
from typing import Any

import psycopg

# Any fixed number: the advisory lock every gateway takes while it migrates.
MIGRATION_LOCK = 0x6269735F6C6467
CONNECT_TIMEOUT_S = 5
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

UsageKey = tuple[str, str, date]  # tenant, endpoint, UTC day
USAGE_COLUMNS = ("requests", "ok", "errors", "units", "latency_s")


class SchemaTooNew(RuntimeError):
    """The database holds migrations this release does not know."""


def migrations() -> list[tuple[int, str, str]]:
    """The packaged migrations as (version, name, SQL), numbered 1, 2, ... without gaps."""
    found = []
    for item in resources.files(__package__).joinpath("migrations").iterdir():
        match = _NAME.match(item.name)
        if match:
            found.append((int(match.group(1)), item.name, item.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"ledger migrations are not numbered 1..n: {[n for _, n, _ in found]}")
    return found


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations the database lacks, in one transaction; the names applied."""
    steps = migrations()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur.execute("SELECT to_regclass('bis_schema_migrations')")
        found = cur.fetchone()
        if found is None or found[0] is None:
            # Asked first: a role that may only write (no CREATE) is refused even an
            # IF NOT EXISTS once the table is there.
            cur.execute("CREATE TABLE bis_schema_migrations (version integer PRIMARY KEY, "
                        "name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
        cur.execute("SELECT coalesce(max(version), 0) FROM bis_schema_migrations")
        row = cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(steps):
            raise SchemaTooNew(f"the ledger database is at schema version {current}; this "
                               f"release knows {len(steps)}: upgrade the gateway")
        applied = []
        for version, name, sql in steps[current:]:
            cur.execute(sql.encode("utf-8"))
            cur.execute("INSERT INTO bis_schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name))
            applied.append(name)
    return applied


@dataclass
class Batch:
    """What one transaction adds."""

    usage: dict[UsageKey, list[float]] = field(default_factory=dict)  # USAGE_COLUMNS each
    audit: list[dict[str, Any]] = field(default_factory=list)
    shipped: dict[str, int] = field(default_factory=dict)  # source -> position reached

    def count(self, tenant: str, endpoint: str, day: date, status: int, units: float,
              latency: float) -> None:
        """Add one metered request to the batch's rows."""
        row = self.usage.setdefault((tenant, endpoint, day), [0.0] * len(USAGE_COLUMNS))
        row[0] += 1
        row[1] += status == 200
        row[2] += status >= 400
        row[3] += units
        row[4] += latency

    def __bool__(self) -> bool:
        return bool(self.usage or self.audit or self.shipped)


class PgLedger:
    """One gateway's connection to the ledger database."""

    def __init__(self, dsn: str, gateway: str) -> None:
        self.gateway = gateway
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                    application_name="basic_inference_server ledger")
        try:
            migrate(self.conn)
        except BaseException:
            self.conn.close()
            raise

    def shipped(self) -> dict[str, int]:
        """How far each of this gateway's sources was added."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT source, shipped FROM bis_ledger_sources WHERE gateway = %s",
                        (self.gateway,))
            return {source: int(at) for source, at in cur.fetchall()}

    def write(self, batch: Batch) -> None:
        """Add a batch: all of it, or nothing."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            if batch.usage:
                cur.executemany(
                    "INSERT INTO bis_usage AS u (tenant, endpoint, day, requests, ok, errors, "
                    "units, latency_s) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (tenant, endpoint, day) DO UPDATE SET "
                    "requests = u.requests + excluded.requests, ok = u.ok + excluded.ok, "
                    "errors = u.errors + excluded.errors, units = u.units + excluded.units, "
                    "latency_s = u.latency_s + excluded.latency_s",
                    [(t, e, d, int(r[0]), int(r[1]), int(r[2]), r[3], r[4])
                     for (t, e, d), r in sorted(batch.usage.items())])
            if batch.audit:
                cur.executemany(
                    "INSERT INTO bis_audit (gateway, ts, kind, record) VALUES (%s, %s, %s, %s)",
                    [(self.gateway, _timestamp(r.get("ts")), str(r.get("kind", "")),
                      json.dumps(r)) for r in batch.audit])
            if batch.shipped:
                cur.executemany(
                    "INSERT INTO bis_ledger_sources (gateway, source, shipped) "
                    "VALUES (%s, %s, %s) ON CONFLICT (gateway, source) "
                    "DO UPDATE SET shipped = excluded.shipped",
                    [(self.gateway, s, at) for s, at in sorted(batch.shipped.items())])

    def forget(self, sources: list[str]) -> None:
        """Drop the positions of sources that are gone (deleted segments)."""
        if sources:
            with self.conn.cursor() as cur:
                cur.execute("DELETE FROM bis_ledger_sources WHERE gateway = %s "
                            "AND source = ANY(%s)", (self.gateway, sources))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def _timestamp(ts: Any) -> datetime:
    """A record's ``ts`` (UTC seconds) as a timestamp; now when it has none."""
    value = float(ts) if isinstance(ts, (int, float)) else datetime.now(timezone.utc).timestamp()
    return datetime.fromtimestamp(value, timezone.utc)
