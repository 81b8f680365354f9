"""Listen addresses: what a HOST setting may be, and which ones are loopback."""

from __future__ import annotations

import ipaddress
import re

# The HOST of a support process: a plain script, no server, no port.
NO_HOST = "NO_HOST"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(v: str) -> str | None:
    """A listen address: an IP literal or a host name (or NO_HOST for a support process)."""
    if v == NO_HOST:
        return None
    if not v or len(v) > 253 or not v.isascii() or "\x00" in v:
        return "must be an IP address or a host name (ASCII, at most 253 characters)"
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    labels = v.rstrip(".").split(".")
    if all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        return None
    return "must be an IP address or a host name"


def is_loopback_host(host: str) -> bool:
    """True for the loopback addresses and ``localhost``."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
