-- Tenants: the jobs table gains its tenant, the bytes it keeps stored (the storage quota) and
-- whether a webhook is due; tenants, API keys and webhook deliveries get their tables. The
-- tables and indexes below are core/sql.py's SHARED_SCHEMA, word for word (a test ties them).
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'local';
ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN notify_due INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET idempotency_key = 'local/' || idempotency_key WHERE idempotency_key IS NOT NULL;
UPDATE jobs SET stored_bytes = (record::json->>'upload_bytes')::bigint WHERE NOT files_expired;
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_us BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    last_used_us BIGINT,
    revoked_us BIGINT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    next_attempt_us BIGINT,
    attempts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_us)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_tenant_status ON jobs (tenant, status);
CREATE INDEX IF NOT EXISTS jobs_tenant_started ON jobs (tenant, started_us);
CREATE INDEX IF NOT EXISTS jobs_notify_due ON jobs (notify_due) WHERE notify_due = 1;
