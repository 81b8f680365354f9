"""What async jobs spend, charged where they run: an endpoint worker's job consumer, or
the job runner (jobs of versioned, remote and pipeline endpoints).

A job's rate limits were taken when it was submitted, at the gateway, and for a
requests quota its request was reserved there. Its units are known only once it has
run: the consumer that ran it takes ``USAGE`` out of the stored result and hands the
run to its :class:`JobLedger` (:mod:`..queues.consumer`). The front leaves ``USAGE`` in
its answers to the job runner, and only to it, for that. The ledger writes to the
tenants store itself, with the store's address from the server's spec (never from the
environment, which endpoint code shares): a job that ends with a 200 has its units
added to the key's counter when its quota is in units; one that does not gives back
the request reserved at submit when its quota is in requests (only 200s are charged,
as for ``/run``). Counters are the key's lineage's (:mod:`.keys`). The run is metered
per tenant and endpoint in batches, like the front's requests.

The job has run by then: there is nothing left to refuse. When the store does not
answer, charges and counts stay in memory and are written at the next try.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from ..ledger.journal import Journal
from ..queues.base import Job
from . import TenantsSpec
from .metering import FLUSH_EVERY, Meter
from .store import KeyStore, StoreDown, open_store
from .usage import period, take_usage

log = logging.getLogger(__name__)


class JobLedger:
    """Charges and meters the jobs one consumer runs (used from its thread only)."""

    @classmethod
    def of(cls, spec: TenantsSpec | None) -> JobLedger | None:
        """A ledger with API keys on; None without."""
        return cls(spec) if spec is not None and spec.enabled else None

    @staticmethod
    def take_units(result: dict[str, Any]) -> float:
        """Remove ``USAGE`` from a job's result; the units it reported."""
        return take_usage(result)

    def __init__(self, spec: TenantsSpec) -> None:
        self.store: KeyStore = open_store(spec.redis, spec.db)
        self.meter = Meter()
        self.journal = Journal(spec.journal) if spec.journal else None  # LEDGER_POSTGRES
        # Key id, the quota unit it is for, the amount, and when (its period).
        self.charges: list[tuple[str, str, float, float]] = []
        self._due: float | None = None  # when the meter's batch is to be written

    def ran(self, job: Job, status: int, units: float, seconds: float,
            requeued: bool = False) -> None:
        """A job finished (``status`` of its last run): meter it, charge its units; give
        back its reserved request unless it ended with a 200 (``requeued``: a dead
        letter run again, whose request was given back when it died)."""
        if job.key_id is None or job.tenant is None:
            return  # submitted without a key: no tenant to charge
        if self.journal is not None:
            self.journal.record(job.tenant, job.endpoint, status, units, seconds)
        self.meter.record(job.tenant, job.endpoint, status, units, seconds)
        if self._due is None:
            self._due = time.monotonic() + FLUSH_EVERY
        # The request reserved at submit is in the period of the submission (the
        # reservation was taken a moment before the job was made).
        if status != 200 and not requeued:
            self.charges.append((job.key_id, "requests", -1.0, job.submitted_at))
        elif status == 200 and requeued:  # given back when it died; it ran after all
            self.charges.append((job.key_id, "requests", 1.0, job.submitted_at))
        if status == 200 and units:
            self.charges.append((job.key_id, "units", units, time.time()))
        self.flush()

    def flush(self, final: bool = False) -> None:
        """Write the charges waiting, and the meter's batch once due (``final``: now)."""
        try:
            while self.charges:
                self._charge(*self.charges[0])
                self.charges.pop(0)
            if self._due is not None and (final or time.monotonic() >= self._due):
                rows = self.meter.take()
                try:
                    self.store.meter_now(rows)
                except BaseException:
                    self.meter.restore(rows)
                    raise
                self._due = None
        except (StoreDown, sqlite3.Error) as exc:
            log.warning("the tenants store did not take the jobs' usage (%s); kept for the "
                        "next try", exc)

    def _charge(self, key_id: str, unit: str, amount: float, when: float) -> None:
        key = self.store.get(key_id)
        if key is None or key.quota is None or key.quota.unit != unit:
            return  # no quota of this unit: nothing to charge or give back
        self.store.charge_now(key.lineage, period(key.quota.per, when)[0], amount)
