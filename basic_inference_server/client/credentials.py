"""Where the client finds the gateway URL, the admin token and an API key.

In order: an explicit value (a ``--*-file`` flag of ``bis``), then the environment
(``BIS_URL``, ``BIS_ADMIN_TOKEN`` or ``BIS_ADMIN_TOKEN_FILE``, ``BIS_API_KEY`` or
``BIS_API_KEY_FILE``), then, for the token, the file a local gateway writes
(``_cache/admin_token``). Secrets come from files or the environment, never from a
command line, where other users of the machine can read them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .api import DEFAULT_URL

LOCAL_TOKEN_FILE = Path("_cache") / "admin_token"


class CredentialError(Exception):
    """A credential file named explicitly cannot be read."""


def read_secret(path: str | Path) -> str:
    """The first line of a secret file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror or exc}") from None
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise CredentialError(f"{path} is empty")
    return value


@dataclass(frozen=True)
class Credentials:
    """Where the gateway is and the secrets that call it (never shown by repr)."""

    url: str
    admin_token: str | None
    api_key: str | None

    def __repr__(self) -> str:  # never shows the secrets
        return (f"Credentials(url={self.url!r}, admin_token={'***' if self.admin_token else None}, "
                f"api_key={'***' if self.api_key else None})")


def _secret(file: str | None, env: Mapping[str, str], name: str) -> str | None:
    if file:
        return read_secret(file)
    if env.get(name):
        return env[name]
    if env.get(f"{name}_FILE"):
        return read_secret(env[f"{name}_FILE"])
    return None


def resolve(url: str | None = None, token_file: str | None = None,
            api_key_file: str | None = None,
            env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials from explicit values, the environment and the local token file."""
    env = os.environ if env is None else env
    token = _secret(token_file, env, "BIS_ADMIN_TOKEN")
    if token is None and LOCAL_TOKEN_FILE.is_file():
        token = read_secret(LOCAL_TOKEN_FILE)
    return Credentials(url=url or env.get("BIS_URL") or DEFAULT_URL, admin_token=token,
                       api_key=_secret(api_key_file, env, "BIS_API_KEY"))
