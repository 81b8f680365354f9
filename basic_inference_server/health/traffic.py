"""The gateway's request totals per endpoint and version, for the health samples.

The front processes count ``/run`` answers into Prometheus multiprocess files
(``gateway/metrics.py``: ``bis_requests_total`` and ``bis_request_seconds``); the manager
adds their totals to each health sample, so the dashboard charts request rate, error
rate and latency percentiles from the differences between samples, over the same window
and across reconnects as its other charts. Totals start over when the front restarts
(its folder of files is new): a reader takes a total lower than the last as a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from prometheus_client import CollectorRegistry

from ..metric_files import MetricFiles

# The names gateway/metrics.py gives them (its module is the front's: not imported here).
REQUESTS = "bis_requests_total"
BUCKETS = "bis_request_seconds_bucket"
# Series kept per sample, the busiest first: samples are kept by the thousand.
MAX_SERIES = 20


class Totals(TypedDict):
    """One endpoint's (or version's) totals since the front started."""

    requests: int
    errors: int  # answers with a 5xx status
    le: list[float]  # the latency buckets' finite upper bounds, in seconds
    counts: list[int]  # answers at or under each bound, then all (+Inf: not JSON)


def read_traffic(folder: Path) -> dict[str, Totals]:
    """``{"endpoint" or "endpoint@version": totals}`` from the front's metrics files;
    empty when there are none."""
    if not folder.is_dir():
        return {}
    registry = CollectorRegistry()
    MetricFiles(registry, path=str(folder))
    totals: dict[str, Totals] = {}
    buckets: dict[str, list[tuple[float, int]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name not in (REQUESTS, BUCKETS):
                continue
            name = labels["endpoint"] + (f"@{labels['version']}" if labels["version"] else "")
            entry = totals.setdefault(name, Totals(requests=0, errors=0, le=[], counts=[]))
            if sample.name == REQUESTS:
                entry["requests"] += int(sample.value)
                if labels["status"].startswith("5"):
                    entry["errors"] += int(sample.value)
            else:
                buckets.setdefault(name, []).append((float(labels["le"]), int(sample.value)))
    for name, pairs in buckets.items():
        pairs.sort()
        totals[name]["le"] = [bound for bound, _ in pairs[:-1]]
        totals[name]["counts"] = [count for _, count in pairs]
    busiest = sorted(totals, key=lambda n: totals[n]["requests"], reverse=True)[:MAX_SERIES]
    return {name: totals[name] for name in sorted(busiest)}
