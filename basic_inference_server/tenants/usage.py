"""Quotas: what a key may spend per UTC day or month, in requests or in units.

Units are what an endpoint reports: its ``_post_process`` answer may carry a number
``USAGE`` (tokens, images, GPU seconds...), which the gateway adds to the key's
counter and strips from the answer. Units are known only after a request ran, so the
check is: once the counter reaches the quota the key is refused (429
``quota_exceeded``, until the period's end); the request that crosses the line is
charged in full. A requests quota is reserved at admission instead (:mod:`.quotas`).
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .. import protocol
from ..errors import BadRequest, ServingError

PERIODS = ("day", "month")
UNITS = ("requests", "units", "tokens")
# Answers up to this size are decoded to take USAGE out; a larger one is never decoded
# (a large answer of small values takes tens of times its size decoded, and the time
# holds the front's loop): its USAGE is cut from the bytes.
DECODE_SMALL = 64 * 1024


@dataclass
class Quota:
    """``amount`` of ``unit`` per ``per`` (UTC)."""

    amount: float
    unit: str = "requests"
    per: str = "day"


def quota_from_request(spec: Any) -> Quota:
    """``{"REQUESTS": n}``, ``{"UNITS": n}`` or ``{"TOKENS": n}`` (reserved at admission
    on the OpenAI routes: tenants/token_budget.py), and ``"PER": "day" | "month"``."""
    names = {u.upper() for u in UNITS}
    if not isinstance(spec, dict) or set(spec) - names - {"PER"} or len(set(spec) & names) != 1:
        raise BadRequest('QUOTA must be {"REQUESTS": n}, {"UNITS": n} or {"TOKENS": n}, with '
                         '"PER": "day" or "month"')
    unit = next(u for u in UNITS if u.upper() in spec)
    amount = spec[unit.upper()]
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 < amount <= 1e15:
        raise BadRequest(f"QUOTA.{unit.upper()} must be a number > 0, got {amount!r}")
    per = spec.get("PER", "day")
    if per not in PERIODS:
        raise BadRequest(f"QUOTA.PER must be one of {list(PERIODS)}, got {per!r}")
    return Quota(float(amount), unit, per)


def period(per: str, now: float) -> tuple[str, float]:
    """The period ``now`` falls in (``2026-11-23`` or ``2026-11``) and when it ends."""
    t = time.gmtime(now)
    if per == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), float(start + 86400)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return time.strftime("%Y-%m", t), float(calendar.timegm((year, month, 1, 0, 0, 0)))


class QuotaExceeded(ServingError):
    """The key spent its quota for the period."""

    status = 429
    kind = "quota_exceeded"


def exceeded(quota: Quota, spent: float, now: float) -> QuotaExceeded:
    """The 429 of a request over the key's quota."""
    label, reset = period(quota.per, now)
    return QuotaExceeded(
        f"this API key spent its quota of {quota.amount:g} {quota.unit} for {label}; it "
        f"resets at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(reset))}",
        retry_after=reset - now, QUOTA=quota.amount, UNIT=quota.unit, SPENT=spent,
        PERIOD=label, RESET_AT=reset)


def strip_usage(body: bytes) -> tuple[bytes, float]:
    """An answer without its ``USAGE`` field, and the units it reported (0 without)."""
    if len(body) > DECODE_SMALL:
        body, _found, units = protocol.cut_field(body, "USAGE")
        return body, take_usage({"USAGE": units})
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, 0.0
    if not isinstance(data, dict) or "USAGE" not in data:
        return body, 0.0
    units = take_usage(data)
    return orjson.dumps(data), units


def take_usage(data: dict[str, Any]) -> float:
    """Remove ``USAGE`` from an answer; the units it reported (0 without, or not a number)."""
    units = data.pop("USAGE", 0.0)
    valid = (isinstance(units, (int, float)) and not isinstance(units, bool)
             and 0 <= units < math.inf)
    return float(units) if valid else 0.0
