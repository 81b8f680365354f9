"""Tenants of a shared gateway: API keys, rate limits (see docs/tenants.md).

With ``API_KEYS`` on, every data-plane request (``/run``, ``/jobs``) presents a key;
the key names its tenant (the customer id endpoints see as ``X-Customer-ID``), the
endpoints it may call, and its limits. Keys and limit state live in SQLite under the
cache folder, or in Redis (``TENANTS_REDIS``) when several gateways share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..ledger.journal import journal_dir

DB_FILE = "tenants.db"


@dataclass
class TenantsSpec:
    """What the manager tells the front about tenants."""

    enabled: bool
    db: str
    redis: str | None = None
    fail_open: bool = False
    journal: str | None = None  # the usage journal's folder, with LEDGER_POSTGRES
    jwt_issuers: list[dict[str, Any]] = field(default_factory=list)  # JWT_ISSUERS

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (what crosses to other processes)."""
        return asdict(self)


def tenants_spec(config: Any, cache_dir: str | Path) -> dict[str, Any]:
    """The front's tenants spec from the gateway settings (a GatewayConfig)."""
    journal = journal_dir(cache_dir) if config["LEDGER_POSTGRES"] else None
    if config["JWT_ISSUERS"] and not config["API_KEYS"]:
        raise ConfigError("JWT_ISSUERS needs API_KEYS: tokens stand for keys")
    return TenantsSpec(enabled=bool(config["API_KEYS"]), db=str(Path(cache_dir) / DB_FILE),
                       redis=config["TENANTS_REDIS"],
                       fail_open=bool(config["TENANTS_FAIL_OPEN"]),
                       journal=str(journal) if journal else None,
                       jwt_issuers=list(config["JWT_ISSUERS"])).to_dict()
