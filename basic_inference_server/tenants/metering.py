"""Usage metering per tenant and endpoint: requests, errors, units, latency.

Counted in memory on the request path (a dict update), written to the store in one
batch ``FLUSH_EVERY`` seconds after the batch's first count, per front process (the
billing pattern: one write per interval, not one per request), readable per UTC day
through the admin API (JSON or CSV). What a front process counted in its last interval is lost if it is
killed (at most ``FLUSH_EVERY`` seconds of metering; quotas are charged apart).

Prometheus gets ``bis_tenant_requests_total`` and ``bis_tenant_units_total``, added
with each batch (a counter's increment costs a write to its metrics file: too much for
every request). Each process counts with the real tenant (tenants exist only as keys an admin made, so the
series a process keeps are bounded by the keys), and :class:`TopTenants` bounds what is
exported: at scrape time, over every front process and endpoint worker, the
``TOP_TENANTS`` tenants with the most requests keep their name and the rest are summed
as ``other``.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .usage import period

FLUSH_EVERY = 2.0
TOP_TENANTS = 20
COLUMNS = ("requests", "errors", "units", "latency_s")

OTHER = "other"
# Per family: its help text and labels.
TENANT_FAMILIES = {
    "bis_tenant_requests": (f"Data-plane requests and jobs per tenant (the {TOP_TENANTS} with "
                            "the most requests, then 'other'), endpoint and status class",
                            ["tenant", "endpoint", "status"]),
    "bis_tenant_units": (f"Units endpoints reported (USAGE) per tenant (the {TOP_TENANTS} with "
                         "the most requests, then 'other') and endpoint", ["tenant", "endpoint"]),
    "bis_tenant_tokens": (f"Tokens of the OpenAI routes' answers per tenant (the {TOP_TENANTS} "
                          "with the most requests, then 'other') and kind: prompt, completion",
                          ["tenant", "kind"]),
    "bis_tenant_queue_seconds": (f"Seconds requests waited in the front's fair queue per tenant "
                                 f"(the {TOP_TENANTS} with the most requests, then 'other'), "
                                 "endpoint and priority class", ["tenant", "endpoint", "class"]),
    "bis_tenant_queued": (f"Requests that waited in the front's fair queue per tenant (the "
                          f"{TOP_TENANTS} with the most requests, then 'other'), endpoint and "
                          "priority class", ["tenant", "endpoint", "class"]),
}
TENANT_REQUESTS = Counter("bis_tenant_requests_total", *TENANT_FAMILIES["bis_tenant_requests"])
TENANT_UNITS = Counter("bis_tenant_units_total", *TENANT_FAMILIES["bis_tenant_units"])
TENANT_TOKENS = Counter("bis_tenant_tokens_total", *TENANT_FAMILIES["bis_tenant_tokens"])
TENANT_QUEUE_SECONDS = Counter("bis_tenant_queue_seconds_total",
                               *TENANT_FAMILIES["bis_tenant_queue_seconds"])
TENANT_QUEUED = Counter("bis_tenant_queued_total", *TENANT_FAMILIES["bis_tenant_queued"])

Row = tuple[str, str, str, float, float, float, float]  # tenant, endpoint, day, *COLUMNS


class Meter:
    """One process's counts since its last batch."""

    def __init__(self) -> None:
        # Per tenant, endpoint and status class: requests, units, latency.
        self.counts: dict[tuple[str, str, int], list[float]] = {}
        # Rows taken and not written (the store did not answer): the next batch's.
        self._carried: dict[tuple[str, str], list[float]] = {}

    def record(self, tenant: str, endpoint: str, status: int, units: float,
               latency: float) -> None:
        """Count one request."""
        cell = (tenant, endpoint, status // 100)
        counts = self.counts.get(cell)
        if counts is None:
            counts = self.counts[cell] = [0.0, 0.0, 0.0]
        counts[0] += 1
        counts[1] += units
        counts[2] += latency

    def take(self) -> list[Row]:
        """The counts to write, as rows of today (UTC), once added to Prometheus; the
        meter starts over."""
        rows, self._carried = self._carried, {}
        for (tenant, endpoint, cls), (n, units, latency) in self.counts.items():
            TENANT_REQUESTS.labels(tenant, endpoint, f"{cls}xx").inc(n)
            if units:
                TENANT_UNITS.labels(tenant, endpoint).inc(units)
            row = rows.setdefault((tenant, endpoint), [0.0] * len(COLUMNS))
            row[0] += n
            row[1] += n if cls >= 4 else 0
            row[2] += units
            row[3] += latency
        self.counts = {}
        day = time.strftime("%Y-%m-%d", time.gmtime())
        return [(t, e, day, *c) for (t, e), c in rows.items()]  # type: ignore[misc]

    def restore(self, rows: list[Row]) -> None:
        """Count again what :meth:`take` gave and could not be written (the next batch's;
        Prometheus has it already)."""
        for tenant, endpoint, _day, *counts in rows:
            into = self._carried.setdefault((tenant, endpoint), [0.0] * len(COLUMNS))
            for i, value in enumerate(counts):
                into[i] += value

    def __bool__(self) -> bool:
        """Whether anything is left to write."""
        return bool(self.counts or self._carried)


class TopTenants:
    """The metrics of ``sources`` (collectors), with the per-tenant families merged
    across them and bounded: the ``top`` tenants with the most requests (over the
    counters' lifetime) keep their name, the others are summed as ``other``.

    Ranked again at each scrape: when a tenant enters the top, its count leaves
    ``other``, which drops (Prometheus reads that as a counter reset). With
    ``tenant_labels`` False no tenant is named: the families lose their ``tenant`` label
    and are summed over tenants (METRICS_TENANT_LABELS).
    """

    def __init__(self, *sources: Any, top: int = TOP_TENANTS, tenant_labels: bool = True) -> None:
        self.sources = sources
        self.top = top
        self.tenant_labels = tenant_labels

    def collect(self) -> Iterator[Metric]:
        """The tenant families summed over sources; the others as they come."""
        merged: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
            name: defaultdict(float) for name in TENANT_FAMILIES}
        for source in self.sources:
            for family in source.collect():
                if family.name not in merged:
                    yield family
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        merged[family.name][tuple(sorted(sample.labels.items()))] += sample.value
        totals: dict[str, float] = defaultdict(float)
        for labels, value in merged["bis_tenant_requests"].items():
            totals[dict(labels)["tenant"]] += value
        for labels in merged["bis_tenant_queued"]:  # tenants without keys are not metered
            totals[dict(labels)["tenant"]] += 0.0
        named = set(sorted(totals, key=lambda t: (-totals[t], t))[:self.top])
        for name, (doc, labelnames) in TENANT_FAMILIES.items():
            if not merged[name]:
                continue
            if not self.tenant_labels:
                labelnames = [label for label in labelnames if label != "tenant"]
                doc += " (summed over tenants: METRICS_TENANT_LABELS is off)"
            folded: dict[tuple[str, ...], float] = defaultdict(float)
            for labels, value in merged[name].items():
                values = dict(labels)
                if values["tenant"] not in named:
                    values["tenant"] = OTHER
                folded[tuple(values[label] for label in labelnames)] += value
            family = CounterMetricFamily(name, doc, labels=labelnames)
            for values_, value in sorted(folded.items()):
                family.add_metric(list(values_), value)
            yield family



class QuotaUse:
    """``bis_tenant_quota_used_ratio{tenant}`` at scrape time: per tenant, the share of its
    quota that its key nearest its own has spent in the current period (keys and their
    rotations share a counter: a lineage's). The ``top`` tenants nearest their quota keep
    their name and the others are left out: an alert asks about those near the end, and
    the series stay bounded. With ``tenant_labels`` False, one sample without a tenant:
    the largest share of any.

    A scrape reads every usable key with a quota and its counter (one round trip on
    Redis), never on the request path.
    """

    def __init__(self, store: Any, top: int = TOP_TENANTS, tenant_labels: bool = True) -> None:
        # store: the gate's .store.KeyStore
        self.store = store
        self.top = top
        self.tenant_labels = tenant_labels

    def shares(self, now: float) -> dict[str, float]:
        """The largest share of its quota spent by a key of each tenant."""
        keys = [k for k in self.store.keys() if k.quota is not None and k.usable(now)]
        counters = [(k.lineage, period(k.quota.per, now)[0]) for k in keys]
        out: dict[str, float] = {}
        for key, spent in zip(keys, self.store.spent_now(counters), strict=True):
            out[key.tenant] = max(out.get(key.tenant, 0.0), spent / key.quota.amount)
        return out

    def collect(self) -> Iterator[Metric]:
        """The gauge family."""
        shares = self.shares(time.time())
        doc = ("Share of its quota spent this period by each tenant's key nearest its quota "
               f"(the {self.top} tenants nearest theirs)")
        if not self.tenant_labels:
            family = GaugeMetricFamily("bis_tenant_quota_used_ratio", doc + ", the largest "
                                       "(METRICS_TENANT_LABELS is off)", labels=[])
            if shares:
                family.add_metric([], max(shares.values()))
            yield family
            return
        family = GaugeMetricFamily("bis_tenant_quota_used_ratio", doc, labels=["tenant"])
        for tenant in sorted(shares, key=lambda t: (-shares[t], t))[:self.top]:
            family.add_metric([tenant], shares[tenant])
        yield family

def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The admin API's rows: totals and the mean latency in milliseconds."""
    return [{"TENANT": r["tenant"], "ENDPOINT": r["endpoint"], "DAY": r["day"],
             "REQUESTS": int(r["requests"]), "ERRORS": int(r["errors"]), "UNITS": r["units"],
             "LATENCY_MS_AVG": round(r["latency_s"] * 1000 / r["requests"], 3)
             if r["requests"] else 0.0} for r in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Metering rows as CSV, one line per tenant, endpoint and day."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = ["TENANT", "ENDPOINT", "DAY", "REQUESTS", "ERRORS", "UNITS", "LATENCY_MS_AVG"]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return out.getvalue()
