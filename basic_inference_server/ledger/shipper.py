"""Ships the journal and the audit trail to PostgreSQL, in the manager, off every
request path.

Every :data:`SHIP_EVERY` seconds the shipper reads what its sources gained since the
positions PostgreSQL holds for this gateway: each journal segment (:mod:`.journal`) and
``audit.jsonl``. It aggregates the entries per tenant, endpoint and day, and writes them
with the new positions in one transaction (:class:`.postgres.PgLedger`). Only whole
lines are taken; a segment whose writer is gone and that was shipped to its end is
deleted, then its position dropped. When PostgreSQL does not answer, the journal keeps
growing on disk and the shipper tries again, reading the positions anew: a commit whose
answer was lost is then seen as done, not shipped twice.

The gateway's id (``<cache>/ledger/gateway_id``) names its positions, so a gateway
restarted on the same cache folder goes on where it stopped, crash or not.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TypedDict

import psycopg

from ..audit import AUDIT_FILE
from ..privfiles import FILE_MODE, private_dir
from . import journal
from .postgres import Batch, PgLedger

log = logging.getLogger(__name__)

SHIP_EVERY = 1.0
# Bytes of sources read into one transaction: bounds the shipper's memory after an
# outage, when a large backlog waits.
MAX_BATCH = 4 * 1024 * 1024
AUDIT_SOURCE = "audit"
GATEWAY_ID_FILE = "gateway_id"


class LedgerStatus(TypedDict):
    """The shipper's state, as ``/system_status`` and ``/metrics`` report it."""

    unshipped_bytes: int  # journal bytes PostgreSQL does not hold yet
    shipped_at: float | None  # when a round last ended with everything shipped (UTC s)
    up: bool  # the last round reached PostgreSQL
    error: str | None  # why the last round failed


def gateway_id(cache_dir: str | Path) -> str:
    """This cache folder's gateway id, made once."""
    folder = private_dir(journal.journal_dir(cache_dir))
    path = folder / GATEWAY_ID_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "r", encoding="ascii") as f:
            found = f.read().strip()
        if found:
            return found
        # An empty file: a crash between its creation and its write. Write it now.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    made = secrets.token_hex(16)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(made + "\n")
    return made


_DAYS: dict[int, date] = {}


def _day(ts: float) -> date:
    """The UTC day of a time (days looked up, not computed: one per entry shipped)."""
    n = int(ts // 86400)
    found = _DAYS.get(n)
    if found is None:
        if len(_DAYS) > 1000:
            _DAYS.clear()
        found = _DAYS[n] = datetime.fromtimestamp(n * 86400, timezone.utc).date()
    return found


class Shipper:
    """Ships one cache folder's journal and audit trail (see the module's docs)."""

    def __init__(self, dsn: str, cache_dir: str | Path, every: float = SHIP_EVERY) -> None:
        self.dsn = dsn
        self.cache_dir = Path(cache_dir)
        self.folder = journal.journal_dir(cache_dir)
        self.gateway = gateway_id(cache_dir)
        self.every = every
        self._pg: PgLedger | None = None
        self._positions: dict[str, int] | None = None  # None: read them from PostgreSQL
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down = False
        # What /metrics and /system_status report (written by the thread, read whole).
        self._known: dict[str, int] = {}  # the positions last read or written
        self._status = LedgerStatus(unshipped_bytes=0, shipped_at=None, up=True, error=None)

    def positions(self) -> dict[str, int]:
        """The positions PostgreSQL holds, once per connection; those of deleted
        segments are dropped."""
        if self._pg is None:
            self._pg = PgLedger(self.dsn, self.gateway)
            self._positions = None
        if self._positions is None:
            found = self._pg.shipped()
            stale = [s for s in found
                     if s != AUDIT_SOURCE and not (self.folder / s).exists()]
            self._pg.forget(stale)
            self._positions = {s: at for s, at in found.items() if s not in stale}
        return self._positions

    def batch(self) -> tuple[Batch, list[Path], bool]:
        """The next batch; the segments it finishes; whether more is waiting."""
        at = self.positions()
        out, done, budget = Batch(), [], MAX_BATCH
        budget -= self._read_audit(out, at.get(AUDIT_SOURCE, 0), budget)
        for path in journal.segments(self.folder):
            if budget <= 0:
                break
            # Asked before the size is read: once finished, nothing is added after it.
            finished = journal.finished(path)
            start = at.get(path.name, 0)
            end, taken = self._read(path, start, budget, finished)
            for line in taken:
                entry = journal.parse(line)
                if entry is None:
                    log.warning("usage journal %s: a damaged entry skipped: %r", path, line[:200])
                    continue
                out.count(entry.tenant, entry.endpoint, _day(entry.ts), entry.status,
                          entry.units, entry.latency)
            if end != start:
                out.shipped[path.name] = end
                budget -= end - start
            if finished and end == _size(path):
                done.append(path)
        return out, done, budget <= 0

    def _read_audit(self, out: Batch, stored: int, budget: int) -> int:
        """Add the audit trail's records after ``stored`` to ``out``; the bytes read."""
        path = self.cache_dir / AUDIT_FILE
        start = stored
        if _size(path) < stored:
            log.info("audit trail %s was truncated (rotated): shipping it from its start", path)
            start = 0
        end, taken = self._read(path, start, budget, finished=False)
        for line in taken:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash (the audit trail skips it too)
            if isinstance(record, dict):
                out.audit.append(record)
        if end != stored:
            out.shipped[AUDIT_SOURCE] = end
        return end - start

    @staticmethod
    def _read(path: Path, start: int, budget: int, finished: bool) -> tuple[int, list[bytes]]:
        """Whole lines of ``path`` from ``start``, at most ``budget`` bytes (one line at
        least); where they end. A finished file's unended last line is taken as damaged."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return start, []
        with os.fdopen(fd, "rb") as f:
            f.seek(start)
            data = f.read(budget)
            while data and b"\n" not in data:  # one line longer than the budget
                more = f.read(budget)
                if not more:
                    break
                data += more
        cut = data.rfind(b"\n") + 1
        if finished and cut < len(data) and len(data) < budget:
            cut = len(data)  # its writer is gone: the rest will never be ended
        lines = [line for line in data[:cut].split(b"\n") if line.strip()]
        return start + cut, lines

    def run_once(self) -> int:
        """Ship everything waiting now; the usage rows and audit records written."""
        written = 0
        while True:
            batch, done, more = self.batch()
            if batch:
                assert self._pg is not None and self._positions is not None
                self._pg.write(batch)
                self._positions.update(batch.shipped)
                written += len(batch.usage) + len(batch.audit)
            for path in done:
                self._delete(path)
            if not more:
                return written

    def _delete(self, path: Path) -> None:
        """Delete a segment shipped to its end, then its position (a crash in between
        leaves a position of a missing file, dropped at the next connection)."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        assert self._pg is not None and self._positions is not None
        self._pg.forget([path.name])
        self._positions.pop(path.name, None)

    def _round(self) -> None:
        """One :meth:`run_once`; while PostgreSQL fails, log once and start over."""
        try:
            self.run_once()
        except Exception as exc:  # noqa: BLE001 - this thread must outlive any failure
            if not self._down:
                log.warning("ledger: cannot ship to PostgreSQL (%s: %s); the journal keeps "
                            "the usage until it answers", type(exc).__name__, exc)
                self._down = True
            self.close()
            self._report(f"{type(exc).__name__}: {exc}"[:500])
            return
        if self._down:
            log.info("ledger: shipping to PostgreSQL again")
            self._down = False
        self._report(None)

    def _report(self, error: str | None) -> None:
        """Update :meth:`status` after a round."""
        if self._positions is not None:
            self._known = dict(self._positions)
        waiting = sum(max(0, _size(p) - self._known.get(p.name, 0))
                      for p in journal.segments(self.folder))
        self._status = LedgerStatus(
            unshipped_bytes=waiting, up=error is None, error=error,
            shipped_at=time.time() if error is None else self._status["shipped_at"])

    def status(self) -> LedgerStatus:
        """The journal's bytes not shipped yet, when a round last succeeded, the last error."""
        return self._status

    def close(self) -> None:
        """Close the connection; the next round connects again and reads the positions."""
        if self._pg is not None:
            try:
                self._pg.close()
            except psycopg.Error:
                pass
        self._pg, self._positions = None, None

    def start(self) -> None:
        """Ship every :attr:`every` seconds in a thread of this process."""
        def loop() -> None:
            while not self._stop.wait(self.every):
                self._round()
            self._round()  # the last batch, once every writer has stopped

        self._thread = threading.Thread(target=loop, name="ledger shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ship what is left (for at most ``timeout`` seconds) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("ledger: the last batch was not shipped within %.0f s; the "
                            "journal keeps it for the next start", timeout)
                return
        self.close()


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0
