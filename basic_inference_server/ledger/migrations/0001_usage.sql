-- The usage ledger: per tenant, endpoint and UTC day, what the gateways metered.
CREATE TABLE bis_usage (
    tenant    text             NOT NULL,
    endpoint  text             NOT NULL,
    day       date             NOT NULL,
    requests  bigint           NOT NULL DEFAULT 0,
    ok        bigint           NOT NULL DEFAULT 0,
    errors    bigint           NOT NULL DEFAULT 0,
    units     double precision NOT NULL DEFAULT 0,
    latency_s double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, endpoint, day)
);

-- How far each gateway's journal sources were added, written in the same transaction
-- as the rows they hold: a batch counts once, whatever crashes when.
CREATE TABLE bis_ledger_sources (
    gateway text   NOT NULL,
    source  text   NOT NULL,
    shipped bigint NOT NULL,
    PRIMARY KEY (gateway, source)
);
