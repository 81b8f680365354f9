-- The audit trail of every gateway: admin calls that change state, refused attempts.
CREATE TABLE bis_audit (
    id      bigserial   PRIMARY KEY,
    gateway text        NOT NULL,
    ts      timestamptz NOT NULL,
    kind    text        NOT NULL,
    record  jsonb       NOT NULL
);
CREATE INDEX bis_audit_ts ON bis_audit (ts);
