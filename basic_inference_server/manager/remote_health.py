"""Reachability of a remote endpoint's URLs, as the supervisor's probes find it (no I/O).

A URL is unreachable once it has failed ``PING_MISSES`` probes in a row, and reachable
again after one answered probe; one lost probe does not take a remote out of service.
A URL not probed yet counts as reachable: a remote endpoint serves from its start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROBE_PATH = "/health/live"


@dataclass
class UrlStatus:
    """The last probes of one URL."""

    reachable: bool | None = None  # None: not probed yet
    misses: int = 0  # failed probes in a row
    error: str | None = None
    latency_ms: float | None = None
    checked_at: float | None = None  # wall clock of the last probe


class UrlHealth:
    """Every URL's :class:`UrlStatus`."""

    def __init__(self) -> None:
        self.urls: dict[str, UrlStatus] = {}

    def observe(self, results: dict[str, Any], misses: int, now: float) -> bool:
        """Record one round of probes (URL -> ``{ok, error, latency_ms}``); True when
        a URL became reachable or unreachable."""
        changed = False
        for url, got in results.items():
            seen = self.urls.setdefault(url, UrlStatus())
            ok = bool(got.get("ok"))
            seen.misses = 0 if ok else seen.misses + 1
            seen.error = None if ok else str(got.get("error") or "no answer")[:300]
            latency = got.get("latency_ms")
            seen.latency_ms = float(latency) if isinstance(latency, (int, float)) else None
            seen.checked_at = now
            reachable = ok or (seen.reachable is not False and seen.misses < misses)
            changed |= reachable != (seen.reachable is not False)
            seen.reachable = reachable
        return changed

    def down(self, urls: list[str]) -> list[str]:
        """The URLs of ``urls`` found unreachable."""
        return [u for u in urls if u in self.urls and self.urls[u].reachable is False]

    def reason(self, urls: list[str]) -> str:
        """Why a remote whose URLs are all down is: each URL's last error."""
        errors = "; ".join(f"{u}: {self.urls[u].error}" for u in urls if u in self.urls)
        return f"no URL answers GET {PROBE_PATH} ({errors})"

    def describe(self, urls: list[str]) -> dict[str, Any]:
        """What /list_servers shows of each URL."""
        out = {}
        for url in urls:
            seen = asdict(self.urls.get(url) or UrlStatus())
            seen.pop("misses")
            out[url] = seen
        return out

    def reset(self) -> None:
        """Forget every URL's status (the next probes start afresh)."""
        self.urls.clear()
