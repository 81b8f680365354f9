"""Masking secrets before they reach a log line or a status answer."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host, anywhere in a text.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]*(?=@)")


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; its query is kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{MASK}@{host}").geturl()


def mask_text(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password masked."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
