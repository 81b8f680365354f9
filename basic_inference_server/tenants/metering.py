"""Usage metering per tenant and endpoint: requests, errors, units, latency.

Counted in memory on the request path (a dict update), written to the store in one
batch ``FLUSH_EVERY`` seconds after the batch's first count, per front process (the
billing pattern: one write per interval, not one per request), readable per UTC day
through the admin API (JSON or CSV). What a front process counted in its last interval is lost if it is
killed (at most ``FLUSH_EVERY`` seconds of metering; quotas are charged apart).

Prometheus gets ``bis_tenant_requests_total`` and ``bis_tenant_units_total`` with a
``tenant`` label bounded per front process: the first ``TOP_TENANTS`` tenants it
serves keep their name, every later one is counted as ``other``.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from prometheus_client import Counter

FLUSH_EVERY = 2.0
TOP_TENANTS = 20
COLUMNS = ("requests", "errors", "units", "latency_s")

TENANT_REQUESTS = Counter("bis_tenant_requests_total", "Data-plane requests per tenant "
                          "(bounded: then 'other'), endpoint and status class",
                          ["tenant", "endpoint", "status"])
TENANT_UNITS = Counter("bis_tenant_units_total", "Units endpoints reported (USAGE) per tenant "
                       "(bounded: then 'other') and endpoint", ["tenant", "endpoint"])

Row = tuple[str, str, str, float, float, float, float]  # tenant, endpoint, day, *COLUMNS


class Meter:
    """One front process's counts since its last flush."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[float]] = {}
        self.named: set[str] = set()

    def record(self, tenant: str, endpoint: str, status: int, units: float,
               latency: float) -> None:
        """Count one request."""
        counts = self.counts.get((tenant, endpoint))
        if counts is None:
            counts = self.counts[(tenant, endpoint)] = [0.0, 0.0, 0.0, 0.0]
        counts[0] += 1
        if status >= 400:
            counts[1] += 1
        counts[2] += units
        counts[3] += latency
        if tenant not in self.named and len(self.named) < TOP_TENANTS:
            self.named.add(tenant)
        label = tenant if tenant in self.named else "other"
        TENANT_REQUESTS.labels(label, endpoint, f"{status // 100}xx").inc()
        if units:
            TENANT_UNITS.labels(label, endpoint).inc(units)

    def take(self) -> list[Row]:
        """The counts to write, as rows of today (UTC); the meter starts over."""
        day = time.strftime("%Y-%m-%d", time.gmtime())
        rows = [(t, e, day, *c) for (t, e), c in self.counts.items()]
        self.counts = {}
        return rows  # type: ignore[return-value]

    def restore(self, rows: list[Row]) -> None:
        """Count again what :meth:`take` gave and could not be written (the next batch's)."""
        for tenant, endpoint, _day, *counts in rows:
            into = self.counts.setdefault((tenant, endpoint), [0.0] * len(COLUMNS))
            for i, value in enumerate(counts):
                into[i] += value


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The admin API's rows: totals and the mean latency in milliseconds."""
    return [{"TENANT": r["tenant"], "ENDPOINT": r["endpoint"], "DAY": r["day"],
             "REQUESTS": int(r["requests"]), "ERRORS": int(r["errors"]), "UNITS": r["units"],
             "LATENCY_MS_AVG": round(r["latency_s"] * 1000 / r["requests"], 3)
             if r["requests"] else 0.0} for r in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    columns = ["TENANT", "ENDPOINT", "DAY", "REQUESTS", "ERRORS", "UNITS", "LATENCY_MS_AVG"]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return out.getvalue()
