-- Job records: the same shape as the SQLite store (core/store_sqlite.py). The record is
-- stored whole as JSON text; the columns beside it exist only to index and filter.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    started_us BIGINT,
    finished_us BIGINT,
    files_expired BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    record TEXT NOT NULL
);
CREATE INDEX jobs_created ON jobs (created_us DESC, id DESC);
CREATE INDEX jobs_status_created ON jobs (status, created_us DESC, id DESC);
CREATE INDEX jobs_finished ON jobs (finished_us) WHERE NOT files_expired;
