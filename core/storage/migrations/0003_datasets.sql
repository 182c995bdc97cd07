-- Datasets as tenant resources: core/storage/sql.py's DATASET_SCHEMA, word for word (a test
-- ties them).
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_tenant_created ON datasets (tenant, created_us DESC, id DESC);
