"""The usage ledger in PostgreSQL (``LEDGER_POSTGRES``; see docs/ledger.md).

Front processes and endpoint workers append every metered request and job run to a
local journal (:mod:`.journal`) before its answer goes out; the manager's shipper
(:mod:`.shipper`) adds the journal's new entries, and the audit trail's new records, to
PostgreSQL (:mod:`.postgres`) in batches, each batch in one transaction with the
journal positions it covers. Nothing writes to the database on the request path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .shipper import Shipper

# Seconds the last batch may take when a process stops (what is left is shipped at its
# next start).
LAST_BATCH_S = 10.0


def ledger_shipper(dsn: str | None, cache_dir: Path) -> Shipper | None:
    """The shipper of a cache folder's journal and audit trail; None without a ledger.

    Imported only when configured: psycopg is an optional extra.
    """
    if not dsn:
        return None
    try:
        from .shipper import Shipper
    except ImportError as exc:
        raise ConfigError(f"LEDGER_POSTGRES needs the PostgreSQL driver ({exc}): "
                          "pip install 'basic_inference_server[postgres]'") from None
    return Shipper(dsn, cache_dir)
