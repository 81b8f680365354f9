"""Remote endpoints: an endpoint section with ``URLS`` is served by other hosts.

This module holds what the configuration and the front need about them: the checks of
``URLS``, ``REMOTE_SIGNATURE`` and ``REMOTE_API_KEY``, the parsed address of a URL, the
credential sent as ``Authorization: Bearer`` (read by the front, cached, never logged)
and the request body with the remote's ``SIGNATURE``.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from .. import protocol
from ..errors import ConfigError, Unavailable
from ..hosts import check_host
from ..names import NAME_RULE_TEXT, is_name
from ..redact import mask_text, mask_url
from ..refs import resolve_ref

SCHEMES = ("http", "https")
MAX_URLS = 64
# A credential is read again this often, so a rotated key file (or variable of a
# restarted front) takes effect without a restart, and the file is not read per request.
CREDENTIAL_TTL = 30.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# What a bearer token may hold (RFC 6750's b64token, plus the characters API keys use).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/=:]{1,4096}")


@dataclass(frozen=True)
class RemoteURL:
    """The address of one remote gateway (or server) a remote endpoint forwards to."""

    url: str
    host: str
    port: int
    tls: bool

    @property
    def authority(self) -> str:
        """``host:port`` as the ``Host`` header writes it (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @cached_property
    def lead(self) -> bytes:
        """The request line and ``Host`` header of a ``/run`` sent there."""
        return f"POST /run HTTP/1.1\r\nHost: {self.authority}\r\n".encode("ascii")


def parse_url(url: Any) -> RemoteURL:
    """The address of a remote URL; ValueError says what is wrong with it (a password in
    it masked)."""
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or " " in url:
        raise ValueError(f"{mask_text(repr(url))} is not a URL (printable ASCII, no spaces)")
    shown = repr(mask_url(url))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown} is not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{shown} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{shown} carries credentials; put the key in REMOTE_API_KEY "
                         "(env:VAR or file:PATH) instead")
    host = parts.hostname or ""
    if not host or check_host(host):
        raise ValueError(f"{shown} must name a host (an IP address or a host name)")
    if not port:
        raise ValueError(f"{shown} must name a port, e.g. {parts.scheme}://{host}:8080")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{shown} must not have a path, query or fragment: the remote's "
                         "/run is called")
    if ":" in host:
        host = str(ipaddress.ip_address(host))
    return RemoteURL(url=url, host=host, port=port, tls=parts.scheme == "https")


def validate_urls(value: Any) -> str | None:
    """The check of ``URLS``: none (a local endpoint), or up to 64 distinct
    ``http(s)://host:port`` URLs."""
    if not value:
        return None
    if not isinstance(value, list) or len(value) > MAX_URLS:
        return f"must be a list of at most {MAX_URLS} URLs (http://host:port or https://host:port)"
    seen: set[str] = set()
    for url in value:
        try:
            where = parse_url(url).authority
        except ValueError as exc:
            return f"has {exc}"
        if where in seen:
            return f"names {where} twice"
        seen.add(where)
    return None


def validate_signature(value: Any) -> str | None:
    """The check of ``REMOTE_SIGNATURE``: null (the same name) or ``name`` / ``name@label``."""
    if value is None:
        return None
    if isinstance(value, str) and all(is_name(part) for part in value.split("@", 1)):
        return None
    return f"must be an endpoint name ({NAME_RULE_TEXT}), optionally @version"


def validate_api_key(value: Any) -> str | None:
    """The check of ``REMOTE_API_KEY``: null, ``env:VAR`` or ``file:PATH``, never the key."""
    if value is None:
        return None
    kind, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    if kind == "env" and _ENV_NAME.fullmatch(name):
        return None
    if kind == "file" and name and "\x00" not in name:
        return None
    return ("must be env:VAR (an environment variable of the gateway) or file:PATH (a file "
            "holding the key); the key itself never goes in the configuration")


class Credentials:
    """``REMOTE_API_KEY`` references resolved to ``Authorization`` header lines, cached.

    The key is read where it is sent (the front), so it never travels in a spec or the
    route table; errors name the variable or file, never the value.
    """

    def __init__(self, ttl: float = CREDENTIAL_TTL) -> None:
        self.ttl = ttl
        self._lines: dict[str, tuple[float, bytes]] = {}

    def header(self, ref: str, name: str) -> bytes:
        """``Authorization: Bearer <key>\\r\\n`` of ``ref``; 503 when it cannot be read."""
        now = time.monotonic()
        cached = self._lines.get(ref)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            key = resolve_ref(ref, f"REMOTE_API_KEY of endpoint {name}")
        except ConfigError as exc:
            raise Unavailable(str(exc), retry_after=5, SIGNATURE=name) from None
        if not _TOKEN.fullmatch(key):
            raise Unavailable(f"REMOTE_API_KEY of endpoint {name} ({ref}) does not hold a "
                              "usable key (1 to 4096 token characters, no spaces)",
                              retry_after=5, SIGNATURE=name)
        line = b"Authorization: Bearer " + key.encode("ascii") + b"\r\n"
        self._lines[ref] = (now + self.ttl, line)
        return line

    def forget(self, ref: str) -> None:
        """Read ``ref`` again on its next use (the remote refused the key)."""
        self._lines.pop(ref, None)


def remote_body(raw: bytes, signature: str) -> bytes:
    """The body to send: ``raw`` itself when it already names ``signature``, else
    :func:`rewrite_signature`'s."""
    found, value = protocol.peek_field(raw, "SIGNATURE")
    return raw if found and value == signature else rewrite_signature(raw, signature)


def rewrite_signature(raw: bytes, signature: str) -> bytes:
    """The body with ``SIGNATURE`` set to the remote's name (decoded and encoded again)."""
    body = protocol.parse_body(raw)
    body["SIGNATURE"] = signature
    return protocol.dumps(body)
