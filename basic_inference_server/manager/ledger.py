"""The manager's side of the usage ledger: the shipper, when ``LEDGER_POSTGRES`` is set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..ledger.shipper import Shipper


def ledger_shipper(dsn: str | None, cache_dir: Path) -> Shipper | None:
    """The shipper of this gateway's journal and audit trail; None without a ledger.

    Imported only when configured: psycopg is an optional extra.
    """
    if not dsn:
        return None
    try:
        from ..ledger.shipper import Shipper
    except ImportError as exc:
        raise ConfigError(f"LEDGER_POSTGRES needs the PostgreSQL driver ({exc}): "
                          "pip install 'basic_inference_server[postgres]'") from None
    return Shipper(dsn, cache_dir)
