"""The settings of the per-address limit with keys off (``ANON_LIMIT``,
``TRUSTED_PROXIES``), checked at configuration time; gateway/address_limits.py acts."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..errors import BadRequest
from .keys import bucket_of


def check_anon_limit(value: dict[str, Any] | None) -> str | None:
    """The ANON_LIMIT setting's check."""
    if value is None:
        return None
    try:
        bucket_of(value, "ANON_LIMIT")
    except BadRequest as exc:
        return str(exc)
    return None


def check_proxies(value: list[Any]) -> str | None:
    """The TRUSTED_PROXIES setting's check: addresses or networks (CIDR)."""
    for entry in value:
        try:
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            return f"entries must be IP addresses or networks (CIDR), got {entry!r}"
    return None
