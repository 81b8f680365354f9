"""The usage ledger in PostgreSQL (``LEDGER_POSTGRES``; see docs/ledger.md).

Front processes and endpoint workers append every metered request and job run to a
local journal (:mod:`.journal`) before its answer goes out; the manager's shipper
(:mod:`.shipper`) adds the journal's new entries, and the audit trail's new records, to
PostgreSQL (:mod:`.postgres`) in batches, each batch in one transaction with the
journal positions it covers. Nothing writes to the database on the request path.
"""
