-- Job records and their events (RESULTS = postgresql://...): what GET /jobs/<id> reads.
-- json, not jsonb: a job's answer keeps the order of its keys.
CREATE TABLE bis_job_results (
    id           text             PRIMARY KEY,
    endpoint     text             NOT NULL,
    status       text             NOT NULL,
    submitted_at double precision NOT NULL,
    expires_at   double precision,
    record       json             NOT NULL
);
CREATE INDEX bis_job_results_pending ON bis_job_results (endpoint, status, submitted_at);
CREATE INDEX bis_job_results_expiry ON bis_job_results (expires_at);

CREATE TABLE bis_job_events (
    job_id     text             NOT NULL,
    seq        integer          NOT NULL,
    name       text             NOT NULL,
    data       json             NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX bis_job_events_expiry ON bis_job_events (expires_at);
