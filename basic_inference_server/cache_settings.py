"""The per-endpoint setting of the answer cache (gateway/answer_cache.py acts on it)."""

from __future__ import annotations

from typing import Any

from .setting import Setting

# Each part of CACHE: its bounds and its default.
PARTS = {"TTL": (1, 7 * 86400, 300), "MAX_ENTRIES": (1, 1_000_000, 10_000),
         "MAX_MB": (1, 4096, 64)}


def _check_cache(v: dict[str, Any] | None) -> str | None:
    if v is None:
        return None
    unknown = sorted(set(v) - set(PARTS))
    if unknown:
        return f"unknown parts {unknown}; CACHE takes {sorted(PARTS)}"
    for name, value in v.items():
        low, high, _default = PARTS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            return f"{name} must be a number from {low} to {high}"
    return None


def cache_of(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """The CACHE setting with its defaults filled in (None: off)."""
    if v is None:
        return None
    return {name: v.get(name, default) for name, (_low, _high, default) in PARTS.items()}


CACHE_SETTINGS: list[Setting] = [
    Setting("CACHE", (dict, type(None)), None,
            "Answer repeated requests from the gateway's memory: {TTL (seconds, 300), "
            "MAX_ENTRIES (10000), MAX_MB (64)} per front process, keyed by tenant, route and "
            "body; only for endpoints whose answers depend on the body alone (docs/openai.md, "
            "\"Repeated requests\"). null: off.", _check_cache),
]
