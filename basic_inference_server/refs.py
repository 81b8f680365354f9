"""Secret references in the configuration: ``env:NAME`` and ``file:PATH``."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

# Settings holding a URL that may carry a password: their value may instead name an
# environment variable (``env:NAME``) or a file (``file:/path``) holding the URL.
REF_PREFIXES = ("env:", "file:")


def resolve_ref(value: str, what: str) -> str:
    """``env:NAME`` -> that variable's value; ``file:PATH`` -> the file's first line.

    Keeps URLs with passwords out of the configuration file and off every command
    line: the file (or the environment) can be private to the gateway's user.
    """
    kind, _, name = value.partition(":")
    if kind == "env":
        found = os.environ.get(name)
        if not found:
            raise ConfigError(f"{what} names the environment variable {name!r}, which is not set")
        return found
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} names the file {name!r}, which cannot be read: {exc}") from None
    lines = text.strip().splitlines()
    if not lines:
        raise ConfigError(f"{what} names the file {name!r}, which is empty")
    return lines[0].strip()
