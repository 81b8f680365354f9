"""The front's server TLS context (``TLS_CERT`` / ``TLS_KEY``)."""

from __future__ import annotations

import ssl


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server TLS context of ``TLS_CERT`` / ``TLS_KEY`` (None: plain HTTP)."""
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key or None)
    context.set_alpn_protocols(["http/1.1"])
    return context
